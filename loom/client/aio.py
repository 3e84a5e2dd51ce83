"""The trio client: one long-lived TLS connection, many requests in flight.

Each connection has two tasks in the client's nursery: a reader that matches answers to waiting
callers by request id (answers may come back in any order) and routes topic pushes, and a
writer that is the only task ever sending on the stream. Callers hand frames to the writer
through a bounded channel, so a caller's cancelled deadline never interrupts a TLS send
halfway (a cancelled send breaks a TLS stream for good; FIELD-NOTES).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from loom.client import protocol as p
from loom.client.common import ClientSettings
from loom.client.errors import ConnectError, IndeterminateError, ProtocolError
from loom.client.ops import Ops
from loom.client.subscription import Subscription
from loom.client.tls import (
    closed_during_hello,
    describe_tls_error,
    is_permanent,
)
from loom.security.tlsstream import TLSStream
from loom.wire.catalog import MessageType
from loom.wire.codec import DEFAULT_MAX_FRAME, FrameDecoder, FrameError
from loom.wire.errors import Busy, LoomError, NotLeader, Timeout, Unavailable

Addr = tuple[str, int]
WRITE_QUEUE = 256  # frames waiting for the writer; callers block (backpressure) beyond it
WRITE_BATCH = 256 * 1024  # bytes coalesced into one TLS write


class ConnectionLost(Exception):
    """The connection ended while a request of ours was outstanding (internal)."""


class _Slot:
    __slots__ = ("event", "response")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.response: p.Response | None = None


class _Attempt:
    """What one call has done so far: whether a frame may have reached a server."""

    __slots__ = ("queued", "unknown")

    def __init__(self) -> None:
        self.queued = False  # the current attempt's frame was handed to the writer
        self.unknown = False  # an earlier attempt of a write was lost after sending


class Connection:
    def __init__(self, stream: TLSStream, addr: Addr,
                 hello: p.HelloInfo, decoder: FrameDecoder) -> None:
        self.stream = stream
        self.addr = addr
        self.hello = hello
        self.decoder = decoder
        self.pending: dict[int, _Slot] = {}
        self.subs: dict[int, Subscription] = {}
        self.error: str | None = None
        self.retired = False
        self._next_id = 1  # id 1 was HELLO
        self._out_send, self._out_recv = trio.open_memory_channel[bytes](WRITE_QUEUE)
        self._scope = trio.CancelScope()
        self.closed = trio.Event()

    @property
    def alive(self) -> bool:
        return self.error is None and not self.closed.is_set() and not self.retired

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    async def enqueue(self, frame: bytes) -> None:
        if self.error is not None or self.closed.is_set():
            raise ConnectionLost(self.error or "connection closed")
        try:
            await self._out_send.send(frame)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ConnectionLost(self.error or "connection closed") from None

    def close(self, reason: str = "connection closed") -> None:
        if self.error is None:
            self.error = reason
        self._scope.cancel()

    def retire(self) -> None:
        """No new requests; close once the outstanding ones are answered."""
        self.retired = True
        if not self.pending and not self.subs:
            self.close("retired")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        try:
            with self._scope:
                async with trio.open_nursery() as n:
                    n.start_soon(self._reader)
                    n.start_soon(self._writer)
                    task_status.started()
        finally:
            self._out_send.close()
            reason = self.error or "connection closed"
            for slot in self.pending.values():
                slot.event.set()  # response None: lost
            for sub in self.subs.values():
                sub.end(ConnectError(f"subscription ended: {reason}"))
            self.closed.set()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)

    async def _writer(self) -> None:
        try:
            async for frame in self._out_recv:
                batch = [frame]
                size = len(frame)
                while size < WRITE_BATCH:
                    try:
                        more = self._out_recv.receive_nowait()
                    except trio.WouldBlock:
                        break
                    batch.append(more)
                    size += len(more)
                await self.stream.send_all(b"".join(batch))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            self.close(f"send failed: {e}")

    async def _reader(self) -> None:
        try:
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    self.close("the server closed the connection")
                    return
                self.decoder.feed(bytes(data))
                while (payload := self.decoder.next_payload()) is not None:
                    self._dispatch(p.parse_response(payload))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            cause = e.__cause__ if e.__cause__ is not None else e
            self.close(f"connection lost: {cause}")
        except (FrameError, ProtocolError) as e:
            self.close(f"protocol error: {e}")

    def _dispatch(self, r: p.Response) -> None:
        if r.push:
            sub = self.subs.get(r.request_id)
            if sub is not None:
                sub.deliver(r.payload)
            return
        slot = self.pending.pop(r.request_id, None)
        if slot is not None:
            slot.response = r
            slot.event.set()
        elif (sub := self.subs.get(r.request_id)) is not None and r.error is not None:
            sub.end(r.error)
        if self.retired and not self.pending and not self.subs:
            self.close("retired")

    async def roundtrip(self, rid: int, frame: bytes, attempt: _Attempt) -> p.Response:
        slot = _Slot()
        self.pending[rid] = slot
        try:
            await self.enqueue(frame)
            attempt.queued = True
            await slot.event.wait()
        finally:
            self.pending.pop(rid, None)
        if slot.response is None:
            raise ConnectionLost(self.error or "connection closed")
        return slot.response


class AsyncClient(ClientSettings, Ops[Any]):
    """Trio Loom client. Use `async with open_client(...) as c:`, or
    `c = await AsyncClient.connect(..., nursery=n)` with a nursery you own and `await c.aclose()`.
    """

    def __init__(
        self, endpoints: str | Sequence[str], *, ca: str | Path, nursery: trio.Nursery,
        cert: str | Path | None = None, key: str | Path | None = None,
        client_name: str = "loom-py", timeout: float = 10.0,
        headers: Mapping[str, str] | None = None, retry: p.RetryPolicy | None = None,
        server_hostname: str | None = None, check_hostname: bool = True,
        client_id: str | None = None, max_in_flight: int = 1024,
        max_writes_in_flight: int = 32, connect_timeout: float = 5.0,
        resend_unknown_writes: bool = True,
    ) -> None:
        self._init_settings(
            endpoints, ca=ca, cert=cert, key=key, client_name=client_name, timeout=timeout,
            headers=headers, retry=retry, server_hostname=server_hostname,
            check_hostname=check_hostname, client_id=client_id,
            resend_unknown_writes=resend_unknown_writes,
            max_writes_in_flight=max_writes_in_flight, connect_timeout=connect_timeout)
        self._nursery = nursery
        self._window_changed = trio.Event()
        self._limit = trio.Semaphore(max_in_flight)
        self._lock = trio.Lock()
        self._conn: Connection | None = None
        self._all: set[Connection] = set()
        self._preferred: Addr | None = None
        self._rotate = 0
        self._closed = False

    @classmethod
    async def connect(cls, endpoints: str | Sequence[str], **kwargs: Any) -> AsyncClient:
        c = cls(endpoints, **kwargs)
        with trio.fail_after(c.timeout):
            await c.connection()
        return c

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._all):
            conn.close("client closed")
        for conn in list(self._all):
            with trio.CancelScope(shield=True):
                await conn.closed.wait()

    @property
    def hello(self) -> p.HelloInfo | None:
        return None if self._conn is None else self._conn.hello

    # -- connections ----------------------------------------------------------------------------
    async def connection(self) -> Connection:
        """The current connection, opening one (leader hint first) if needed."""
        conn = self._conn
        if conn is not None and conn.alive:
            return conn
        async with self._lock:
            if self._conn is not None and self._conn.alive:
                return self._conn
            if self._closed:
                raise ConnectError("the client is closed")
            candidates: list[Addr] = [self._preferred] if self._preferred else []
            n = len(self.endpoints)
            candidates += [self.endpoints[(self._rotate + i) % n] for i in range(n)]
            errors: list[str] = []
            for addr in dict.fromkeys(candidates):
                try:
                    with trio.fail_after(self.connect_timeout):
                        conn = await self._open(addr)
                except (ConnectError, trio.TooSlowError) as e:
                    errors.append(str(e) if isinstance(e, ConnectError) else
                                  f"{p.format_endpoint(addr)}: connect timed out")
                    if addr == self._preferred:
                        self._preferred = None
                    continue
                self._all.add(conn)
                await self._nursery.start(self._run, conn)
                self._conn = conn
                return conn
            raise ConnectError("could not connect: " + "; ".join(errors),
                           permanent=bool(errors) and all(
                               is_permanent(e.split(": ", 1)[-1]) for e in errors))

    async def _run(self, conn: Connection, *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await conn.run(task_status=task_status)
        finally:
            self._all.discard(conn)
            if self._conn is conn:
                self._conn = None

    async def _open(self, addr: Addr) -> Connection:
        host, port = addr
        where = p.format_endpoint(addr)
        try:
            tcp = await trio.open_tcp_stream(host, port)
        except OSError as e:
            raise ConnectError(f"{where}: {e.strerror or e}") from None
        stream = TLSStream(tcp, self._ctx, server_hostname=self._server_hostname or host)
        ok = False
        try:
            conn = await self._handshake(stream, addr)
            ok = True
            return conn
        finally:
            if not ok:
                await trio.aclose_forcefully(stream)

    async def _handshake(self, stream: TLSStream, addr: Addr) -> Connection:
        where = p.format_endpoint(addr)
        decoder = FrameDecoder(DEFAULT_MAX_FRAME)
        frame = p.request_frame(1, p.HELLO.opcode, p.hello_body(self.client_name, self.client_id))
        try:
            await stream.do_handshake()
        except (trio.BrokenResourceError, OSError) as e:
            cause = e.__cause__ if e.__cause__ is not None else e
            raise ConnectError(f"{where}: {describe_tls_error(cause, sent_cert=self._sent_cert)}"
                               ) from None
        try:
            await stream.send_all(frame)
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    raise ConnectError(f"{where}: {closed_during_hello(sent_cert=self._sent_cert)}")
                decoder.feed(bytes(data))
                payload = decoder.next_payload()
                if payload is not None:
                    break
        except (trio.BrokenResourceError, OSError) as e:
            cause = e.__cause__ if e.__cause__ is not None else e
            if "EOF" in type(cause).__name__ or "ZeroReturn" in type(cause).__name__:
                msg = closed_during_hello(sent_cert=self._sent_cert)
            else:
                msg = describe_tls_error(cause, sent_cert=self._sent_cert)
            raise ConnectError(f"{where}: {msg}") from None
        except FrameError as e:
            raise ConnectError(f"{where}: bad answer to HELLO: {e}") from None
        hello = p.parse_hello(p.parse_response(payload).value())
        decoder.max_frame = max(hello.max_frame, DEFAULT_MAX_FRAME)
        return Connection(stream, addr, hello, decoder)

    def _after_error(self, conn: Connection, err: LoomError) -> None:
        """Move on from a node that cannot serve the request: to the leader it names, or to the
        next endpoint. Only the first such answer on a connection moves the client; answers
        to requests that were outstanding on it at the time are just retried."""
        if not isinstance(err, (NotLeader, Unavailable)) or conn.retired:
            return
        hint = p.leader_hint(err)
        if hint == conn.addr:
            hint = None  # a node naming itself is no hint
        self._preferred = hint
        if hint is None:
            self._rotate = p.next_rotation(self.endpoints, conn.addr, self._rotate)
        self._retire(conn)

    def _retire(self, conn: Connection) -> None:
        if self._conn is conn:
            self._conn = None
        conn.retire()

    # -- requests -------------------------------------------------------------------------------
    async def call(self, op: str | int, /, *, headers: Mapping[str, str] | None = None,
                   stale: bool = False, **body: Any) -> Any:
        """Send one request; answer its result or raise the matching error. `stale=True`
        (reads only) lets whichever node is asked answer from its own replica.

        The client's `timeout` bounds the call (retries included); a tighter deadline is the
        caller's own `trio.fail_after` / `move_on_after` around the call."""
        return await self.call_body(op, body, headers=headers, stale=stale)

    async def call_body(self, op: str | int, body: Mapping[str, Any], *,
                        headers: Mapping[str, str] | None = None, stale: bool = False) -> Any:
        mt, clean = p.prepare(op, body)
        attempt = _Attempt()
        hdrs = {**self.headers, **(headers or {})}
        seq = 0
        try:
            with trio.fail_after(self.timeout):
                if mt.is_write:
                    seq = await self._issue_seq()
                return await self._with_retries(mt, clean, seq, hdrs, attempt, stale)
        except trio.TooSlowError:
            raise p.timeout_error(mt, attempt.queued or attempt.unknown, self.timeout) from None
        finally:
            if seq:
                self._finish_seq(seq)

    @property
    def writes_in_flight(self) -> int:
        """Writes issued and not yet settled (answered, failed or given up)."""
        return self._window.outstanding

    async def _issue_seq(self) -> int:
        """A sequence number for a new write, waiting while the write window is full."""
        while not self._window.can_issue():
            await self._window_changed.wait()
        return self._window.issue()

    def _finish_seq(self, seq: int) -> None:
        self._window.finish(seq)
        self._window_changed.set()
        self._window_changed = trio.Event()

    async def _with_retries(self, mt: MessageType, body: dict[str, Any], seq: int,
                            headers: dict[str, str], attempt: _Attempt,
                            stale: bool = False) -> Any:
        last: BaseException | None = None
        for n in range(max(1, self.retry.attempts)):
            if n:
                pause = self.retry.delay_for(last, n - 1)
                if trio.current_time() + pause >= trio.current_effective_deadline():
                    break  # the deadline would pass while waiting: report the last failure
                await trio.sleep(pause)
            try:
                conn = await self.connection()
            except ConnectError as e:
                if e.permanent:
                    raise
                last = e
                continue
            rid = conn.next_id()
            frame = p.request_frame(rid, mt.opcode, body, seq=seq, headers=headers,
                                    stale=stale)
            try:
                async with self._limit:
                    r = await conn.roundtrip(rid, frame, attempt)
            except ConnectionLost as e:
                self._rotate = p.next_rotation(self.endpoints, conn.addr, self._rotate)
                if mt.is_write and attempt.queued:
                    attempt.unknown = True
                    if not self.resend_unknown_writes:
                        raise IndeterminateError(f"{mt.name}: {e}") from None
                attempt.queued = False
                last = ConnectError(str(e))
                continue
            if r.error is None:
                return r.result
            attempt.queued = False  # an answer: this attempt is settled
            if isinstance(r.error, (NotLeader, Unavailable, Busy)):
                self._after_error(conn, r.error)
                last = r.error
                continue
            if isinstance(r.error, Timeout) and mt.is_write:
                raise IndeterminateError(f"{mt.name}: {r.error.message}") from r.error
            raise r.error
        if attempt.unknown:
            raise IndeterminateError(f"{mt.name}: {last}")
        assert last is not None
        raise last

    @asynccontextmanager
    async def subscribe(self, topic: str, from_seq: int | None = None, *,
                        buffer: int = 1024) -> AsyncIterator[Subscription]:
        """`async with c.subscribe("t") as sub: async for msg in sub:` — pushed payloads, in
        order. A slow consumer whose buffer fills ends the subscription with LimitExceeded."""
        mt, body = p.prepare("TOPIC_SUBSCRIBE", {"name": topic, "from_seq": from_seq})
        with trio.fail_after(self.timeout):
            conn = await self.connection()
        rid = conn.next_id()
        sub = Subscription(topic, rid, buffer)
        conn.subs[rid] = sub
        try:
            with trio.fail_after(self.timeout):
                frame = p.request_frame(rid, mt.opcode, body, headers=self.headers)
                r = await conn.roundtrip(rid, frame, _Attempt())
            r.value()
            yield sub
        except ConnectionLost as e:
            raise ConnectError(f"subscription to {topic!r} failed: {e}") from None
        finally:
            conn.subs.pop(rid, None)
            sub.end(None)
            if conn.alive:
                with trio.move_on_after(1.0, shield=True):
                    await self._unsubscribe(conn, topic, rid)
            elif conn.retired and not conn.pending and not conn.subs:
                conn.close("retired")

    async def _unsubscribe(self, conn: Connection, topic: str, rid: int) -> None:
        mt, body = p.prepare("TOPIC_UNSUBSCRIBE", {"name": topic, "subscription": rid})
        uid = conn.next_id()
        try:
            await conn.roundtrip(uid, p.request_frame(uid, mt.opcode, body,
                                                      headers=self.headers), _Attempt())
        except ConnectionLost:
            pass


@asynccontextmanager
async def open_client(endpoints: str | Sequence[str], **kwargs: Any
                      ) -> AsyncIterator[AsyncClient]:
    """An AsyncClient whose connection tasks live in a nursery owned by this context.

    The connection tasks never raise, so an exception group from the nursery holding a single
    exception (a connect failure, or the body's own error) is unwrapped to that exception."""
    try:
        async with trio.open_nursery() as nursery:
            client = await AsyncClient.connect(endpoints, nursery=nursery, **kwargs)
            try:
                yield client
            finally:
                await client.aclose()
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out += _leaves(e) if isinstance(e, BaseExceptionGroup) else [e]
    return out
