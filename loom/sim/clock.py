"""Simulated node clocks: a per-node offset and rate, rate changes and forward jumps.

A node's local time is `offset + (integral of its rate over real time) + its jumps`; the
node ticks each time its local time crosses an integer, so the offset is the phase of its
ticks against the other nodes', the rate is its drift and a jump is a burst of ticks at once.
A paused process keeps its clock running (the driver gives the core the ticks it missed on
resume), as loomd's driver does with the monotonic clock; only a clock fault moves it
otherwise. Clocks never run backwards: a monotonic clock cannot.

What the lease assumes, and how much skew the simulator may therefore give a cluster that
serves lease reads (`lease_drift_bound`): a round acknowledged by a majority, sent at the
leader's tick s, holds the lease until its tick `s + L` with `L = election_tick_min -
lease_drift_ticks`; each acknowledging voter received that round no earlier than the leader's
tick s and refuses other candidates until `election_tick_min` of its own ticks have passed,
the first of which may come at once: at least `election_tick_min - 1` whole tick periods.
With every rate within `1 +- d`, L leader ticks last at most `L / (1 - d)` and the voter's
protection at least `(election_tick_min - 1) / (1 + d)`, so the lease is safe while
`(1 + d) / (1 - d) <= (election_tick_min - 1) / L`: for the defaults (10 and 2), the
fastest clock may run at most 9/8 as fast as the slowest, each within +-1/17 (5.9%) of true
time. Forward jumps on a leader only shorten its own lease and are allowed; a jump on any
other node, or a rate outside the bound, is unbounded skew, which only a cluster with lease
reads off (ReadIndex, which assumes nothing of clocks) may meet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def lease_drift_bound(election_tick_min: int, lease_drift_ticks: int) -> float:
    """The largest d such that lease reads are safe with every clock rate in `1 +- d`."""
    ratio = (election_tick_min - 1) / (election_tick_min - lease_drift_ticks)
    return (ratio - 1) / (ratio + 1)


@dataclass
class SimClock:
    """One node's clock (it survives the node's crashes: the machine's clock goes on).

    Ticks are counted, not derived from rounding local time, so floating-point error can
    neither skip a tick nor fire one twice: `_next` is the local time of the next tick."""

    rate: float
    offset: float = 0.0  # local time at real time 0: the phase of the node's ticks
    _real: float = 0.0  # real time of the last rate change or jump
    _local: float = math.nan  # local time then
    _next: int = 0
    jumped: float = 0.0  # total forward jumps, for the statistics

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError("a clock's rate must be positive")
        self._local = self.offset
        self._next = math.floor(self.offset) + 1

    def local(self, now: float) -> float:
        return self._local + (now - self._real) * self.rate

    def due(self) -> float:
        """Real time of the next tick."""
        return self._real + (self._next - self._local) / self.rate

    def ticked(self) -> float:
        """The tick that was due has fired: returns when the next one is due."""
        self._next += 1
        return self.due()

    def resync(self, now: float) -> float:
        """Skip the ticks that fell while no process listened (it was down); returns when
        the next one is due."""
        self._next = max(self._next, math.floor(self.local(now)) + 1)
        return self.due()

    def set_rate(self, now: float, rate: float) -> None:
        if not rate > 0:
            raise ValueError("a clock's rate must be positive")
        self._local, self._real, self.rate = self.local(now), now, rate

    def jump(self, now: float, by: float) -> int:
        """Move local time forward by `by`; returns the ticks crossed (due at once)."""
        if by < 0:
            raise ValueError("a monotonic clock does not run backwards")
        self._local, self._real = self.local(now) + by, now
        self.jumped += by
        crossed = max(0, math.floor(self._local) - self._next + 1)
        self._next += crossed
        return crossed
