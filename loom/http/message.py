"""The values a handler sees and returns: `Request`, `Response`, `StreamingResponse`.

Headers stay as h11 gives them: an ordered tuple of (lower-cased name, raw value) byte pairs,
one pair per field line, so a repeated header is visible (`Request.header_values`) and nothing
is merged, decoded or guessed on the handler's behalf.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

import trio

__all__ = ["Headers", "RefusedRequest", "Request", "Response", "StreamingResponse"]

Headers = Sequence[tuple[str | bytes, str | bytes]]


async def _never() -> None:
    await trio.sleep_forever()


@dataclass(frozen=True, slots=True)
class Request:
    """One complete request (its body was read within the server's limits).

    `target` is the request-target as sent; `path` and `query` split it at the first "?" and are
    not percent-decoded (routing decides what decoding means). `peer_certificate` is the DER of
    the client certificate the TLS handshake verified, or None when the client sent none: a
    certificate that fails verification fails the handshake, so it never arrives here as None.
    """

    method: str
    target: str
    path: str
    query: str
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    remote: str  # "host:port" of the TCP peer
    peer_certificate: bytes | None
    http_version: str = "1.1"
    # `await request.client_gone()` returns when the client closes the connection while the
    # handler runs (a handler that waits races its wait against it, to stop waiting for a
    # client that left). Only one task may await it, and only while the handler runs.
    client_gone: Callable[[], Awaitable[None]] = field(default=_never, repr=False,
                                                      compare=False)

    def header_values(self, name: str | bytes) -> list[bytes]:
        """Every value of header `name` (case-insensitive), in order; repeats are kept."""
        key = (name.encode("ascii") if isinstance(name, str) else name).lower()
        return [v for k, v in self.headers if k == key]

    def header(self, name: str | bytes) -> bytes | None:
        """The value of a header that must appear at most once: None when absent.
        Raises `ValueError` when it is repeated (a request smuggling or spoofing signal that
        callers should answer with 400, never resolve by picking one)."""
        values = self.header_values(name)
        if len(values) > 1:
            raise ValueError(f"header {name!r} is repeated")
        return values[0] if values else None

    def query_params(self) -> list[tuple[str, str]]:
        """The query string's pairs in order (repeats kept; `flag` alone is ("flag", "")),
        percent-decoded as UTF-8. Invalid UTF-8 or more than 1000 fields raise ValueError."""
        return parse_qsl(self.query, keep_blank_values=True, encoding="utf-8",
                         errors="strict", max_num_fields=1000)


@dataclass(frozen=True, slots=True)
class Response:
    """A complete response. The server sets Content-Length from `body`."""

    status: int
    headers: Headers = ()
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class StreamingResponse:
    """A response whose body is produced while it is sent (server-sent events, long-poll).

    The server sends the head, then each chunk of `chunks` as soon as it is yielded (chunked
    transfer coding; no Content-Length unless `headers` carry one), and closes the iterator
    when the client goes away or the server stops. An exception from `chunks` after the head
    went out cannot become a 500 any more: the server logs it and closes the connection, so
    the client sees a truncated body, never a complete-looking one.
    """

    status: int
    headers: Headers
    chunks: AsyncIterable[bytes]


@dataclass(frozen=True, slots=True)
class RefusedRequest:
    """A request the server refused before any handler saw it (`HTTPServer(on_refusal=...)`):
    the reason it is counted under, the status and detail answered, and the raw bytes of the
    head as received (at most `max_header_bytes`; unparsed, since it was refused)."""

    reason: str
    status: int
    detail: str
    remote: str
    peer_certificate: bytes | None
    head: bytes
