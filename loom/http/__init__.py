"""The one HTTP/1.1 server and upstream client of Loom, on h11 and the project's TLSStream.

Used by the node (an adapter to the dispatcher) and by the gateway; it knows neither: it imports
only the stdlib, h11, trio and `loom.security`'s TLS stream. See docs/http-server.md.
"""

from loom.http.client import (
    ClientResponse,
    ClientStatistics,
    HTTPClient,
    PoolFull,
    ResponseTooLarge,
    StreamedResponse,
)
from loom.http.connection import Handler
from loom.http.limits import ClientLimits, ServerLimits
from loom.http.message import RefusedRequest, Request, Response, StreamingResponse
from loom.http.problem import PROBLEM_CONTENT_TYPE, Problem
from loom.http.server import HTTPServer, ServerStatistics

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "ClientLimits",
    "ClientResponse",
    "ClientStatistics",
    "HTTPClient",
    "HTTPServer",
    "Handler",
    "PoolFull",
    "Problem",
    "RefusedRequest",
    "Request",
    "Response",
    "ResponseTooLarge",
    "ServerLimits",
    "ServerStatistics",
    "StreamedResponse",
    "StreamingResponse",
]
