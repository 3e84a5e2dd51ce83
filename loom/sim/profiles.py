"""What one seed runs: its profile, drawn from the seed, never from the planted bug.

The share of each profile is fixed by the seed's last digit, so that any 200 consecutive
seeds hold 20 of each special profile (the mutation check counts on it: every planted bug
is caught within 200 seeds from any start, tests/sim/test_sim.py):

  ...5  rejoin   founders are removed, wiped and readmitted under their old names
  ...2  lease    lease reads on, clocks at the edge of the drift bound, leaders isolated
  ...7  lease    (twice as many: a stale lease read needs a leader cut off at the right time)
  ...9  skew     lease reads off, clocks far beyond the bound: rates, stalls and jumps
  else  figure 8 (a quarter of the rest, drawn) or the general mix

Every profile keeps the core's assumptions: clock rates within `loom.sim.clock`'s bound
whenever lease reads are on (`Simulation` refuses anything else unless told it is a test of
the bound itself), and beyond it only where reads go through ReadIndex.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from loom.sim.clock import lease_drift_bound

ELECTION_TICK_MIN, LEASE_DRIFT_TICKS = 10, 2  # the simulated cores' (Simulation._cfg)
LEASE_DRIFT = lease_drift_bound(ELECTION_TICK_MIN, LEASE_DRIFT_TICKS)  # 1/17
REJOIN_EVERY = 10  # seeds k*10+5 run the "rejoin" profile
LEASE_DIGITS = (2, 7)
SKEW_DIGIT = 9
ELECTIONS_DIGIT = 0
NEMESES = ("partition", "crash", "pause", "clock", "transfer", "membership")
# weights of the nemeses in the general mix (one is drawn every `nemesis_every` ticks)
GENERAL_MIX = (30.0, 15.0, 10.0, 7.0, 18.0, 20.0)


@dataclass
class SimParams:
    """What one seed runs; drawn from the seed, overridable for tests."""

    profile: str = "general"
    nodes: int = 3
    duration: float = 240.0  # ticks of nemesis + workload, then a quiet period
    quiet: float = 40.0
    clients: int = 3
    keys: int = 3
    read_ratio: float = 0.45  # share of client operations that are reads
    op_timeout: float = 30.0  # a client gives up on an operation after this many ticks
    loss: float = 0.02
    dup: float = 0.02
    delay_max: float = 0.5
    lease_reads: bool = False
    drift: float = 0.04  # every clock rate stays within 1 +- drift (loom.sim.clock)
    stall_p: float = 0.0  # chance a clock rate change is a stall (a clock that barely moves)
    max_entries_per_append: int = 8
    snapshot_every: int = 25
    trailing_entries: int = 5
    crash_ready_p: float = 0.002
    crash_vote_p: float = 0.0  # extra crash chance right after a term/vote change
    vote_crash_p: float = 0.0  # chance a voter crashes right after its vote has left
    isolate_winner_p: float = 0.0  # chance a new leader is cut off before its first append
    vote_retry_p: float = 0.0  # chance a RequestVote is sent again 1-6 ticks later
    quick_restart_p: float = 0.5  # chance a crashed node restarts within 3 ticks (else 3-30)
    crash_commit_p: float = 0.0  # extra crash chance when a leader's commit advances
    leader_chaos: float = 0.0  # chance a new leader is crashed or isolated right away
    crash_win_p: float = 0.0  # chance a new leader crashes after persisting its first entry,
    #                           before sending it: a stranded entry of a newer term
    pre_vote: bool = True
    election_tick_max: int = 20  # timeouts drawn from [ELECTION_TICK_MIN, this): narrow, split
    nemesis_every: float = 15.0
    nemeses: tuple[float, ...] = GENERAL_MIX  # weights, in the order of NEMESES
    partitions: tuple[str, ...] = ()  # shapes to draw from (empty: all of them)
    mutant: str | None = None
    disk: str = "sim"  # "sim": SimDisk; "wal": loom.storage.Storage over FaultFS
    sync_fail_rate: float = 0.0  # wal only: chance an fsync fails (the node fail-stops)
    slow_sync_rate: float = 0.0  # wal only: chance an fsync is slow (holds back sends)
    rejoin: bool = False  # aim at a wiped node readmitted under its old name (see from_seed)

    def __post_init__(self) -> None:
        if len(self.nemeses) != len(NEMESES) or min(self.nemeses) < 0:
            raise ValueError(f"nemeses: one non-negative weight for each of {NEMESES}")
        if not 0 <= self.drift < 1:
            raise ValueError("drift must be in [0, 1)")

    @staticmethod
    def from_seed(seed: int, rng: random.Random, mutant: str | None) -> SimParams:
        digit = seed % REJOIN_EVERY
        if digit == REJOIN_EVERY // 2:
            return _rejoin(rng, mutant)
        if digit in LEASE_DIGITS:
            return _lease(rng, mutant)
        if digit == SKEW_DIGIT:
            return _skew(rng, mutant)
        if digit == ELECTIONS_DIGIT:
            return _elections(rng, mutant)
        if rng.random() < 0.25:
            return _figure8(rng, mutant)
        return _general(rng, mutant)


def _rejoin(rng: random.Random, mutant: str | None) -> SimParams:
    # Founders are removed, wiped and readmitted under their old names (n1 first: the
    # bootstrap's first entry makes it the only voter), the leader crashes while it replays
    # the log's first entries to the empty node, and that node's clock jumps: a node that
    # counted itself before catching up would elect itself from a stale prefix
    # (loom.raft.core, "joining"). Membership changes dominate the nemeses.
    return SimParams(
        profile="rejoin", nodes=5, max_entries_per_append=rng.choice((1, 1, 4)),
        snapshot_every=1000, nemesis_every=rng.choice((4.0, 6.0)), rejoin=True,
        pre_vote=rng.random() < 0.5, nemeses=(5.0, 5.0, 5.0, 5.0, 15.0, 65.0), mutant=mutant,
    )


def _lease(rng: random.Random, mutant: str | None) -> SimParams:
    # Lease reads with clocks at the edge of the bound the lease assumes (rates drawn from
    # its extremes, changed now and then within it), leaders cut off from the majority
    # while read-heavy clients keep asking them: a leader that served a lease past its
    # expiry would answer a read the new majority has already overtaken.
    return SimParams(
        profile="lease", nodes=rng.choice((3, 5)), lease_reads=True, drift=LEASE_DRIFT,
        clients=5, read_ratio=0.8, op_timeout=8.0, loss=rng.choice((0.0, 0.01)),
        delay_max=rng.choice((0.2, 0.5)), pre_vote=rng.random() < 0.5,
        max_entries_per_append=rng.choice((4, 64)), snapshot_every=rng.choice((25, 1000)),
        nemesis_every=rng.choice((8.0, 12.0)), nemeses=(60.0, 5.0, 10.0, 15.0, 10.0, 0.0),
        partitions=("isolate_leader", "isolate_leader", "halves", "bridge"),
        leader_chaos=rng.choice((0.0, 0.3)), mutant=mutant,
    )


def _skew(rng: random.Random, mutant: str | None) -> SimParams:
    # Lease reads off and clocks far outside the bound: rates from half to one and a half
    # times true time, stalls and forward jumps on any node. ReadIndex assumes nothing of
    # clocks, so histories must stay linearizable.
    return SimParams(
        profile="skew", nodes=rng.choice((3, 5)), drift=rng.choice((0.25, 0.5)),
        stall_p=0.3, read_ratio=0.6, loss=rng.choice((0.0, 0.02)),
        delay_max=rng.choice((0.2, 0.5, 1.5)), pre_vote=rng.random() < 0.5,
        nemesis_every=rng.choice((8.0, 15.0)), nemeses=(25.0, 10.0, 10.0, 35.0, 10.0, 10.0),
        mutant=mutant,
    )


def _elections(rng: random.Random, mutant: str | None) -> SimParams:
    # Contested elections: narrow election timeouts (split votes), candidates that retry
    # their vote requests, voters that crash right after their vote left and come back at
    # once, and new leaders cut off before their first append leaves, so a rival candidate
    # of the same term is still campaigning when the voter hears its request again. A voter
    # that forgot its vote would elect a second leader in that term.
    return SimParams(
        profile="elections", nodes=rng.choice((3, 3, 5)), election_tick_max=12,
        pre_vote=rng.random() < 0.3, vote_retry_p=0.8, vote_crash_p=0.8,
        isolate_winner_p=0.8, quick_restart_p=0.9, crash_ready_p=0.03,
        delay_max=rng.choice((0.2, 0.5)),
        loss=rng.choice((0.0, 0.02)), nemesis_every=rng.choice((8.0, 15.0)),
        nemeses=(30.0, 30.0, 10.0, 10.0, 20.0, 0.0), mutant=mutant,
    )


def _figure8(rng: random.Random, mutant: str | None) -> SimParams:
    # five nodes, one entry per append, leaders crash right after committing, and right
    # after winning with their first entry durable but unsent, so logs with entries of
    # newer, unreplicated terms compete with older ones
    lease = rng.random() < 0.3
    return SimParams(
        profile="figure8", nodes=5, max_entries_per_append=1, crash_commit_p=0.3,
        crash_win_p=0.8, loss=rng.choice((0.0, 0.02)), delay_max=rng.choice((0.2, 0.5)),
        lease_reads=lease, drift=LEASE_DRIFT if lease else 0.04,
        pre_vote=rng.random() < 0.5, snapshot_every=rng.choice((25, 1000)), mutant=mutant,
    )


def _general(rng: random.Random, mutant: str | None) -> SimParams:
    return SimParams(
        nodes=rng.choice((3, 3, 5)),
        loss=rng.choice((0.0, 0.01, 0.05)),
        dup=rng.choice((0.0, 0.02)),
        delay_max=rng.choice((0.2, 0.5, 1.5)),
        lease_reads=rng.random() < 0.4,
        max_entries_per_append=rng.choice((1, 4, 64)),
        snapshot_every=rng.choice((10, 25, 1000)),
        trailing_entries=rng.choice((0, 5, 50)),
        crash_ready_p=rng.choice((0.0, 0.002, 0.01)),
        crash_vote_p=rng.choice((0.0, 0.0, 0.1, 0.3)),
        leader_chaos=rng.choice((0.0, 0.0, 0.3, 0.6)),
        pre_vote=rng.random() < 0.6,
        nemesis_every=rng.choice((8.0, 15.0, 30.0)),
        mutant=mutant,
    )
