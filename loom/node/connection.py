r"""One client connection, after its TLS handshake: HELLO, then pipelined requests.

    reader (this task) --> dispatcher.start --> answered at once (refusals, node-local types)
                                            \-> dispatcher.submit --> log --> callback
                                            \-> a task per waiting request (timeout_ms, admin)
    every answer --> outbound channel --> writer (one TLS write per batch)

The listener (clientport.py) admits the connection, runs its handshake and derives its
identity; the connection gets a narrow `ConnectionContext` (limits, dispatcher, topics, whether
the node is stopping), never the node, so it imports nothing above it.

Invariants:
- The session protocol (HELLO first, the 4 KiB frame limit before it, version negotiation, the
  HELLO and idle deadlines) is `wire/session.py`'s `Session`, read by `wire/framed.py`'s loop;
  this module only answers what the session hands on.
- Every request holds one of `max_outstanding_per_connection` slots from the moment it is read
  until its answer has been written to the socket; with none free the reader stops reading,
  which pushes back on the client through TCP. Answers therefore never exceed that many in the
  outbound channel, and topic pushes may use only the room above it (they are dropped, and the
  loss reported, beyond): an answer always fits, so the log's callbacks never wait.
- Replies go through one bounded channel to one writer, which sends everything queued as one
  TLS write. A client that stops reading stalls the writer; after `write_stall_timeout_s` the
  connection is dropped (G3). A cancelled send breaks a TLS stream, so we never reuse it.
- Nothing raised here escapes to the listener: an error ends this connection only.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from loom.node.config import Limits
from loom.node.topics import Subscription, TopicHub
from loom.security.identity import Identity
from loom.security.tlsstream import TLSStream
from loom.wire.codec import (
    DecodeBudget,
    FrameError,
    Request,
    client_item_limits,
    decode_payload,
    encode,
    error_response,
    ok_response,
    parse_request,
    push_frame,
)
from loom.wire.errors import BadRequest, LoomError, TooLarge, Unavailable
from loom.wire.framed import FramedReader
from loom.wire.session import RemoteProtocolError, Session, SessionLimits, accept_hello

if TYPE_CHECKING:
    from loom.node.dispatcher import Call, Dispatcher

log = logging.getLogger("loom.conn")

READ_CHUNK = 65536


class _Closing(Exception):
    """End this connection (after flushing what is queued)."""


class _Idle:
    """Stands in for the reader before the session starts (after the TLS handshake)."""

    waiting = False


_NOT_READING: Any = _Idle()

# How connections normally end: the peer went away, TLS failed, a limit closed it.
_ENDINGS = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError,
            _Closing, trio.TooSlowError)


@dataclass(frozen=True, slots=True)
class ConnectionContext:
    """What a connection may use of its node (after hypercorn's `TCPServer(app, config,
    context, ...)`); `terminated` is set when the node starts shutting down."""

    node_id: str
    limits: Limits
    dispatcher: Dispatcher
    topics: TopicHub
    terminated: trio.Event


class Connection:
    listener = "client"  # metrics label (loom.obs.metrics.LISTENERS)

    def __init__(self, ctx: ConnectionContext, stream: TLSStream, conn_id: str, peer: str,
                 identity: Identity, identity_slots: trio.Semaphore) -> None:
        self.ctx = ctx
        self.stream = stream
        self.conn_id = conn_id
        self.peer = peer
        self.source = peer.rpartition(":")[0] if ":" in peer else ""
        self.identity = identity
        self.client_id = ""
        self.version = 0
        lim = ctx.limits
        # (frame, holds a slot): answers hold one until written, pushes do not. A frame of
        # None holds the slot of an answer written directly whose bytes the stream still keeps.
        self._out_send, self._out_recv = trio.open_memory_channel[
            tuple[dict[str, Any] | None, bool]](lim.max_output_buffer_frames)
        self._slots = trio.Semaphore(lim.max_outstanding_per_connection)
        self._max_slots = lim.max_outstanding_per_connection
        # Shared by every connection of this identity (`max_outstanding_per_identity`): taken
        # and given back with each slot above, so one identity's flood waits on its own
        # budget instead of filling the log's inbox for everyone (G2).
        self._identity_slots = identity_slots
        self._writer_idle = False  # the writer waits on an empty channel
        # The session and its reader start after the TLS handshake (`_reader`); until then a
        # placeholder that is never waiting.
        self._frames: FramedReader = _NOT_READING
        self._requests: trio.Nursery | None = None
        self._push_room = lim.max_output_buffer_frames - lim.max_outstanding_per_connection
        self._subs: dict[int, Subscription | None] = {}  # None: answer not yet queued
        self._lost: dict[int, list[int]] = {}
        self._after_answer: dict[int, Callable[[], None]] = {}
        self.reader_scope = trio.CancelScope()
        # Decoding work per frame is bounded by item limits, per connection by a share of the
        # event loop (wire/codec.py): a connection over its share pauses before its next frame.
        self._decode_budget = DecodeBudget()
        self._decode_pause = 0.0

    # -- Session protocol for the dispatcher ----------------------------------------------------
    def subscribe(self, topic: str, request_id: int, from_seq: int | None) -> int:
        if len(self._subs) >= 64:
            raise TooLarge("at most 64 subscriptions per connection")

        def deliver(seq: int, value: bytes) -> None:
            payload: dict[str, Any] = {"topic": topic, "seq": seq, "value": value}
            lost = self._lost.get(request_id)
            if lost:
                payload["lost"] = lost  # [first, last] sequence numbers this subscriber missed
            try:
                if self._out_send.statistics().current_buffer_used >= self._push_room:
                    raise trio.WouldBlock  # the rest of the buffer is reserved for answers
                self._out_send.send_nowait((push_frame(request_id, payload), False))
            except trio.WouldBlock:
                if lost:
                    lost[1] = seq
                else:
                    self._lost[request_id] = [seq, seq]
                return
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            self._lost.pop(request_id, None)

        def lost(first: int, last: int) -> None:
            self._lost[request_id] = [first, last]

        self._subs[request_id] = None

        def start() -> None:
            # Runs right after the SUBSCRIBE answer is queued, so pushes follow the answer
            # (the hub replays and registers without yielding: topics.py).
            if request_id in self._subs:
                self._subs[request_id] = self.ctx.topics.subscribe(
                    topic, deliver, from_seq=from_seq, lost=lost)

        self._after_answer[request_id] = start
        return request_id

    def unsubscribe(self, subscription: int) -> bool:
        if subscription not in self._subs:
            return False
        sub = self._subs.pop(subscription)
        if sub is not None:
            self.ctx.topics.unsubscribe(sub)
        return True

    # -- lifecycle ------------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self._run()
        except* _ENDINGS as eg:  # cancellation (a BaseException) is never caught here
            log.debug("%s %s closed: %s", self.conn_id, self.peer, eg.exceptions[0])
        except* Exception:
            log.exception("%s %s: unexpected error; closing this connection", self.conn_id,
                          self.peer)
        finally:
            for sub in list(self._subs):
                self.unsubscribe(sub)
            with trio.move_on_after(1) as cs:
                cs.shield = True
                await trio.aclose_forcefully(self.stream)

    async def _run(self) -> None:
        closing: _Closing | None = None
        async with trio.open_nursery() as outer:
            outer.start_soon(self._writer)
            async with trio.open_nursery() as requests:
                try:
                    with self.reader_scope:
                        await self._reader(requests)
                        # The client closed the connection: nobody will read an answer. Stop
                        # every request still running, above all waiters (QUEUE_POLL,
                        # LOCK_LOCK, ...), so nothing is taken or granted for a client that is
                        # gone. A write already proposed still applies, as if its answer had
                        # been lost on the way.
                        requests.cancel_scope.cancel()
                except _Closing as e:  # a protocol violation or limit: stop, answer, close
                    closing = e
                    requests.cancel_scope.cancel()
                # Otherwise shutdown stopped the reader: in-flight requests finish here.
            if closing is None and not requests.cancel_scope.cancel_called:
                # Shutdown: the requests handed to the log answer through callbacks. Wait
                # until every slot is back, i.e. every answer was written (the node bounds
                # this wait with its grace period).
                for _ in range(self._max_slots):
                    await self._slots.acquire()
            # Every answer is queued: the writer sends them, then ends (bounded in time).
            self._out_send.close()
            outer.cancel_scope.deadline = (trio.current_time()
                                           + self.ctx.limits.write_stall_timeout_s)
        if closing is not None:
            raise closing

    async def _reader(self, nursery: trio.Nursery) -> None:
        lim = self.ctx.limits
        session = Session(SessionLimits(
            max_frame=lim.max_frame_bytes, hello_timeout_s=lim.hello_timeout_s,
            idle_timeout_s=lim.idle_timeout_s), now=trio.current_time())
        self._frames = frames = FramedReader(
            session, self._receive, trio.CancelScope(), trio.current_time)
        self._requests = nursery
        try:
            ended = await frames.run(self._handle_payload)
        except RemoteProtocolError as e:
            # The stream can no longer be framed: answer once, then close.
            await self._answer(error_response(0, e.answer))
            raise _Closing(str(e)) from None
        if ended is not None:
            raise _Closing(ended)

    def _receive(self) -> Awaitable[bytes]:
        return self.stream.receive_some(READ_CHUNK)

    async def _handle_payload(self, payload: bytes) -> None:
        if self._decode_pause:
            pause, self._decode_pause = self._decode_pause, 0.0
            await trio.sleep(pause)
        await self._take_slot()
        session = self._frames.session
        rid = 0
        try:
            t0 = time.perf_counter()
            try:
                obj = decode_payload(payload, limits=client_item_limits())
            finally:
                t1 = time.perf_counter()
                self._decode_pause = self._decode_budget.charge(t1, t1 - t0)
            if isinstance(obj, dict) and isinstance(obj.get("id"), int):
                rid = obj["id"]
            req = parse_request(obj)
        except (FrameError, LoomError) as e:
            err = (e if isinstance(e, LoomError) else TooLarge(str(e))
                   if e.status.name == "TOO_LARGE" else BadRequest(str(e)))
            self._reply(error_response(rid, err))
            if not session.open:  # before HELLO a malformed frame ends the session
                session.protocol_error(str(e))
                raise _Closing("malformed request before HELLO") from None
            return
        if not session.open:
            answer, accepted = self._hello(req, session)
            self._reply(answer)
            if not accepted:
                raise _Closing("HELLO refused")
            return
        if self.ctx.terminated.is_set():
            self._reply(error_response(req.request_id, Unavailable("the node is shutting down")))
            return
        dispatcher = self.ctx.dispatcher
        step = dispatcher.start(self, req)
        if isinstance(step, dict):
            self._reply(step)
            after = self._after_answer.pop(req.request_id, None)
            if after is not None:
                after()
        elif step.waits:
            assert self._requests is not None  # set before the reader starts
            self._requests.start_soon(self._serve_waiting, step)
        else:
            dispatcher.submit(step, self._reply)

    async def _serve_waiting(self, call: Call) -> None:
        try:
            resp = await self.ctx.dispatcher.run(call)
        except BaseException:  # cancelled: the connection is closing, no answer will follow
            self._give_slot()
            raise
        self._reply(resp)

    async def _answer(self, resp: dict[str, Any]) -> None:
        """An answer from the reader itself, outside any request: it takes a slot too."""
        await self._take_slot()
        self._reply(resp)

    async def _take_slot(self) -> None:
        # Take the slots without yielding when they are free, so every request of a chunk is
        # started before any of them runs: their answers then leave in one TLS write.
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            await self._slots.acquire()
        try:
            self._identity_slots.acquire_nowait()
        except trio.WouldBlock:
            try:
                await self._identity_slots.acquire()
            except BaseException:  # cancelled (shutdown, close): hold nothing
                self._slots.release()
                raise

    def _give_slot(self) -> None:
        self._slots.release()
        self._identity_slots.release()

    def _reply(self, resp: dict[str, Any]) -> None:
        """Send or queue the answer of a request holding a slot; the slot is released once the
        answer is written. Never waits: answers never exceed the slots, and pushes leave them
        room."""
        if (self._frames.waiting and self._writer_idle and self._slots.value == self._max_slots - 1
                and not self._out_send.statistics().current_buffer_used):
            # The only request in flight, none being read, nothing queued before it: write the
            # answer now rather than wake the writer for it (a closed-loop client's every
            # request). Answers to pipelined requests, or given while the reader works through
            # a chunk, take the writer, which sends a whole burst in one write.
            try:
                done = self.stream.send_nowait(encode(resp))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                done = True  # the connection is gone; its reader and writer will see it too
            if done:
                self._give_slot()
                return
            resp_or_rest: dict[str, Any] | None = None  # the stream keeps the rest: flush it
        else:
            resp_or_rest = resp
        try:
            self._out_send.send_nowait((resp_or_rest, True))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._give_slot()  # the connection is gone; a late answer has no reader

    def _hello(self, req: Request, session: Session) -> tuple[dict[str, Any], bool]:
        """The answer to the first request, and whether it was an accepted HELLO (the session
        is open then)."""
        try:
            terms = accept_hello(req)
        except LoomError as e:
            log.debug("%s %s: HELLO refused: %s", self.conn_id, self.peer, e)
            session.hello_refused(str(e))
            return error_response(req.request_id, e), False
        session.hello_accepted()
        self.version = terms.version
        self.client_id = terms.client_id
        policy = self.ctx.dispatcher.policy()
        return ok_response(req.request_id, {
            "version": self.version, "node": self.ctx.node_id,
            "max_frame": session.max_frame, "principal": self.identity.principal,
            "roles": list(policy.roles_for(self.identity.principal)),
            "connection": self.conn_id,
        }), True

    async def _writer(self) -> None:
        stall = self.ctx.limits.write_stall_timeout_s
        async with self._out_recv:
            while True:
                self._writer_idle = True
                try:
                    first = await self._out_recv.receive()
                except trio.EndOfChannel:
                    break
                finally:
                    self._writer_idle = False
                batch = [first]
                # Answers arrive in bursts (one per driver turn, or per chunk the reader
                # answered itself), queued before this task runs: one TLS write carries all
                # that are queued (bounded).
                while len(batch) < 512:
                    try:
                        batch.append(self._out_recv.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                data = b"".join([encode(frame) for frame, _ in batch if frame is not None])
                try:
                    if not self.stream.send_nowait(data):  # the socket is full: wait, bounded
                        with trio.fail_after(stall):
                            await self.stream.flush()
                except trio.TooSlowError:
                    log.warning("%s %s: client is not reading its replies; dropping it",
                                self.conn_id, self.peer)
                    self.reader_scope.cancel()
                    raise _Closing("write stalled") from None
                for _, holds_slot in batch:
                    if holds_slot:
                        self._give_slot()
