"""The outbound half of the peer plane: one link task per peer, its queues and its limits.

    PeerTransport.send --(sync, never blocks)--> Link lanes --> writer --> one TLS write
                                                               EOF watcher (the peer never writes)

Invariants:
- Each node sends only on its outbound links and receives only on its inbound connections, so
  a link is one-way: anything the remote side writes to us is a protocol violation.
- Two bounded lanes per link, drained by one writer, priority lane first. Overflow policy:
  drop the newest message and count it (Raft retransmits; a sender must never wait on a slow or
  dead peer). Bulk messages (AppendEntries, InstallSnapshot: log entries and snapshot data) use
  the bulk lane; every other kind is a small control message (heartbeats, votes, responses,
  ReadIndex, TimeoutNow) and uses the priority lane, so bulk traffic cannot starve elections or
  leases. The lanes are deques with explicit bounds rather than memory channels because one
  writer must wait on both at once; `send` never awaits either way. While a peer is down its
  lanes keep what was queued (bounded) and send it on reconnect: Raft ignores stale terms.
- An idle link repeats its PEER_HELLO every `keepalive_s`, so the receiver's idle timeout and
  its `reachable` view stay fresh between nodes that have no Raft traffic for each other.
- Right after PEER_HELLO, and again whenever it changes, a link sends the node's committed
  configuration (PEER_MEMBERS, the node's vouch: loom/security/peertrust.py), so a peer that
  lags behind a membership change learns from a member it trusts whom else to admit.
- Nothing is written before the TLS handshake succeeded AND the server's certificate names the
  node we dialled (`check_peer(identity, expected=peer_id)`, SECURITY-CATALOGUE A5). The first
  frame is PEER_HELLO; after that, everything queued when the writer wakes leaves in one TLS
  write (bounded by `max_batch_bytes`).
- A cancelled or timed-out send leaves a TLS stream broken (trio #198): the connection is closed
  and redialled, never reused. Redials back off exponentially with jitter; the backoff starts
  over only after a connection that lasted `backoff_max_s`.
- Nothing raised inside a connection escapes the link task: it is logged, the connection is
  closed, and the link redials.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from loom.node.config import ConfigError, PeerLimits, parse_host_port
from loom.raft.messages import AppendEntries, InstallSnapshot, Message
from loom.security.identity import IdentityError, check_peer, identity_from_der
from loom.security.peertrust import Vouch
from loom.security.revocation import Revocation, seconds_left
from loom.security.tlsstream import TLSStream
from loom.wire import catalog
from loom.wire.codec import PROTOCOL_VERSION, encode

log = logging.getLogger("loom.peer")

READ_CHUNK = 65536
PEER_HELLO_OP = catalog.BY_NAME["PEER_HELLO"].opcode
PEER_MEMBERS_OP = catalog.BY_NAME["PEER_MEMBERS"].opcode
# The one thing a listener ever writes on a peer connection: it refuses the dialer because the
# dialer was removed from the configuration. The dialer believes it only from the node it dialled
# (the certificate was checked against the peer id, a member of the dialer's configuration).
REMOVED_NOTICE = b"LOOM-REMOVED: removed from the configuration\n"
RAFT_OPCODES: dict[str, int] = {n: catalog.BY_NAME[n].opcode for n in catalog.RAFT_NAMES}
BULK_TYPES: tuple[type[Message], ...] = (AppendEntries, InstallSnapshot)


@dataclass(slots=True)
class PeerStats:
    connected: bool = False  # our outbound link is up (handshake and identity check passed)
    inbound: bool = False  # an authenticated inbound connection from it is open
    sent: int = 0  # Raft messages written on the outbound link
    dropped: int = 0  # Raft messages dropped: lane full, link removed, too large, write failed
    received: int = 0  # Raft messages delivered to on_message
    rejected: int = 0  # inbound Raft messages dropped: forged `frm` or not addressed to us
    refused: int = 0  # inbound connections refused with this node id (e.g. not a member)
    aborted: int = 0  # outbound connections aborted: the server was not this node (A5)
    connects: int = 0  # outbound connections established
    last_sent: float | None = None  # trio time of the last successful outbound write
    last_received: float | None = None  # trio time of the last inbound frame

    def as_dict(self, now: float) -> dict[str, Any]:
        def age(t: float | None) -> float | None:
            return None if t is None else round(now - t, 3)

        return {
            "connected": self.connected, "inbound": self.inbound, "sent": self.sent,
            "dropped": self.dropped, "received": self.received, "rejected": self.rejected,
            "refused": self.refused, "aborted": self.aborted, "connects": self.connects,
            "last_contact_age_s": age(self.last_received), "last_sent_age_s": age(self.last_sent),
        }


def hello_frame(frame_id: int, node_id: str, cluster: str, client_addr: str,
                http_addr: str = "") -> bytes:
    body = {"node": node_id, "client_addr": client_addr, "cluster": cluster}
    if http_addr:
        body["http_addr"] = http_addr
    return encode({"v": PROTOCOL_VERSION, "id": frame_id, "op": PEER_HELLO_OP, "b": body})


def members_frame(frame_id: int, vouch: Vouch) -> bytes:
    return encode({"v": PROTOCOL_VERSION, "id": frame_id, "op": PEER_MEMBERS_OP,
                   "b": vouch.body()})


def raft_frame(frame_id: int, msg: Message) -> bytes:
    return encode({"v": PROTOCOL_VERSION, "id": frame_id, "op": RAFT_OPCODES[msg.KIND],
                   "b": {"msg": msg.to_wire()}})


class _LinkClosed(Exception):
    """End this connection; the link redials."""


class Link:
    """The outbound link to one peer. Created synchronously; `run` is its task."""

    def __init__(self, *, peer_id: str, addr: str, node_id: str, cluster: str, client_addr: str,
                 client_ctx: ssl.SSLContext, trust_domain: str, limits: PeerLimits,
                 stats: PeerStats, http_addr: str = "") -> None:
        self.peer_id = peer_id
        self.addr = addr
        self._hello = (node_id, cluster, client_addr, http_addr)
        self._ctx = client_ctx
        self._td = trust_domain
        self._lim = limits
        self.stats = stats
        # Called with our peer's id when it says we were removed from the configuration.
        self.on_removed: Callable[[str], None] | None = None
        # Called with our peer's id when a dial is refused: nothing listens at its address, so
        # its process is gone (the Raft core may campaign early: RaftCore.peer_gone).
        self.on_gone: Callable[[str], None] | None = None
        self._prio: deque[Message] = deque()
        self._bulk: deque[Message] = deque()
        self._wakeup = trio.Event()
        self._frame_id = 0
        self._backoff = limits.backoff_min_s
        self._rng = random.Random()
        self.scope = trio.CancelScope()  # the whole link; cancelled when the peer is removed
        self._attempt: trio.CancelScope | None = None  # one dial + connection + backoff sleep
        self._connected_at: float | None = None  # when the current connection was admitted
        # Set while the writer is parked on `_wakeup` with nothing queued or unsent: `flush`
        # may then write on the writer's behalf, from the driver, without waking it.
        self._parked: TLSStream | None = None
        self._unflushed = 0  # messages `flush` left to the writer to finish writing
        self._failed: BaseException | None = None  # a direct write failed: the writer ends
        self.revocation = Revocation()  # set by the transport (SIGHUP)
        self._peer_der = b""  # the certificate of the peer we are connected to, if any
        self._vouch: Vouch | None = None  # our committed configuration, told to the peer
        self._vouch_due = False  # not yet sent on the current connection

    # -- called synchronously from the transport (trio thread) ----------------------------------
    def enqueue(self, msg: Message) -> bool:
        """Queue one message; False (and counted) when its lane is full. Never blocks."""
        if isinstance(msg, BULK_TYPES):
            lane, bound = self._bulk, self._lim.queue_len
        else:
            lane, bound = self._prio, self._lim.priority_queue_len
        if len(lane) >= bound:
            self.stats.dropped += 1  # drop-newest: the queued ones are older and already due
            return False
        lane.append(msg)
        if self._parked is None:
            self._wakeup.set()  # the writer is busy or not connected: it takes it from here
        return True

    def flush(self) -> None:
        """Write what was queued now, in one TLS write, if the writer is parked (the common
        case: the driver's sends for one Ready leave together, and no task wakes up). A write
        the socket cannot take at once is finished by the writer, under its write timeout."""
        stream = self._parked
        if stream is None or not (self._prio or self._bulk):
            return
        frames: list[bytes] = []
        n = self._drain(frames)
        try:
            done = stream.send_nowait(b"".join(frames))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            self.stats.dropped += n
            self._failed = e
            self._parked = None
            self._wakeup.set()
            return
        if done:
            self.stats.sent += n
            self.stats.last_sent = trio.current_time()
        else:
            self._unflushed += n
            self._parked = None
            self._wakeup.set()

    def set_vouch(self, vouch: Vouch | None) -> None:
        """Our committed configuration changed: the peer hears it next (and on each connect)."""
        self._vouch = vouch
        self._vouch_due = vouch is not None
        if self._vouch_due:
            self._wakeup.set()  # a parked writer wakes and sends it

    def queued(self) -> tuple[int, int]:
        return len(self._prio), len(self._bulk)

    def set_context(self, ctx: ssl.SSLContext) -> None:
        """The next dial uses `ctx` (certificates reloaded)."""
        self._ctx = ctx

    def recheck(self) -> None:
        """The revocation list changed: drop the connection if the peer's certificate is no
        longer good (every later dial is refused at the handshake or just after it)."""
        why = self.revocation.reason(self._peer_der) if self._peer_der else None
        if why is not None and self._attempt is not None:
            log.warning("peer link %s (%s): closing, %s", self.peer_id, self.addr, why)
            self._attempt.cancel()

    def retarget(self, addr: str) -> None:
        """The peer moved: abandon the current connection or backoff sleep and dial `addr`."""
        self.addr = addr
        self._backoff = self._lim.backoff_min_s
        if self._attempt is not None:
            self._attempt.cancel()

    def stop(self) -> None:
        self.scope.cancel()
        self.stats.dropped += len(self._prio) + len(self._bulk)
        self._prio.clear()
        self._bulk.clear()

    # -- the link task --------------------------------------------------------------------------
    async def run(self) -> None:
        with self.scope:
            while True:
                with trio.CancelScope() as attempt:
                    self._attempt = attempt
                    try:
                        await self._connect_and_serve()
                    except (OSError, ssl.SSLError, trio.BrokenResourceError,
                            trio.ClosedResourceError, trio.TooSlowError, _LinkClosed,
                            ConfigError) as e:
                        log.debug("peer link %s (%s): %s", self.peer_id, self.addr, e)
                        if self.on_gone is not None and refused(e):
                            self.on_gone(self.peer_id)
                    except IdentityError as e:
                        self.stats.aborted += 1
                        log.warning("peer link %s (%s): aborted, wrong server identity: %s",
                                    self.peer_id, self.addr, e)
                    except Exception:
                        log.exception("peer link %s (%s): unexpected error", self.peer_id,
                                      self.addr)
                    finally:
                        self.stats.connected = False
                    # Back off from min again only after a connection that lasted: a peer that
                    # accepts and then hangs up at once (it does not admit us) is not hammered.
                    up = self._connected_at
                    if up is not None and trio.current_time() - up >= self._lim.backoff_max_s:
                        self._backoff = self._lim.backoff_min_s
                    self._connected_at = None
                    delay = self._backoff * self._rng.uniform(0.5, 1.0)
                    self._backoff = min(self._backoff * 2, self._lim.backoff_max_s)
                    await trio.sleep(delay)

    async def _connect_and_serve(self) -> None:
        self._connected_at = None
        host, port = parse_host_port(self.addr, f"address of peer {self.peer_id}")
        with trio.fail_after(self._lim.handshake_timeout_s):
            tcp = await trio.open_tcp_stream(host, port)
            # Peers are named by their URI SAN: no hostname check, no SNI; identity below.
            stream = TLSStream(tcp, self._ctx, server_hostname=None)
            try:
                await stream.do_handshake()
            except BaseException:
                await self._close(stream)
                raise
        try:
            der = stream.getpeercert(binary_form=True) or b""
            ident = identity_from_der(der, self._td)
            check_peer(ident, expected=self.peer_id)  # A5: before a single byte is written
            why = self.revocation.reason(der)
            if why is not None:
                raise IdentityError(why)
            self._peer_der = der
            self._why = "closed"
            self.stats.connected = True
            self.stats.connects += 1
            self._connected_at = trio.current_time()
            log.info("peer link %s (%s) connected", self.peer_id, self.addr)
            async with trio.open_nursery() as nursery:
                # The peer's certificate holds the connection until it expires, no longer.
                nursery.cancel_scope.deadline = trio.current_time() + seconds_left(der)
                nursery.start_soon(self._guarded, self._watch_eof, stream, nursery.cancel_scope)
                await self._guarded(self._writer, stream, nursery.cancel_scope)
            # Both halves are done: the reason was recorded by whichever ended first.
            raise _LinkClosed(self._why)
        finally:
            self._peer_der = b""
            await self._close(stream)

    _why = "closed"

    async def _guarded(self, fn: Callable[[TLSStream], Awaitable[None]], stream: TLSStream,
                       scope: trio.CancelScope) -> None:
        """Run one half of a connection; whatever ends it ends the other half too. Exceptions
        stop here so the connection's nursery only ever exits through its own cancellation."""
        try:
            await fn(stream)
        except (OSError, ssl.SSLError, trio.BrokenResourceError, trio.ClosedResourceError,
                trio.TooSlowError, _LinkClosed) as e:
            self._why = str(e) or type(e).__name__
        except Exception as e:
            self._why = f"unexpected error: {e!r}"
            log.exception("peer link %s: unexpected error", self.peer_id)
        finally:
            scope.cancel()

    async def _watch_eof(self, stream: TLSStream) -> None:
        data = await stream.receive_some(READ_CHUNK)
        if data.startswith(REMOVED_NOTICE):
            if self.on_removed is not None:
                self.on_removed(self.peer_id)
            raise _LinkClosed("refused: removed from the configuration")
        if data:
            raise _LinkClosed("the peer wrote on a one-way link")
        raise _LinkClosed("the peer closed the connection")

    async def _writer(self, stream: TLSStream) -> None:
        pending = [hello_frame(self._next_id(), *self._hello)]
        self._vouch_due = self._vouch is not None
        keepalive = self._lim.keepalive_s
        try:
            while True:
                if (not pending and not self._prio and not self._bulk and not self._unflushed
                        and not self._vouch_due):
                    self._parked = stream
                    try:
                        with trio.move_on_after(keepalive):
                            await self._wakeup.wait()
                    finally:
                        self._parked = None
                    if self._failed is not None:
                        raise self._failed
                    last = self.stats.last_sent
                    if (not self._prio and not self._bulk and not self._unflushed
                            and (last is None or trio.current_time() - last >= keepalive)):
                        # Keepalive: the same PEER_HELLO again keeps the receiver's idle timer
                        # and its view of our reachability fresh on links without Raft traffic.
                        pending.append(hello_frame(self._next_id(), *self._hello))
                self._wakeup = trio.Event()  # before draining: a later enqueue sets the new one
                if self._vouch_due and self._vouch is not None:
                    self._vouch_due = False
                    pending.append(members_frame(self._next_id(), self._vouch))
                n = self._drain(pending) + self._unflushed
                self._unflushed = 0
                data = b"".join(pending)
                pending.clear()
                try:
                    with trio.fail_after(self._lim.write_timeout_s):
                        await stream.send_all(data)  # after what a direct write left unsent
                except BaseException:
                    self.stats.dropped += n  # the batch's fate is unknown; the stream is broken
                    raise
                self.stats.sent += n
                self.stats.last_sent = trio.current_time()
        finally:
            self._failed = None
            self.stats.dropped += self._unflushed
            self._unflushed = 0

    def _drain(self, out: list[bytes]) -> int:
        """Move queued messages into `out` as frames (priority lane first), up to the batch
        limit; returns how many Raft messages were taken."""
        size, n = sum(map(len, out)), 0
        for lane in (self._prio, self._bulk):
            while lane and size < self._lim.max_batch_bytes:
                msg = lane.popleft()
                frame = raft_frame(self._next_id(), msg)
                if len(frame) - 4 > self._lim.max_frame:
                    # The receiver would close the connection on it: never send it.
                    self.stats.dropped += 1
                    log.warning("peer link %s: dropped a %s of %d bytes (limit %d)",
                                self.peer_id, msg.KIND, len(frame), self._lim.max_frame)
                    continue
                out.append(frame)
                size += len(frame)
                n += 1
        return n

    def _next_id(self) -> int:
        self._frame_id = self._frame_id % (2**62) + 1
        return self._frame_id

    @staticmethod
    async def _close(stream: TLSStream) -> None:
        with trio.move_on_after(1) as cs:
            cs.shield = True
            await trio.aclose_forcefully(stream)


def refused(e: BaseException) -> bool:
    """Whether a dial failed only because the address refused it (ECONNREFUSED on every address
    tried: trio.open_tcp_stream reports them as the cause of one OSError). A dropped or timed
    out dial proves nothing about the peer's process: a partition or a pause looks like that."""
    if isinstance(e, ConnectionRefusedError):
        return True
    cause = e.__cause__
    if isinstance(cause, BaseExceptionGroup):
        return all(isinstance(x, ConnectionRefusedError) for x in cause.exceptions)
    return isinstance(cause, ConnectionRefusedError)
