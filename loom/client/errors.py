"""Errors raised by the client on its own (the server's errors are the classes in loom.wire.errors).

- `ConnectError`: no usable connection (refused, DNS, TLS handshake or certificate failure, the
  server closed the connection during HELLO). Nothing was sent, or nothing was executed.
- `ConfigError`: the client was configured wrongly (missing certificate files, bad endpoint).
- `RequestValidationError`: the request failed local validation against the catalog; it was
  never sent. A `BadRequest`, so code that handles the server's BAD_REQUEST handles it too.
- `IndeterminateError`: a write was sent and no answer came back (deadline, lost connection).
  It may or may not have been applied. A `Timeout`, like the server's own TIMEOUT answer.
- `ProtocolError`: the server sent something that does not follow the protocol.
"""

from __future__ import annotations

from typing import Any

from loom.wire.errors import BadRequest, Internal, Timeout

CLIENT_CERT_REQUIRED = (
    "the server closed the connection: it requires a client certificate (pass --cert/--key)"
)


class ClientError(Exception):
    """Base of the errors the client raises without a server answer behind them."""


class ConnectError(ClientError):
    """Could not open a usable connection to any endpoint.

    `permanent`: retrying cannot help (certificate refused or not trusted); not retried."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class ConfigError(ClientError):
    """The client's configuration is unusable (files, endpoints, options)."""


class ProtocolError(Internal):
    """The server's frames broke the protocol; the connection is closed."""


class RequestValidationError(BadRequest):
    """Refused locally by the catalog's schema; nothing was sent."""

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message, **details)


class IndeterminateError(Timeout):
    """A write's outcome is unknown: it may or may not have been applied."""

    def __init__(self, message: str = "", **details: Any) -> None:
        text = message or "no answer"
        if "may or may not" not in text:
            text = f"{text}; the write may or may not have been applied"
        super().__init__(text, **details)
