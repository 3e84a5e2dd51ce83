"""Python client for Loom: `Client` (blocking) and `AsyncClient` / `open_client` (trio or asyncio).

Server errors are raised as the exception class of their status (loom.wire.errors); the
client's own failures are in loom.client.errors. See docs/client.md.
"""

from loom.client.aio import AsyncClient, open_client
from loom.client.breaker import BreakerPolicy, BreakerState, EndpointStatistics
from loom.client.errors import (
    ClientError,
    ConfigError,
    ConnectError,
    IndeterminateError,
    ProtocolError,
    RequestValidationError,
)
from loom.client.protocol import ClientStatistics, HelloInfo, RetryPolicy
from loom.client.subscription import Subscription
from loom.client.sync import Client
from loom.wire.errors import LoomError

__all__ = [
    "AsyncClient",
    "BreakerPolicy",
    "BreakerState",
    "Client",
    "ClientError",
    "ClientStatistics",
    "ConfigError",
    "ConnectError",
    "EndpointStatistics",
    "HelloInfo",
    "IndeterminateError",
    "LoomError",
    "ProtocolError",
    "RequestValidationError",
    "RetryPolicy",
    "Subscription",
    "open_client",
]
