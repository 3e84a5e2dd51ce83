"""A follower's linearizable reads (`RaftDriver` as n1 of three, in-process): each asks the
leader for a ReadIndex, and a request that gets no answer is asked again, so a lost message
or a change of leader costs the read a retry, not its deadline.

The peer links are a recorder: what the driver sends is kept, and the test plays the leader by
stepping messages into the driver as the links would. A message the test never delivers is one
the network lost."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import trio

from loom.node.config import RaftSettings
from loom.node.raftdriver import RaftDriver, prepare_storage
from loom.node.replicator import OnDone
from loom.raft import messages as m
from loom.state.command import Command, Outcome
from loom.storage.faultfs import FaultFS
from loom.storage.storage import Storage, StorageOptions
from loom.wire import errors as E

Answers = list[tuple[Outcome | None, E.LoomError | None]]
M = TypeVar("M", bound=m.Message)

# 10 ms ticks: an unanswered request is asked again after election_ticks_min ticks (1 s); a
# read gets 5 s. Nobody campaigns: the test's heartbeats keep n1 a follower.
SETTINGS = RaftSettings(tick_ms=10, election_ticks_min=100, election_ticks_max=150,
                        read_timeout_s=5.0)
COMMIT = 3  # the founders' three configuration entries


class Links:
    """The driver's peer transport, recorded (the calls `RaftDriver` makes on it)."""

    def __init__(self) -> None:
        self.sent: list[m.Message] = []

    def send(self, msgs: list[m.Message]) -> None:
        self.sent.extend(msgs)

    def set_peers(self, peers: dict[str, str]) -> None:
        pass

    def set_vouch(self, vouch: object) -> None:
        pass

    def client_addr_of(self, node: str) -> str | None:
        return None

    def reachable(self, node: str) -> bool:
        return True

    def sent_of(self, kind: type[M]) -> list[M]:
        return [msg for msg in self.sent if isinstance(msg, kind)]


def follower() -> tuple[RaftDriver, Links]:
    storage, recovered = Storage.open("/data", StorageOptions(
        segment_size=64 * 1024, max_record_size=16 * 1024, snapshot_chunk_size=4096,
        fs=FaultFS(1), preallocate=False))
    recovered = prepare_storage(storage, recovered, ["n1", "n2", "n3"])
    log = RaftDriver(SETTINGS, storage, recovered, node_id="n1", client_addr="127.0.0.1:1",
                     inbox=64, member_addrs={})
    links = Links()
    log.transport = links
    return log, links


def recorder(answers: Answers) -> OnDone:
    def on_done(out: Outcome | None, err: E.LoomError | None) -> None:
        answers.append((out, err))
    return on_done


async def until(cond: Callable[[], bool], what: str, heartbeat: Callable[[], None],
                timeout: float = 0.5) -> None:
    """Wait (at most `timeout` s, leader heartbeats every 50 ms) until `cond` holds."""
    with trio.move_on_after(timeout):
        while not cond():
            heartbeat()
            await trio.sleep(0.05)
    assert cond(), what


def heartbeats(log: RaftDriver, leader: str, term: int) -> Callable[[], None]:
    seq = iter(range(1, 1_000_000))
    return lambda: log.on_peer_message(m.Heartbeat("n1", leader, term, COMMIT, next(seq)))


async def read_asked(log: RaftDriver, links: Links, answers: Answers,
                     beat: Callable[[], None]) -> m.ReadIndex:
    """Submit a read on n1 once it follows a leader; the ReadIndex request it sent."""
    await until(lambda: log.leader is not None, "n1 follows no leader", beat)
    log.submit(Command("MAP_GET", {"name": "m", "key": "k"}, 1_000), read=True,
               on_done=recorder(answers))
    await until(lambda: bool(links.sent_of(m.ReadIndex)), "no ReadIndex was sent", beat)
    return links.sent_of(m.ReadIndex)[-1]


async def test_a_read_index_request_lost_on_the_way_is_asked_again() -> None:
    log, links = follower()
    answers: Answers = []
    beat = heartbeats(log, "n2", 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        first = await read_asked(log, links, answers, beat)
        assert (first.to, first.term) == ("n2", 1)
        # The request never reaches n2 (a link down, a full lane): n1 asks again.
        await until(lambda: len(links.sent_of(m.ReadIndex)) > 1, "the read was not asked "
                    "again", beat, timeout=3)
        again = links.sent_of(m.ReadIndex)[-1]
        assert again.ctx != first.ctx and (again.to, again.term) == ("n2", 1)
        assert not answers
        log.on_peer_message(m.ReadIndexResponse("n1", "n2", 1, first.ctx, COMMIT))  # late
        log.on_peer_message(m.ReadIndexResponse("n1", "n2", 1, again.ctx, COMMIT))
        await until(lambda: bool(answers), "the read was not served", beat)
        assert answers == [(Outcome.ok(None), None)]  # served once, by one answer
        log.stop()


async def test_a_read_asked_of_a_deposed_leader_is_asked_of_the_next_one() -> None:
    """An answer from an older term is dropped by the core, so a request asked of the old
    leader can never be answered once n1 follows a newer one: asked again at once, of it."""
    log, links = follower()
    answers: Answers = []
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        first = await read_asked(log, links, answers, heartbeats(log, "n2", 1))
        beat = heartbeats(log, "n3", 2)  # n3 won term 2; n1 hears it well within 1 s
        await until(lambda: links.sent_of(m.ReadIndex)[-1].to == "n3",
                    "the read was not asked of the new leader", beat)
        again = links.sent_of(m.ReadIndex)[-1]
        assert again.term == 2 and again.ctx != first.ctx
        log.on_peer_message(m.ReadIndexResponse("n1", "n3", 2, again.ctx, COMMIT))
        await until(lambda: bool(answers), "the read was not served", beat)
        assert answers == [(Outcome.ok(None), None)]
        log.stop()


async def test_a_follower_that_wakes_from_a_stall_to_its_leaders_heartbeat_stays_a_follower(
        ) -> None:
    """A stall (here the event loop itself blocked for 2 s, as a SIGSTOP or a stalled VM would
    hold the process) longer than the election timeout, with the leader's heartbeat waiting
    when it ends: n1 reads it first and does not campaign on the stall's ticks, so its reads
    are served, not refused with NOT_LEADER."""
    log, links = follower()
    answers: Answers = []
    beat = heartbeats(log, "n2", 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        await until(lambda: log.leader == "n2", "n1 follows no leader", beat)
        beat()  # waiting in the inbox when the stall ends
        time.sleep(2.0)  # the stall: nothing runs, the clock goes on
        await trio.sleep(0.05)
        assert links.sent_of(m.PreVote) == [] and log.leader == "n2"
        first = await read_asked(log, links, answers, beat)
        log.on_peer_message(m.ReadIndexResponse("n1", "n2", 1, first.ctx, COMMIT))
        await until(lambda: bool(answers), "the read was not served", beat)
        assert answers == [(Outcome.ok(None), None)]
        log.stop()
