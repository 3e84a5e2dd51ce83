"""Every bound of the HTTP server and client, as constructor arguments checked at construction.

What happens when a bound is hit is written next to it; the server counts each refusal under
the reason named here (`ServerStatistics.refused`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["ClientLimits", "ServerLimits"]


@dataclass(frozen=True, slots=True)
class ServerLimits:
    # Connections beyond this are accepted and closed at once, before TLS ("max_connections").
    max_connections: int = 1024
    # A TLS handshake not done by then closes the connection ("handshake_timeout").
    handshake_timeout_s: float = 5.0
    # Between requests on a keep-alive connection (and before the first): closed quietly when
    # no byte of a next request arrived by then ("idle_timeout", not an error).
    idle_timeout_s: float = 60.0
    # From the first byte of a request to its last body byte: a slow sender (slowloris) is
    # answered 408 and closed ("request_timeout").
    request_timeout_s: float = 30.0
    # The request line plus header section (h11's max_incomplete_event_size): 431 and close
    # ("header_too_large").
    max_header_bytes: int = 16 * 1024
    # Header field lines: 431 and close ("too_many_headers").
    max_header_count: int = 100
    # Request body: 413 and close ("body_too_large"), before reading it when Content-Length
    # says so, else as soon as a chunked body passes it.
    max_body_bytes: int = 1 << 20
    # Requests on one connection are answered one at a time, in order (HTTP/1.1 has no
    # multiplexing): pipelined requests wait in the kernel's socket buffer, and the server holds
    # at most one request plus one receive buffer (`receive_bytes`) per connection in memory.
    receive_bytes: int = 64 * 1024
    # Each write of an answer (the whole of a Response, each chunk of a StreamingResponse)
    # must be taken by the client within this time, or the connection is closed
    # ("write_timeout"): a client that stops reading cannot hold a connection and its buffers.
    # A stream waiting for its next chunk is not writing: no deadline then.
    write_timeout_s: float = 30.0
    # After a refusal, what the client is still sending is read and dropped for this long (at
    # most 1 MiB), so that closing with unread data does not reset the connection before the
    # client has read the answer.
    linger_s: float = 1.0
    # Graceful shutdown: in-flight requests get this long to finish, then are cancelled.
    shutdown_grace_s: float = 10.0

    def __post_init__(self) -> None:
        _positive(self)


@dataclass(frozen=True, slots=True)
class ClientLimits:
    # Open connections per origin (in use + idle); a request waits for a free one, bounded by
    # the caller's cancel scope.
    max_connections_per_origin: int = 16
    # Origins with pooled state; a new origin beyond this evicts idle-only origins, else
    # raises `PoolFull`.
    max_origins: int = 64
    # A pooled connection idle longer than this is closed instead of reused (servers close idle
    # connections: keep this below theirs).
    idle_timeout_s: float = 30.0
    # A response body beyond this raises `ResponseTooLarge` and the connection is closed.
    max_response_bytes: int = 1 << 20
    # Response head (status line + headers): h11's max_incomplete_event_size.
    max_header_bytes: int = 16 * 1024
    receive_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        _positive(self)


def _positive(limits: object) -> None:
    for f in fields(limits):  # type: ignore[arg-type]
        value = getattr(limits, f.name)
        if not value > 0:
            raise ValueError(f"{type(limits).__name__}.{f.name} must be > 0, got {value!r}")
