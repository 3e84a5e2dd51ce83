"""A pooled keep-alive HTTPS client on trio: for a gateway forwarding to loomd and for fetching
JWKS or discovery documents. h11 frames; the project's TLSStream carries (mutual TLS when the
given context holds a client certificate, e.g. `loom.security.tls.client_context`).

Deadlines are the caller's: wrap a call in `trio.move_on_after` / `fail_after`; connecting, the
handshake, waiting for a pooled connection and the exchange all obey it. A cancelled exchange
closes its connection (it cannot be known to be framed any more).

Retry rule: a request is sent again once, on a new connection, only when it is idempotent (by
method, or `idempotent=True` for a POST carrying an idempotency key) AND it failed on a
connection taken from the pool before a single byte of answer came back. That is the
signature of a keep-alive connection the server closed while it sat idle; any other failure is
the caller's to see, since the request may have been executed.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import trio

from loom.http.limits import ClientLimits
from loom.http.message import Headers
from loom.security.tlsstream import TLSStream

__all__ = [
    "ClientResponse", "ClientStatistics", "HTTPClient", "PoolFull", "ResponseTooLarge",
    "StreamedResponse",
]

IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})
_SET_BY_US = frozenset({b"host", b"content-length", b"transfer-encoding"})


class ResponseTooLarge(Exception):
    """The response body (or its announced Content-Length) is over `max_response_bytes`, or
    its head over `max_header_bytes`."""


class PoolFull(Exception):
    """`max_origins` origins are all in use: no pool can be made for another one."""


@dataclass(frozen=True, slots=True)
class ClientResponse:
    status: int
    reason: bytes
    headers: tuple[tuple[bytes, bytes], ...]  # lower-cased names, in order, repeats kept
    body: bytes
    http_version: str = "1.1"

    def header_values(self, name: str | bytes) -> list[bytes]:
        key = (name.encode("ascii") if isinstance(name, str) else name).lower()
        return [v for k, v in self.headers if k == key]


@dataclass(frozen=True, slots=True)
class ClientStatistics:
    connections_open: int  # in use + idle
    connections_idle: int
    connections_made: int  # handshakes completed since the start
    requests: int  # exchanges that returned a response
    retries: int  # idempotent requests sent again after a dead pooled connection


class _Conn:
    __slots__ = ("h", "idle_since", "stream")

    def __init__(self, stream: TLSStream, limits: ClientLimits) -> None:
        self.stream = stream
        self.h = h11.Connection(h11.CLIENT, max_incomplete_event_size=limits.max_header_bytes)
        self.idle_since = 0.0


class _Origin:
    __slots__ = ("idle", "open", "slots", "users")

    def __init__(self, limit: int) -> None:
        # In-use connections are bounded by the semaphore; idle ones were in use before, so
        # open (in use + idle) never exceeds the limit either.
        self.slots = trio.Semaphore(limit)
        self.idle: list[_Conn] = []  # most recently used last: reused first (warmest)
        self.open = 0
        self.users = 0  # requests using or waiting for this origin: never evicted while > 0


class _DeadPooled(Exception):
    """A pooled connection failed before any byte of answer: the request may be retried."""


class HTTPClient:
    """`server_hostname` overrides the name checked against the server certificate (and sent
    as SNI); by default it is the URL's host."""

    def __init__(self, ssl_context: ssl.SSLContext, *, limits: ClientLimits | None = None,
                 server_hostname: str | None = None) -> None:
        self.ssl_context = ssl_context
        self.limits = limits or ClientLimits()
        self._server_hostname = server_hostname
        self._origins: dict[tuple[str, int], _Origin] = {}
        self._made = 0
        self._requests = 0
        self._retries = 0
        self._closed = False

    async def __aenter__(self) -> HTTPClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def statistics(self) -> ClientStatistics:
        return ClientStatistics(
            connections_open=sum(o.open for o in self._origins.values()),
            connections_idle=sum(len(o.idle) for o in self._origins.values()),
            connections_made=self._made, requests=self._requests, retries=self._retries)

    async def aclose(self) -> None:
        """Close every idle connection; requests still running close theirs when done."""
        self._closed = True
        for origin in self._origins.values():
            await self._close_idle(origin)

    async def request(self, method: str, url: str, *, headers: Headers = (),
                      body: bytes = b"", idempotent: bool | None = None) -> ClientResponse:
        """Send one request and read the whole response (at most `max_response_bytes`).
        Raises trio.BrokenResourceError / OSError when the server cannot be reached or the
        connection breaks, h11.RemoteProtocolError on a malformed answer, ResponseTooLarge."""
        r = await self.send(method, url, headers=headers, body=body, idempotent=idempotent)
        try:
            data = await r.read(self.limits.max_response_bytes)
        finally:
            await r.aclose()
        return ClientResponse(r.status, r.reason, r.headers, data, r.http_version)

    @asynccontextmanager
    async def stream(self, method: str, url: str, *, headers: Headers = (), body: bytes = b"",
                     idempotent: bool | None = None) -> AsyncIterator[StreamedResponse]:
        """`send` as a context manager: the response is closed when the block ends."""
        r = await self.send(method, url, headers=headers, body=body, idempotent=idempotent)
        try:
            yield r
        finally:
            await r.aclose()

    async def send(self, method: str, url: str, *, headers: Headers = (), body: bytes = b"",
                   idempotent: bool | None = None) -> StreamedResponse:
        """Send one request and return once the response's head is in; its body is read as it
        arrives (server-sent events, long-poll, forwarding without buffering). The caller
        must `aclose()` the response: its connection returns to the pool only if the body
        was read to its end, else it is closed. No total size limit applies here: the reader
        decides. Raises as `request` does."""
        if self._closed:
            raise trio.ClosedResourceError("this client was closed")
        host, port, req = _prepare(method, url, headers, body)
        retry_ok = req.method.decode() in IDEMPOTENT if idempotent is None else idempotent
        origin = await self._origin((host, port))
        origin.users += 1
        try:
            await origin.slots.acquire()
            try:
                conn, head = await self._begin(origin, host, port, req, body, retry_ok)
            except BaseException:
                origin.slots.release()
                raise
        except BaseException:
            origin.users -= 1
            raise
        return StreamedResponse(head, conn, self.limits.receive_bytes,
                                lambda r: self._finish(origin, conn, r))

    async def _finish(self, origin: _Origin, conn: _Conn, r: StreamedResponse) -> None:
        """A response's end (`StreamedResponse.aclose`): its connection back to the pool when
        the body was read to its end, else closed; then its slot is free."""
        try:
            if r.complete:
                await self._checkin(origin, conn)
            else:
                await self._discard(origin, conn)
        finally:
            origin.slots.release()
            origin.users -= 1

    async def _begin(self, origin: _Origin, host: str, port: int, req: h11.Request,
                     body: bytes, retry_ok: bool) -> tuple[_Conn, h11.Response]:
        """Send the request and read the answer's head, on a pooled or new connection; the
        retry rule (module docstring) lives here."""
        for attempt in (1, 2):
            conn, reused = await self._checkout(origin, host, port)
            try:
                head = await _send_and_read_head(conn, req, body, self.limits.receive_bytes,
                                                 reused)
            except _DeadPooled as dead:
                await self._discard(origin, conn)
                if retry_ok and attempt == 1:
                    self._retries += 1
                    continue
                raise dead.__cause__ or trio.BrokenResourceError() from None
            except BaseException:
                await self._discard(origin, conn)
                raise
            # h11 checks max_incomplete_event_size only while a head is incomplete.
            if sum(len(k) + len(v) + 4 for k, v in head.headers) > self.limits.max_header_bytes:
                await self._discard(origin, conn)
                raise ResponseTooLarge(f"response head over {self.limits.max_header_bytes} bytes")
            self._requests += 1
            return conn, head
        raise AssertionError("unreachable: the second attempt returns or raises")

    # -- the pool ----------------------------------------------------------------------------

    async def _origin(self, key: tuple[str, int]) -> _Origin:
        origin = self._origins.get(key)
        if origin is not None:
            return origin
        if len(self._origins) >= self.limits.max_origins:
            for k, o in list(self._origins.items()):
                if o.users == 0:  # idle-only (nobody uses or waits for it): evicted
                    del self._origins[k]
                    await self._close_idle(o)
            if len(self._origins) >= self.limits.max_origins:
                raise PoolFull(f"{len(self._origins)} origins in use (max_origins)")
        origin = self._origins[key] = _Origin(self.limits.max_connections_per_origin)
        return origin

    async def _checkout(self, origin: _Origin, host: str, port: int) -> tuple[_Conn, bool]:
        # The idle list is ordered by last use: expired connections are at its front (closed
        # here, so that a warm one reused at the back does not keep stale ones open forever).
        stale = trio.current_time() - self.limits.idle_timeout_s
        while origin.idle and origin.idle[0].idle_since <= stale:
            await self._discard(origin, origin.idle.pop(0))
        if origin.idle:
            return origin.idle.pop(), True
        origin.open += 1  # counted before the wait, so the limit holds while connecting
        try:
            tcp = await trio.open_tcp_stream(host, port)
            stream = TLSStream(tcp, self.ssl_context,
                               server_hostname=self._server_hostname or host)
            try:
                await stream.do_handshake()
            except BaseException:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                raise
        except BaseException:
            origin.open -= 1
            raise
        self._made += 1
        return _Conn(stream, self.limits), False

    async def _checkin(self, origin: _Origin, conn: _Conn) -> None:
        h = conn.h
        if self._closed or h.our_state is not h11.DONE or h.their_state is not h11.DONE:
            await self._discard(origin, conn)
            return
        h.start_next_cycle()
        conn.idle_since = trio.current_time()
        origin.idle.append(conn)

    async def _discard(self, origin: _Origin, conn: _Conn) -> None:
        origin.open -= 1
        with trio.CancelScope(shield=True):
            await conn.stream.aclose()

    async def _close_idle(self, origin: _Origin) -> None:
        while origin.idle:
            await self._discard(origin, origin.idle.pop(0))

class StreamedResponse:
    """The head of a response, and its body as it arrives (`HTTPClient.send` and `stream`).
    `aclose()` ends it (once; later calls do nothing)."""

    def __init__(self, head: h11.Response, conn: _Conn, receive_bytes: int,
                 finish: Callable[[StreamedResponse], Awaitable[None]]) -> None:
        self.status: int = head.status_code
        self.reason = bytes(head.reason)
        self.headers: tuple[tuple[bytes, bytes], ...] = tuple(head.headers)
        self.http_version = head.http_version.decode("ascii")
        self.complete = False  # the body was read to its end
        self._conn = conn
        self._receive_bytes = receive_bytes
        self._announced = _announced(head)
        # Body pieces `arrived` took from h11 without returning them: yielded first.
        self._taken: list[bytes] = []
        self._closed_early = False  # `arrived` saw the connection close before the end
        self._finish: Callable[[StreamedResponse], Awaitable[None]] | None = finish

    def header_values(self, name: str | bytes) -> list[bytes]:
        key = (name.encode("ascii") if isinstance(name, str) else name).lower()
        return [v for k, v in self.headers if k == key]

    async def aclose(self) -> None:
        """Give the connection back (body read to its end) or close it (anything else)."""
        finish, self._finish = self._finish, None
        if finish is not None:
            await finish(self)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body's pieces as they arrive (never empty ones)."""
        while (chunk := await self._next_chunk()) is not None:
            yield chunk

    async def read(self, max_bytes: int) -> bytes:
        """The whole body; ResponseTooLarge (and the connection closed) beyond `max_bytes`."""
        if self._announced > max_bytes:
            raise ResponseTooLarge(f"Content-Length over {max_bytes} bytes")
        parts: list[bytes] = []
        size = 0
        while (chunk := await self._next_chunk()) is not None:
            parts.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise ResponseTooLarge(f"response body over {max_bytes} bytes")
        return b"".join(parts)

    def arrived(self, max_bytes: int) -> bytes | None:
        """The whole body when it has already arrived with the head (no wait) and is at most
        `max_bytes`; else None, and what was looked at is still yielded by `chunks()`/`read()`.
        A small answer usually arrives in the same read as its head: passing it on whole
        saves a proxy the machinery and the separate writes of a stream."""
        h = self._conn.h
        size = sum(map(len, self._taken))
        while not self.complete and size <= max_bytes:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError:
                return None  # raised again, to the reader, by the next `_next_chunk`
            if isinstance(event, h11.Data):
                self._taken.append(bytes(event.data))
                size += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.complete = True
            else:  # NEED_DATA (not all here), or closed early: the reader finds out
                if event is not h11.NEED_DATA:
                    self._closed_early = True
                return None
        if not self.complete:
            return None
        body = b"".join(self._taken)
        self._taken.clear()
        return body

    async def _next_chunk(self) -> bytes | None:
        """The next piece of body; None at its end."""
        if self._taken:
            return self._taken.pop(0)
        if self._closed_early:
            raise trio.BrokenResourceError("connection closed during the answer")
        h, stream = self._conn.h, self._conn.stream
        while not self.complete:
            event = h.next_event()
            if event is h11.NEED_DATA:
                h.receive_data(bytes(await stream.receive_some(self._receive_bytes)))
            elif isinstance(event, h11.Data):
                if event.data:
                    return bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.complete = True
            else:  # ConnectionClosed before the end
                raise trio.BrokenResourceError("connection closed during the answer")
        return None


async def _send_and_read_head(conn: _Conn, req: h11.Request, body: bytes, receive_bytes: int,
                              reused: bool) -> h11.Response:
    h, stream = conn.h, conn.stream
    out = h.send(req) or b""
    if body:
        out += h.send(h11.Data(data=body)) or b""
    out += h.send(h11.EndOfMessage()) or b""
    answered = False  # a byte of answer arrived: from here on, no retry
    try:
        # Written at once when the socket has room (the usual case): no pass through the
        # scheduler before the wait for the answer; the rest is flushed under the caller's
        # deadline. A caller already cancelled sends nothing.
        await trio.lowlevel.checkpoint_if_cancelled()
        if not stream.send_nowait(out):
            await stream.flush()
        while True:
            event = h.next_event()
            if event is h11.NEED_DATA:
                data = bytes(await stream.receive_some(receive_bytes))
                if not data and not answered:
                    raise trio.BrokenResourceError("connection closed before an answer")
                answered = True
                h.receive_data(data)
            elif isinstance(event, h11.Response):
                return event
            elif not isinstance(event, h11.InformationalResponse):  # ConnectionClosed
                raise trio.BrokenResourceError("connection closed before an answer")
    except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
        if reused and not answered:
            raise _DeadPooled() from e
        raise


def _prepare(method: str, url: str, headers: Headers,
             body: bytes) -> tuple[str, int, h11.Request]:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"only https:// URLs with a host are supported: {url!r}")
    host, port = parts.hostname, parts.port or 443
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    authority = f"[{host}]" if ":" in host else host
    if parts.port:
        authority += f":{port}"
    method = method.upper()
    all_headers = [(b"host", authority.encode("idna" if not authority.isascii() else "ascii"))]
    for k, v in headers:
        name = _lower(k)
        if name not in _SET_BY_US:
            all_headers.append((name, _raw(v)))
    if body or method not in ("GET", "HEAD", "DELETE", "OPTIONS"):
        all_headers.append((b"content-length", b"%d" % len(body)))
    return host, port, h11.Request(method=method, target=target, headers=all_headers)


def _announced(head: h11.Response) -> int:
    for k, v in head.headers:
        if k == b"content-length":
            return int(v)
    return 0


def _raw(value: str | bytes) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value


def _lower(name: str | bytes) -> bytes:
    return (name.encode("latin-1") if isinstance(name, str) else name).lower()

