"""The async client: one long-lived TLS connection, many requests in flight, on trio or asyncio.

Written on anyio, so the same code runs under `trio.run` and `asyncio.run`; the stream and the
primitives every request touches come from the running library itself (transport.py: under
trio, Loom's TLSStream and trio's own primitives, the cheaper path). Every decision (which
node, retry or raise, the HELLO exchange, the frame limit) is made by the sans-IO core in
protocol.py, as in the blocking client.

Each connection has two tasks in the client's task group: a reader that matches answers to
waiting callers by request id (answers may come back in any order) and routes topic pushes, and
a writer that is the only task ever sending on the stream. Callers hand frames to the writer
through a bounded channel, so a caller's cancelled deadline never interrupts a TLS send halfway
(a cancelled send breaks a TLS stream for good; FIELD-NOTES).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from loom.client import protocol as p
from loom.client.breaker import BreakerPolicy
from loom.client.errors import ConnectError, ProtocolError
from loom.client.ops import Ops
from loom.client.protocol import Addr, ConnectionLost
from loom.client.subscription import Subscription
from loom.client.tls import closed_during_hello, describe_tls_error, make_context
from loom.client.transport import (
    Backend,
    Stream,
    cause,
    close_forcefully,
    current_backend,
    dial,
)
from loom.wire.errors import LoomError
from loom.wire.framed import FramedReader
from loom.wire.session import RemoteProtocolError, Session

WRITE_QUEUE = 256  # frames waiting for the writer; callers block (backpressure) beyond it
WRITE_BATCH = 256 * 1024  # bytes coalesced into one TLS write
READ_CHUNK = 65536


class _Slot:
    __slots__ = ("event", "response")

    def __init__(self, event: Any) -> None:
        self.event = event
        self.response: p.Response | None = None


class Connection:
    def __init__(self, stream: Stream, addr: Addr, hello: p.HelloInfo, session: Session,
                 backend: Backend) -> None:
        self.stream = stream
        self.addr = addr
        self.hello = hello
        self.session = session
        self.pending: dict[int, _Slot] = {}
        self.subs: dict[int, Subscription] = {}
        self.error: str | None = None
        self.retired = False
        self._next_id = p.HELLO_ID
        self._b = backend
        self._out_send, self._out_recv = backend.channel(WRITE_QUEUE)
        self._scope = backend.cancel_scope()
        self.closed = backend.event()

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
        except self._b.queue_closed:
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

    async def run(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            with self._scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._reader)
                    tg.start_soon(self._writer)
                    task_status.started()
        finally:
            self._out_send.close()
            self._out_recv.close()
            reason = self.error or "connection closed"
            for slot in self.pending.values():
                slot.event.set()  # response None: lost
            for sub in self.subs.values():
                sub.end(ConnectError(f"subscription ended: {reason}"))
            self.closed.set()
            await close_forcefully(self.stream)

    async def _writer(self) -> None:
        try:
            async for frame in self._out_recv:
                batch = [frame]
                size = len(frame)
                while size < WRITE_BATCH:
                    try:
                        more = self._out_recv.receive_nowait()
                    except self._b.would_block:
                        break
                    batch.append(more)
                    size += len(more)
                await self.stream.send_all(b"".join(batch))
        except self._b.broken as e:
            self.close(f"send failed: {cause(e)}")

    async def _reader(self) -> None:
        # The client has no idle deadline: the reader waits as long as the connection lives.
        frames = FramedReader(self.session, self.stream.receive_some, self._b.cancel_scope(),
                              self._b.current_time)
        try:
            await frames.run(self._on_payload)
            self.close("the server closed the connection")
        except (RemoteProtocolError, ProtocolError) as e:
            self.close(f"protocol error: {e}")
        except self._b.broken as e:
            self.close(f"connection lost: {cause(e)}")

    def _on_payload(self, payload: bytes) -> None:
        self._dispatch(p.parse_response(payload))

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
        elif r.request_id == 0 and r.error is not None:
            # The server's last word before it closes a stream it cannot read on.
            self.close(f"the server closed the connection: {r.error}")
        if self.retired and not self.pending and not self.subs:
            self.close("retired")

    async def roundtrip(self, rid: int, frame: bytes, attempts: p.Attempts | None) -> p.Response:
        slot = _Slot(self._b.event())
        self.pending[rid] = slot
        try:
            await self.enqueue(frame)
            if attempts is not None:
                attempts.sending()
            await slot.event.wait()
        finally:
            self.pending.pop(rid, None)
        if slot.response is None:
            raise ConnectionLost(self.error or "connection closed")
        return slot.response


class AsyncClient(Ops[Any]):
    """Async Loom client, on trio or asyncio. Use `async with open_client(...) as c:`, or
    `c = await AsyncClient.connect(..., nursery=n)` with a trio nursery or an anyio task group
    you own, and `await c.aclose()`. The keyword arguments are `protocol.Options`' fields.
    """

    def __init__(
        self, endpoints: str | Sequence[str], *, ca: str | Path, nursery: Any,
        cert: str | Path | None = None, key: str | Path | None = None,
        key_passphrase_file: str | Path | None = None, client_name: str | None = None,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None, retry: p.RetryPolicy | None = None,
        server_hostname: str | None = None, check_hostname: bool | None = None,
        client_id: str | None = None, max_in_flight: int | None = None,
        max_writes_in_flight: int | None = None, connect_timeout: float | None = None,
        resend_unknown_writes: bool | None = None, breaker: BreakerPolicy | None = None,
    ) -> None:
        self.options = o = p.Options.build(
            endpoints, ca=ca, cert=cert, key=key, key_passphrase_file=key_passphrase_file,
            client_name=client_name, timeout=timeout,
            headers=headers, retry=retry, server_hostname=server_hostname,
            check_hostname=check_hostname, client_id=client_id, max_in_flight=max_in_flight,
            resend_unknown_writes=resend_unknown_writes,
            max_writes_in_flight=max_writes_in_flight, connect_timeout=connect_timeout,
            breaker=breaker)
        self._ctx = make_context(o.ca, o.cert, o.key, check_hostname=o.check_hostname,
                                 key_passphrase_file=o.key_passphrase_file)
        self._window = p.WriteWindow(o.max_writes_in_flight)
        self._router = p.Router(o.endpoints, o.breaker)
        self._nursery = nursery  # trio.Nursery or anyio TaskGroup: both have start()
        self._b = b = current_backend()
        self._window_changed = b.event()
        self._limit = b.semaphore(o.max_in_flight)
        self._lock = anyio.Lock()
        self._conn: Connection | None = None
        self._all: set[Connection] = set()
        self._closed = False

    @property
    def timeout(self) -> float:
        return self.options.timeout

    @property
    def client_id(self) -> str:
        return self.options.client_id

    @classmethod
    async def connect(cls, endpoints: str | Sequence[str], **kwargs: Any) -> AsyncClient:
        c = cls(endpoints, **kwargs)
        try:
            with c._b.fail_after(c.options.timeout):
                await c.connection()
        except c._b.timed_out:
            raise ConnectError(f"could not connect within {c.options.timeout:g}s") from None
        return c

    async def aclose(self) -> None:
        self._closed = True
        for conn in list(self._all):
            conn.close("client closed")
        for conn in list(self._all):
            with self._b.cancel_scope(shield=True):
                await conn.closed.wait()

    def statistics(self) -> p.ClientStatistics:
        """Each endpoint's circuit breaker, and the dials it spared."""
        return self._router.statistics(self._b.current_time())

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
            errors: list[str] = []
            now = self._b.current_time
            for addr in self._router.candidates(now()):
                try:
                    self._router.dialing(addr, now())
                    with self._b.fail_after(self.options.connect_timeout):
                        conn = await self._open(addr)
                except ConnectError as e:
                    errors.append(str(e))
                    self._router.dial_failed(addr, now())
                    continue
                except self._b.timed_out:
                    errors.append(f"{p.format_endpoint(addr)}: connect timed out")
                    self._router.dial_failed(addr, now())
                    continue
                except BaseException:  # the call's own deadline or cancellation, mid-dial
                    self._router.abandoned(addr)
                    raise
                self._router.connected(addr)
                self._all.add(conn)
                await self._nursery.start(self._run, conn)
                self._conn = conn
                return conn
            raise p.connect_failure(errors)

    async def _run(self, conn: Connection, *, task_status: Any = anyio.TASK_STATUS_IGNORED
                   ) -> None:
        try:
            await conn.run(task_status=task_status)
        finally:
            self._all.discard(conn)
            if self._conn is conn:
                self._conn = None

    async def _open(self, addr: Addr) -> Connection:
        o = self.options
        stream = await dial(addr, self._ctx, o.server_hostname or addr[0], o.sent_cert)
        try:
            return await self._hello(stream, addr)
        except BaseException:
            await close_forcefully(stream)
            raise

    async def _hello(self, stream: Stream, addr: Addr) -> Connection:
        where = p.format_endpoint(addr)
        sent_cert = self.options.sent_cert
        session = p.new_session(self.options, now=self._b.current_time())
        try:
            await stream.send_all(p.hello_frame(self.options))
            while (payload := session.next_payload()) is None:
                data = await stream.receive_some()
                session.receive_data(data)
                if not data:
                    raise ConnectError(f"{where}: {closed_during_hello(sent_cert=sent_cert)}")
        except self._b.broken as e:
            why = cause(e)
            if isinstance(e, anyio.EndOfStream) or "EOF" in type(why).__name__ or (
                    "ZeroReturn" in type(why).__name__):
                msg = closed_during_hello(sent_cert=sent_cert)
            else:
                msg = describe_tls_error(why, sent_cert=sent_cert)
            raise ConnectError(f"{where}: {msg}") from None
        except RemoteProtocolError as e:
            raise ConnectError(f"{where}: bad answer to HELLO: {e}") from None
        hello = p.accept_hello(payload)
        session.hello_accepted(p.answer_limit(hello))
        return Connection(stream, addr, hello, session, self._b)

    def _after_error(self, conn: Connection, err: LoomError) -> None:
        """Move on from a node that cannot serve the request. Only the first such answer on a
        connection moves the client; answers to requests that were outstanding on it at the
        time are just retried."""
        if conn.retired:
            return
        if self._router.refused(conn.addr, err):
            if self._conn is conn:
                self._conn = None
            conn.retire()

    # -- requests -------------------------------------------------------------------------------
    async def call(self, op: str | int, /, *, headers: Mapping[str, str] | None = None,
                   stale: bool = False, **body: Any) -> Any:
        """Send one request; answer its result or raise the matching error. `stale=True`
        (reads only) lets whichever node is asked answer from its own replica.

        The client's `timeout` bounds the call (retries included); a tighter deadline is the
        caller's own cancel scope (`trio.fail_after`, `anyio.fail_after`, `asyncio.timeout`)."""
        return await self.call_body(op, body, headers=headers, stale=stale)

    async def call_body(self, op: str | int, body: Mapping[str, Any], *,
                        headers: Mapping[str, str] | None = None, stale: bool = False) -> Any:
        mt, clean = p.prepare(op, body)
        attempts = p.Attempts(mt, self.options.retry, resend=self.options.resend_unknown_writes)
        hdrs = {**self.options.headers, **(headers or {})}
        seq = 0
        try:
            with self._b.fail_after(self.options.timeout):
                if mt.is_write:
                    seq = await self._issue_seq()
                return await self._with_retries(attempts, clean, seq, hdrs, stale)
        except self._b.timed_out:
            if attempts.sent and self._conn is not None:  # sent, and never answered
                self._router.timed_out(self._conn.addr, self._b.current_time())
            raise attempts.timed_out(self.options.timeout) from None
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
        self._window_changed = self._b.event()

    async def _with_retries(self, attempts: p.Attempts, body: dict[str, Any], seq: int,
                            headers: dict[str, str], stale: bool) -> Any:
        mt = attempts.mt
        while (pause := attempts.pause()) is not None:
            if pause:
                if self._b.current_time() + pause >= anyio.current_effective_deadline():
                    break  # the deadline would pass while waiting: report the last failure
                await anyio.sleep(pause)
            try:
                conn = await self.connection()
            except ConnectError as e:
                attempts.connect_failed(e)
                continue
            rid = conn.next_id()
            frame = p.request_frame(rid, mt.opcode, body, seq=seq, headers=headers, stale=stale)
            p.check_frame_size(mt, frame, conn.hello.max_frame)
            try:
                async with self._limit:
                    r = await conn.roundtrip(rid, frame, attempts)
            except ConnectionLost as e:
                self._router.lost(conn.addr)
                attempts.lost(str(e))
                continue
            if r.error is not None:
                self._after_error(conn, r.error)
            result = attempts.answered(r)
            if result is not p.RETRY:
                return result
        raise attempts.exhausted()

    @asynccontextmanager
    async def subscribe(self, topic: str, from_seq: int | None = None, *,
                        buffer: int = 1024) -> AsyncIterator[Subscription]:
        """`async with c.subscribe("t") as sub: async for msg in sub:` — pushed payloads, in
        order. A slow consumer whose buffer fills ends the subscription with LimitExceeded."""
        mt, body = p.prepare("TOPIC_SUBSCRIBE", {"name": topic, "from_seq": from_seq})
        limit = self.options.timeout
        try:
            with self._b.fail_after(limit):
                conn = await self.connection()
        except self._b.timed_out:
            raise p.timeout_error(mt, False, limit) from None
        rid = conn.next_id()
        sub = Subscription(topic, rid, buffer)
        conn.subs[rid] = sub
        try:
            try:
                with self._b.fail_after(limit):
                    frame = p.request_frame(rid, mt.opcode, body, headers=self.options.headers)
                    r = await conn.roundtrip(rid, frame, None)
            except self._b.timed_out:
                raise p.timeout_error(mt, True, limit) from None
            r.value()
            yield sub
        except ConnectionLost as e:
            raise ConnectError(f"subscription to {topic!r} failed: {e}") from None
        finally:
            conn.subs.pop(rid, None)
            sub.close()
            if conn.alive:
                with anyio.move_on_after(1.0, shield=True):
                    await self._unsubscribe(conn, topic, rid)
            elif conn.retired and not conn.pending and not conn.subs:
                conn.close("retired")

    async def _unsubscribe(self, conn: Connection, topic: str, rid: int) -> None:
        mt, body = p.prepare("TOPIC_UNSUBSCRIBE", {"name": topic, "subscription": rid})
        uid = conn.next_id()
        try:
            await conn.roundtrip(uid, p.request_frame(uid, mt.opcode, body,
                                                      headers=self.options.headers), None)
        except ConnectionLost:
            pass


@asynccontextmanager
async def open_client(endpoints: str | Sequence[str], **kwargs: Any
                      ) -> AsyncIterator[AsyncClient]:
    """An AsyncClient whose connection tasks live in a task group owned by this context; on
    trio or asyncio alike.

    The connection tasks never raise, so an exception group from the task group holding a
    single exception (a connect failure, or the body's own error) is unwrapped to it."""
    try:
        async with anyio.create_task_group() as tg:
            client = await AsyncClient.connect(endpoints, nursery=tg, **kwargs)
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
