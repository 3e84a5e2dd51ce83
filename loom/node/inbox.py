"""The Raft driver's one input: a bounded channel of typed events, taken a turn at a time.

Everything reaches the driver task through here: ticks, peer messages, proposals, reads,
cluster administration, the bytes of a snapshot built in a child and a peer whose address
refused a dial. The channel holds
`limits.max_pending_proposals` events; when it is full
- a proposal, a read or an admin request is refused at the door (BUSY), so the caller hears
  it at once and nothing was started;
- a peer message is dropped and counted (Raft retries);
- a tick is dropped (the driver counts elapsed ticks from the clock on its next turn).
Before the driver runs and after it stopped, requests answer UNAVAILABLE.

A turn is the first event to arrive plus everything queued behind it (at most MAX_TURN), so a
burst of proposals becomes one Ready and one fsync (group commit).
"""

from __future__ import annotations

from typing import NamedTuple

import trio

from loom.node.membership import AdminRequest
from loom.node.waiters import Waiter
from loom.raft.messages import Message
from loom.wire import errors as E

MAX_TURN = 4096


class Tick(NamedTuple):
    """A tick elapsed (how many is read from the clock)."""


class PeerMessage(NamedTuple):
    msg: Message


class Propose(NamedTuple):
    waiter: Waiter  # its cmd is the write


class Read(NamedTuple):
    waiter: Waiter  # its cmd is the linearizable read


class Admin(NamedTuple):
    request: AdminRequest
    waiter: Waiter


class SnapshotBuilt(NamedTuple):
    at: int  # the log index it was taken at
    blob: bytes | None  # the child's report (snapshots.py); None: the child failed


class PeerGone(NamedTuple):
    peer: str  # its address refused a dial: its process is gone (RaftCore.peer_gone)


Event = Tick | PeerMessage | Propose | Read | Admin | SnapshotBuilt | PeerGone
TICK = Tick()


class Inbox:
    def __init__(self, size: int) -> None:
        self._send, self._recv = trio.open_memory_channel[Event](size)
        self.accepting = False  # requests are taken only while the driver runs
        self.dropped_messages = 0

    def put(self, evt: Propose | Read | Admin) -> None:
        """A caller's request; raises (and starts nothing) when it cannot be taken."""
        if not self.accepting:
            raise E.Unavailable("the node is not serving (starting or stopping)")
        try:
            self._send.send_nowait(evt)
        except trio.WouldBlock:
            raise E.Busy("the log driver is saturated; retry later", retry_after_ms=50) from None
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise E.Unavailable("the node is stopping") from None

    def put_message(self, msg: Message) -> None:
        try:
            self._send.send_nowait(PeerMessage(msg))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped_messages += 1  # Raft tolerates loss; the sender retries

    def put_gone(self, peer: str) -> None:
        try:
            self._send.send_nowait(PeerGone(peer))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # a busy driver: the election timeout still notices

    def put_tick(self) -> bool:
        """False once the driver is gone (the ticker stops)."""
        try:
            self._send.send_nowait(TICK)
        except trio.WouldBlock:
            pass  # the driver is busy; it catches up from the clock on its next turn
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    async def put_built(self, index: int, blob: bytes | None) -> None:
        try:
            await self._send.send(SnapshotBuilt(index, blob))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # stopping: the next start snapshots again

    async def turn(self) -> list[Event] | None:
        """The next turn's events, in arrival order; None once closed and drained."""
        try:
            batch = [await self._recv.receive()]
        except trio.EndOfChannel:
            return None
        receive = self._recv.receive_nowait
        for _ in range(MAX_TURN - 1):
            try:
                batch.append(receive())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        return batch

    def close(self) -> None:
        """No more events: the driver ends its loop once it took what is queued."""
        self.accepting = False
        self._send.close()

    def close_receiving(self) -> None:
        """The driver is gone: senders now fail at once instead of queueing."""
        self.accepting = False
        self._recv.close()
