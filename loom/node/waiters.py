"""Everyone waiting for the Raft driver, and the one rule that answers each of them once.

A `Waiter` is one caller (a write, a linearizable read, an admin request) with a callback and a
deadline. `Waiters` holds them where the driver looks them up:

- proposals by log index (answered when the entry at that index is applied here; an entry of
  another term at that index means another leader's entry won the slot: UNAVAILABLE, safe to
  retry);
- reads: pending (not yet asked for a ReadIndex), asked (by request context, with the term
  and tick it was asked in), ready (by read index, served once the applied index reaches
  it). A follower's request, or the leader's answer, can be lost (a link down, a full lane)
  or can never come (the core drops an answer from an older term): `ask_again` puts the
  reads of a request asked in an earlier term, or unanswered for a while, back in pending,
  so a lost message costs a read a retry instead of its deadline;
- every waiter, in submission order, in one deadline queue per timeout, so deadlines are
  non-decreasing and `expire` fails the overdue ones from the front (TIMEOUT: the outcome is
  unknown). The ticker calls it, not the driver, so callers hear TIMEOUT even while the
  driver waits on a slow or full disk;
- the structures waiting operations watch (`changed_event`), woken after the applies that
  changed them.

Invariant: a waiter's callback runs exactly once (resolve/fail after the first are no-ops), and
a caller's exception in it is logged, never propagated into the driver.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import NamedTuple

import trio

from loom.node.replicator import OnDone
from loom.state.command import Command, Outcome
from loom.state.machine import StateMachine
from loom.wire import errors as E

log = logging.getLogger("loom.raft")

StructureId = tuple[str, str]


class Waiter:
    """One caller waiting for the driver. Its callback runs exactly once: whichever of
    resolve/fail comes first wins, the rest are no-ops."""

    __slots__ = ("cmd", "deadline", "on_done", "term", "what")

    def __init__(self, cmd: Command | None, on_done: OnDone, deadline: float, what: str) -> None:
        self.cmd = cmd
        self.on_done: OnDone | None = on_done
        self.deadline = deadline  # trio time; `Waiters.expire` fails it with TIMEOUT after this
        self.what = what
        self.term = 0  # the term its entry was proposed in (proposals only)

    def resolve(self, outcome: Outcome) -> None:
        self._call(outcome, None)

    def fail(self, err: E.LoomError) -> None:
        self._call(None, err)

    def _call(self, outcome: Outcome | None, err: E.LoomError | None) -> None:
        cb = self.on_done
        if cb is None:
            return
        self.on_done = None
        try:
            cb(outcome, err)
        except Exception:  # a caller's bug must never stop the driver that called it
            log.exception("error in the completion of %s", self.what)


def fail_all(waiters: Iterable[Waiter], err: E.LoomError) -> None:
    for w in waiters:
        w.fail(err)


class Asked(NamedTuple):
    """A ReadIndex request on its way: when it was sent, and the reads it answers."""

    term: int
    tick: int  # the core's tick count
    reads: list[Waiter]


class Waiters:
    def __init__(self, write_timeout_s: float, read_timeout_s: float) -> None:
        self.write_timeout_s = write_timeout_s
        self.read_timeout_s = read_timeout_s
        self.proposals: dict[int, Waiter] = {}  # log index -> the write proposed there
        self.pending_reads: list[Waiter] = []  # joined the next ReadIndex request
        self.asked: dict[bytes, Asked] = {}  # ReadIndex context -> the request
        self.ready: list[tuple[int, list[Waiter]]] = []  # (read index, reads) to serve
        self._writes: deque[Waiter] = deque()  # deadline order (completed ones skipped)
        self._reads: deque[Waiter] = deque()
        self._events: dict[StructureId, trio.Event] = {}

    # -- submission (in the caller's task) ------------------------------------------------
    # A waiter joins its deadline queue only once the driver's inbox took it: one refused at
    # the door (BUSY, UNAVAILABLE) was answered by that exception and must never time out too.
    def write(self, cmd: Command | None, on_done: OnDone, what: str) -> Waiter:
        return Waiter(cmd, on_done, trio.current_time() + self.write_timeout_s, what)

    def read(self, cmd: Command, on_done: OnDone) -> Waiter:
        return Waiter(cmd, on_done, trio.current_time() + self.read_timeout_s,
                      f"the read {cmd.op}")

    def write_started(self, w: Waiter) -> None:
        self._writes.append(w)

    def read_started(self, w: Waiter) -> None:
        self._reads.append(w)

    def changed_event(self, structure: StructureId) -> trio.Event:
        ev = self._events.get(structure)
        if ev is None:
            ev = self._events[structure] = trio.Event()
        return ev

    # -- the driver -------------------------------------------------------------------------
    def applied(self, index: int, term: int) -> Waiter | None:
        """The write waiting for the entry just applied at `index`, if it is that entry."""
        w = self.proposals.pop(index, None)
        if w is not None and w.term != term:
            w.fail(E.Unavailable("leadership changed before the write committed; it was not "
                                 "applied (safe to retry)"))
            return None
        return w

    def wake(self, structures: Iterable[StructureId]) -> None:
        events = self._events
        for sid in structures:
            ev = events.pop(sid, None)
            if ev is not None:
                ev.set()

    def ask(self, ctx: bytes, term: int, tick: int, reads: list[Waiter]) -> None:
        self.asked[ctx] = Asked(term, tick, reads)

    def read_state(self, ctx: bytes, index: int) -> None:
        asked = self.asked.pop(ctx, None)
        if asked is not None:
            self.ready.append((index, asked.reads))

    def ask_again(self, term: int, tick: int, patience: int | None) -> None:
        """Forget every request asked in another term (the core drops an answer from an older
        one) or, unless `patience` is None (a leader's own reads wait in its core, which
        answers or fails each), at least `patience` ticks ago (the request or its answer was
        lost); put its reads still waiting back in front of pending, to join the next request.
        A ReadIndex taken after a read arrived is as good as the first, and only the newest
        request of a read can serve it. Bounded: a read is asked at most once per `patience`
        ticks (and once per term), until its deadline."""
        again: list[Waiter] = []
        for ctx, a in list(self.asked.items()):
            if a.term != term or (patience is not None and tick - a.tick >= patience):
                del self.asked[ctx]
                again += (w for w in a.reads if w.on_done is not None)
        if again:
            self.pending_reads[:0] = again

    def serve_reads(self, applied: int, sm: StateMachine) -> None:
        """Answer every read whose read index the applied index has reached."""
        if not self.ready:
            return
        still = []
        for index, batch in self.ready:
            if index > applied:
                still.append((index, batch))
                continue
            for w in batch:
                assert w.cmd is not None
                w.resolve(sm.read(w.cmd))
        self.ready = still

    def leadership_lost(self, not_leader: E.NotLeader) -> None:
        """Writes proposed here may still commit under the next leader, or be overwritten:
        their outcome is unknown now, and saying so at once beats a silent timeout. Reads
        not served yet cannot be served by a former leader."""
        fail_all(self.proposals.values(), E.Timeout(
            "leadership was lost before the write committed; it may or may not be applied"))
        for asked in self.asked.values():
            fail_all(asked.reads, not_leader)
        self.asked.clear()
        for _, batch in self.ready:
            fail_all(batch, not_leader)
        self.ready = []

    def expire(self, now: float) -> None:
        for dq, timeout_s in ((self._writes, self.write_timeout_s),
                              (self._reads, self.read_timeout_s)):
            while dq and (dq[0].on_done is None or dq[0].deadline <= now):
                w = dq.popleft()
                if w.on_done is not None:
                    w.fail(E.Timeout(f"{w.what} did not complete within {timeout_s:g} s; "
                                     "its outcome is unknown"))

    def stop(self) -> None:
        """The driver stopped. A write proposed here is in this node's log and perhaps in
        others': a later leader may still commit it, so its outcome is unknown (TIMEOUT, which
        clients report as indeterminate). Every other request was never proposed: UNAVAILABLE,
        not executed, safe to send again."""
        fail_all(self.proposals.values(), E.Timeout(
            "the node stopped before the write committed; it may or may not be applied"))
        self.proposals.clear()
        stopping = E.Unavailable("the node stopped before this request completed")
        for dq in (self._writes, self._reads):
            while dq:
                dq.popleft().fail(stopping)


async def completion(start: Callable[[OnDone], None]) -> Outcome:
    """Await what `start` submits with a callback (the task-per-request form)."""
    done = trio.Event()
    box: list[tuple[Outcome | None, E.LoomError | None]] = []

    def on_done(out: Outcome | None, err: E.LoomError | None) -> None:
        box.append((out, err))
        done.set()

    start(on_done)
    await done.wait()
    out, err = box[0]
    if err is not None:
        raise err
    assert out is not None
    return out
