"""HTTP/1.1 on one established stream: h11 parses and frames, this module enforces the limits,
calls the handler and writes its answer. The listener shell (`server.py`) owns accepting, TLS
and shutdown; this module knows nothing of sockets or certificates beyond the values it is given.

One request at a time (HTTP/1.1 has no multiplexing). We receive only when h11 needs data, so
pipelined requests wait in the kernel's socket buffer: a connection holds at most one request
and one receive buffer in memory, whatever the client sends.

Every refusal answers with problem+json and `Connection: close`, then closes: after a malformed
or refused request the byte stream cannot be trusted to be framed where we think it is (request
smuggling lives in exactly that gap), so the connection is never reused.

h11 parses every request. A complete `Response` (every answer but a stream) is written by
`response_head` below, not by h11: h11 validates and re-serialises each header of each answer,
which cost more than parsing the request did. The same checks stay (a field name is a token, a
value has no control character, the status is 200-999: anything else is a 500), on a cached
name and one regular expression per value. Since those answers never pass through h11's state
machine, each request cycle gets a fresh `h11.Connection` holding what the client has already
sent (`_next_cycle`); the client's keep-alive is h11's own verdict, read from `their_state`.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import h11
import trio

from loom.http.limits import ServerLimits
from loom.http.message import Headers, RefusedRequest, Request, Response, StreamingResponse
from loom.http.problem import PROBLEM_CONTENT_TYPE, Problem
from loom.security.tlsstream import TLSStream

__all__ = ["Handler", "ServerConnection", "ServerState"]

log = logging.getLogger("loom.http")

Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]

# RFC 9110 section 5.5: CR, LF and NUL in a field value must be refused; the other controls are
# not field-vchars either. HTAB is allowed. h11 0.16 refuses NUL but lets the others through.
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# Obsolete line folding (RFC 9112 section 5.2): a header line that starts with SP or HTAB.
# h11 unfolds it silently; a server may instead refuse it with 400, and we do: a folded
# X-Auth-User is how a lookalike header slips past a gateway that does not unfold.
_OBS_FOLD = re.compile(rb"\n[ \t]")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
# RFC 9110 sections 5.1 and 5.5, as h11 applies them to a head it writes: a field name is a
# token; a value is field-vchars (and obs-text) with single spaces or tabs only inside.
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff]+(?:[ \t]+[\x21-\x7e\x80-\xff]+)*)?")
MAX_NAME_CACHE = 256  # header names already checked (the handlers answer with a handful)
LINGER_BYTES = 1 << 20  # see ServerLimits.linger_s
_FRAMING = {b"content-length": 1, b"transfer-encoding": 2}  # the server frames answers itself
_NO_BODY = frozenset({204, 304})
# An async generator's cleanup when a stream ends runs shielded from cancellation, for at
# most this long (a cleanup that hangs must not hold a connection or a shutdown).
CLOSE_STREAM_S = 1.0


class ServerState:
    """What all connections of one server share: counters and the draining flag."""

    def __init__(self, on_refusal: Callable[[RefusedRequest], None] | None = None) -> None:
        self.draining = False
        self.on_refusal = on_refusal
        self.requests_served = 0
        self.handler_errors = 0
        self.refused: Counter[str] = Counter()


class _Refusal(Exception):
    def __init__(self, reason: str, problem: Problem) -> None:
        super().__init__(reason)
        self.reason = reason
        self.problem = problem


class _Gone(Exception):
    """The client closed the connection (or broke it) mid-request: nothing to answer."""


class ServerConnection:
    def __init__(self, stream: trio.abc.Stream, handler: Handler, limits: ServerLimits,
                 state: ServerState, *, remote: str, peer_certificate: bytes | None) -> None:
        self._stream = stream
        self._tls = stream if isinstance(stream, TLSStream) else None
        self._handler = handler
        self._limits = limits
        self._state = state
        self._remote = remote
        self._cert = peer_certificate
        self._h = self._new_h11()
        # One cancel scope for the connection's life; its deadline follows the phase and is
        # set only before a wait that it bounds (this path runs once per request). When it
        # fires, the connection ends: `_timed_out` says how, by the phase it fired in.
        self._scope = trio.CancelScope()
        self._phase = "idle"  # idle -> request -> handler -> write
        self._received = bytearray()  # the current request's bytes as received (for on_refusal)
        self._request_deadline = math.inf  # the current request's first byte + request_timeout

    def cancel_if_idle(self) -> None:
        """Shutdown: close now if waiting for a next request; a request in progress goes on."""
        if self._phase == "idle":
            self._scope.cancel()

    async def run(self) -> None:
        """Serve requests until the client closes, a limit or error closes the connection, or
        the server drains. Broken and closed streams end it quietly."""
        try:
            refusal = None
            with self._scope:
                try:
                    while await self._one_cycle():
                        self._next_cycle()
                except _Refusal as r:
                    refusal = r
            if self._scope.cancelled_caught:  # a deadline, or shutdown closing an idle one
                refusal = self._timed_out()
            if refusal is not None:  # answered outside the scope, within its own bounds
                self._report(refusal, self._received)
                await self._refuse(refusal)
        except (trio.BrokenResourceError, trio.ClosedResourceError, _Gone):
            pass
        except h11.LocalProtocolError:  # an answer h11 would not frame: this connection ends
            self._state.handler_errors += 1
            log.exception("answer to %s could not be framed", self._remote)

    def _new_h11(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self._limits.max_header_bytes)

    def _next_cycle(self) -> None:
        """A fresh h11 connection for the next request, holding what the client already sent
        (a pipelined request): `start_next_cycle()` would need our answer to have passed
        through h11, and a `Response` does not (see the module's docstring)."""
        data, closed = self._h.trailing_data
        h = self._new_h11()
        if data:
            h.receive_data(data)
        if closed:
            h.receive_data(b"")
        self._h = h

    async def _one_cycle(self) -> bool:
        """One request and its answer; True when the connection may carry another. Raises
        _Refusal for a request refused before the handler."""
        h, limits, state, scope = self._h, self._limits, self._state, self._scope
        head = self._received = bytearray(h.trailing_data[0])  # a pipelined request, buffered
        if not head:
            if state.draining:
                return False
            self._phase = "idle"
            scope.deadline = trio.current_time() + limits.idle_timeout_s
            data = bytes(await self._stream.receive_some(limits.receive_bytes))
            if not data:
                return False
            head += data
            h.receive_data(data)
        self._phase = "request"  # `_receive` sets this deadline if the request needs a wait
        self._request_deadline = trio.current_time() + limits.request_timeout_s
        request = await self._read_request(head)
        self._phase = "handler"  # the handler bounds its own waits
        if scope.deadline != math.inf:
            scope.deadline = math.inf
        answer = await self._call(request)
        state.requests_served += 1  # before writing: a client that got it sees it
        self._phase = "write"
        return await self._send_answer(request, answer) and not state.draining

    def _timed_out(self) -> _Refusal | None:
        """The scope fired: a request that did not arrive in time is answered 408; an idle or
        stalled-writing connection just closes (counted), as does one shutdown closed."""
        if self._phase == "request":
            return _Refusal("request_timeout", Problem(
                408, detail="the request did not arrive in time"))
        if self._phase == "idle" and not self._state.draining:
            self._state.refused["idle_timeout"] += 1
        elif self._phase == "write":
            self._state.refused["write_timeout"] += 1
        return None

    # -- reading -----------------------------------------------------------------------------

    async def _read_request(self, head: bytearray) -> Request:
        h = self._h
        while True:
            event = self._next_event()
            if event is h11.NEED_DATA:
                data = await self._receive()
                head += data
                continue
            if isinstance(event, h11.Request):
                break
            raise _Gone  # ConnectionClosed before a request began
        req = event
        headers = tuple(req.headers)  # once: h11's Headers iterates item by item
        self._check_head(headers, head)
        if h.they_are_waiting_for_100_continue:  # within the request's deadline
            self._scope.deadline = self._request_deadline
            await self._stream.send_all(
                h.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
        body = bytearray()
        while True:
            event = self._next_event()
            if event is h11.NEED_DATA:
                await self._receive()
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self._limits.max_body_bytes:
                    raise _too_large(self._limits)
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise _Gone
        target = bytes(req.target).decode("latin-1")
        path, _, query = target.partition("?")
        return Request(
            method=req.method.decode("ascii"), target=target, path=path, query=query,
            headers=headers, body=bytes(body), remote=self._remote,
            peer_certificate=self._cert, http_version=req.http_version.decode("ascii"),
            client_gone=self._client_gone)

    async def _client_gone(self) -> None:
        """Return when the client closes the connection (handler phase only: nothing else
        receives then). Bytes that arrive meanwhile (a pipelined next request) go to h11,
        which keeps them for the next cycle; past `receive_bytes` of them this stops reading
        and waits forever, so it never buffers more than a cycle would."""
        taken = 0
        while taken < self._limits.receive_bytes:
            try:
                data = bytes(await self._stream.receive_some(self._limits.receive_bytes))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            if not data:
                return
            taken += len(data)
            self._h.receive_data(data)
        await trio.sleep_forever()

    def _check_head(self, headers: tuple[tuple[bytes, bytes], ...], head: bytearray) -> None:
        """Limits and strictness h11 does not apply itself (pure: refuses by raising)."""
        if len(headers) > self._limits.max_header_count:
            raise _Refusal("too_many_headers", Problem(
                431, detail=f"more than {self._limits.max_header_count} header fields"))
        end = _HEAD_END.search(head)
        size = end.end() if end else len(head)
        # h11 applies max_incomplete_event_size only to a head still incomplete in its buffer;
        # a larger head that arrived whole in one receive is caught here.
        if size > self._limits.max_header_bytes:
            raise _Refusal("header_too_large", Problem(
                431, detail=f"request head over {self._limits.max_header_bytes} bytes"))
        if _OBS_FOLD.search(head, 0, size):
            raise _Refusal("bad_request", Problem(
                400, detail="obsolete line folding is not accepted"))
        framing = 0
        for name, value in headers:
            if name in _FRAMING:
                framing |= _FRAMING[name]
            if _CTL.search(value):
                raise _Refusal("bad_request", Problem(
                    400, detail=f"control character in header {name.decode('ascii')!r}"))
            if name == b"content-length" and int(value) > self._limits.max_body_bytes:
                raise _too_large(self._limits)
        if framing == 3:
            # h11 lets chunked win and ignores Content-Length; RFC 9112 section 6.1 calls the
            # pair a smuggling attempt that ought to be an error, and a proxy behind us might
            # frame it the other way.
            raise _Refusal("bad_request", Problem(
                400, detail="both Content-Length and Transfer-Encoding"))

    def _next_event(self) -> Any:
        try:
            return self._h.next_event()
        except h11.RemoteProtocolError as e:
            if e.error_status_hint == 431:
                raise _Refusal("header_too_large", Problem(
                    431, detail=f"request head over {self._limits.max_header_bytes} bytes"),
                ) from None
            raise _Refusal("bad_request", Problem(400, detail=str(e))) from None

    async def _receive(self) -> bytes:
        """More of the request, within `request_timeout_s` of its first byte."""
        if self._scope.deadline != self._request_deadline:
            self._scope.deadline = self._request_deadline
        data = bytes(await self._stream.receive_some(self._limits.receive_bytes))
        self._h.receive_data(data)  # b"" tells h11 the peer closed; it then raises or says so
        return data

    # -- answering ---------------------------------------------------------------------------

    async def _call(self, request: Request) -> Response | StreamingResponse:
        try:
            answer = await self._handler(request)
            if not isinstance(answer, Response | StreamingResponse):
                raise TypeError(f"handler returned {type(answer).__name__}, not a Response")
            return answer
        except Exception:
            self._state.handler_errors += 1
            log.exception("handler failed on %s %s from %s", request.method, request.path,
                          self._remote)
            return Problem(500, detail="the server failed to handle this request").response()

    async def _send_answer(self, request: Request, answer: Response | StreamingResponse) -> bool:
        """Write the answer; False when the connection must close (a broken stream raises)."""
        head_only = request.method == "HEAD"
        if isinstance(answer, Response):
            # h11's verdict on the request (HTTP/1.0, `Connection: close`): DONE means that
            # the client keeps the connection open; MUST_CLOSE that it does not.
            close = self._h.their_state is not h11.DONE or self._state.draining
            body = answer.body
            if answer.status in _NO_BODY:  # no body and no Content-Length (RFC 9110 8.6)
                head_only, length = True, None
            else:
                length = len(body)
            try:
                raw, close = response_head(answer.status, answer.headers, length, close)
            except ValueError as e:
                self._state.handler_errors += 1
                log.error("handler answered an invalid response head (%s): %s", answer.status, e)
                return await self._send_answer(request, _internal_error())
            await self._send(raw + body if body and not head_only else raw)
            return not close
        head = self._head(answer.status, list(answer.headers))
        if head is None:
            return await self._send_answer(request, _internal_error())
        await self._send(self._h.send(head) or b"")
        if head_only:  # never iterated, but closed: its cleanup runs now, not at collection
            async with _closing(answer.chunks):
                pass
        else:
            try:
                async with _closing(answer.chunks) as chunks:
                    self._scope.deadline = math.inf
                    async for chunk in chunks:
                        if chunk:
                            await self._send(self._h.send(h11.Data(data=chunk)) or b"")
                            self._scope.deadline = math.inf
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise
            except Exception:
                self._state.handler_errors += 1
                log.exception("streaming response failed on %s %s from %s", request.method,
                              request.path, self._remote)
                return False
        await self._send(self._h.send(h11.EndOfMessage()) or b"")
        return self._h.our_state is h11.DONE and self._h.their_state is h11.DONE

    def _head(self, status: int, headers: list[Any]) -> h11.Response | None:
        headers.append((b"date", _date()))
        if self._state.draining:
            headers.append((b"connection", b"close"))
        try:  # h11 validates here, before the connection's state changes
            return h11.Response(status_code=status, headers=headers, reason=_reason(status))
        except h11.LocalProtocolError as e:
            self._state.handler_errors += 1
            log.error("handler answered an invalid response head (%s): %s", status, e)
            return None

    async def _send(self, data: bytes) -> None:
        """Write within `write_timeout_s` (the cycle's scope: a stalled reader ends the cycle;
        a stream lifts the deadline again before it waits for its next chunk). On a
        `TLSStream` an answer the socket takes at once (the usual case) is written without
        moving the deadline or passing through the scheduler: only a wait needs the bound."""
        tls = self._tls
        if tls is not None and tls.send_nowait(data):
            return
        self._scope.deadline = trio.current_time() + self._limits.write_timeout_s
        if tls is not None:
            await tls.flush()  # what the socket did not take, in order
        else:
            await self._stream.send_all(data)

    def _report(self, refusal: _Refusal, head: bytearray) -> None:
        """Tell the server's `on_refusal` (e.g. to audit a refused identity header); a fault
        there is logged and never changes the answer."""
        report = self._state.on_refusal
        if report is None:
            return
        try:
            report(RefusedRequest(
                reason=refusal.reason, status=refusal.problem.status,
                detail=refusal.problem.detail, remote=self._remote,
                peer_certificate=self._cert, head=bytes(head[:self._limits.max_header_bytes])))
        except Exception:
            log.exception("on_refusal failed for a request from %s", self._remote)

    async def _refuse(self, refusal: _Refusal) -> None:
        """Answer a refused request (if h11 still lets us), then drain what the client is
        still sending for a moment; the caller closes the connection."""
        self._state.refused[refusal.reason] += 1
        h = self._h
        if h.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        problem = refusal.problem
        body = problem.body()
        headers = [(b"content-type", PROBLEM_CONTENT_TYPE.encode("ascii")),
                   (b"connection", b"close"), (b"content-length", b"%d" % len(body)),
                   (b"date", _date())]
        try:
            out = h.send(h11.Response(status_code=problem.status, headers=headers,
                                      reason=_reason(problem.status))) or b""
            out += h.send(h11.Data(data=body)) or b""
            out += h.send(h11.EndOfMessage()) or b""
            with trio.fail_after(self._limits.write_timeout_s):
                await self._stream.send_all(out)
        except (h11.LocalProtocolError, trio.TooSlowError, trio.BrokenResourceError,
                trio.ClosedResourceError):
            return
        with trio.move_on_after(self._limits.linger_s):
            drained = 0
            while drained < LINGER_BYTES:
                try:
                    data = await self._stream.receive_some(self._limits.receive_bytes)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not data:
                    return
                drained += len(data)


def _too_large(limits: ServerLimits) -> _Refusal:
    return _Refusal("body_too_large", Problem(
        413, detail=f"request body over {limits.max_body_bytes} bytes"))


def _internal_error() -> Response:
    return Problem(500, detail="the server failed to handle this request").response()


@asynccontextmanager
async def _closing(chunks: AsyncIterable[bytes]) -> AsyncIterator[AsyncIterator[bytes]]:
    """Iterate `chunks` and close it (an async generator's `finally` runs) however we stop."""
    it = aiter(chunks)
    try:
        yield it
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + CLOSE_STREAM_S):
                await aclose()


def response_head(status: int, headers: Headers, length: int | None, close: bool
                  ) -> tuple[bytes, bool]:
    """The bytes of a response head (with Content-Length `length` unless None, Date, and
    `Connection: close` when `close`) and whether the connection closes after it: a handler's
    own `Connection: close` closes it too; its other Connection values, Content-Length and
    Transfer-Encoding are dropped (the server frames answers). Pure; raises ValueError for a
    status outside 200-999, a name that is not a token or a value h11 would refuse."""
    if not 200 <= status <= 999:
        raise ValueError(f"status {status} is not a final response status")
    out = [_status_line(status)]
    for name, value in headers:
        raw, lower = _checked_name(name)
        if lower in _FRAMING:
            continue
        v = value.encode("ascii") if isinstance(value, str) else value
        if not _FIELD_VALUE.fullmatch(v):
            raise ValueError(f"header {raw[:40]!r} has an invalid value")
        if lower == b"connection":
            close = close or b"close" in (t.strip().lower() for t in v.split(b","))
            continue
        out += (raw, b": ", v, b"\r\n")
    if length is not None:
        out.append(b"content-length: %d\r\n" % length)
    out += (b"date: ", _date(), b"\r\n")
    if close:
        out.append(b"connection: close\r\n")
    out.append(b"\r\n")
    return b"".join(out), close


_names: dict[str | bytes, tuple[bytes, bytes]] = {}
_status_lines: dict[int, bytes] = {}


def _checked_name(name: str | bytes) -> tuple[bytes, bytes]:
    """A header name as bytes and lower-cased, once checked to be a token (ValueError)."""
    known = _names.get(name)
    if known is not None:
        return known
    raw = name.encode("ascii") if isinstance(name, str) else bytes(name)
    if not _TOKEN.fullmatch(raw):
        raise ValueError(f"header name {raw[:40]!r} is not a token")
    if len(_names) >= MAX_NAME_CACHE:
        _names.clear()
    _names[name] = (raw, raw.lower())
    return raw, raw.lower()


def _status_line(status: int) -> bytes:
    line = _status_lines.get(status)
    if line is None:  # at most 800 of them: status is 200-999
        line = _status_lines[status] = b"HTTP/1.1 %d %s\r\n" % (status, _reason(status))
    return line


_date_cache: tuple[int, bytes] = (0, b"")


def _date() -> bytes:
    """The Date header's value (RFC 9110 section 6.6.1), formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""

