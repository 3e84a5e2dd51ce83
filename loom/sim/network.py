"""The simulated network: per-message loss, duplication and delay (which reorders), and
directed link cuts for partitions. Partition shapes are built by `partition()`.

Delivery times come from the simulation's seeded Random; nothing here iterates a set in a
way that affects behaviour (blocked links are only tested for membership).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

PARTITIONS = ("halves", "majority_ring", "bridge", "isolate_leader", "asymmetric")


@dataclass
class SimNetwork:
    rng: random.Random
    loss: float = 0.0
    dup: float = 0.0
    delay_min: float = 0.05
    delay_max: float = 0.5
    blocked: set[tuple[str, str]] = field(default_factory=set)
    sent: int = 0
    dropped: int = 0

    def deliveries(self, frm: str, to: str, now: float) -> list[float]:
        """Times at which one message from `frm` to `to` arrives (possibly none or two)."""
        self.sent += 1
        if (frm, to) in self.blocked or self.rng.random() < self.loss:
            self.dropped += 1
            return []
        times = [now + self.rng.uniform(self.delay_min, self.delay_max)]
        if self.rng.random() < self.dup:
            times.append(now + self.rng.uniform(self.delay_min, 3 * self.delay_max))
        return times

    def heal(self) -> None:
        self.blocked.clear()

    def cut(self, a: str, b: str) -> None:
        self.blocked.add((a, b))
        self.blocked.add((b, a))


def partition(kind: str, nodes: list[str], leader: str | None,
              rng: random.Random) -> set[tuple[str, str]]:
    """Directed links to block for one partition shape over `nodes` (sorted)."""
    ns = list(nodes)
    rng.shuffle(ns)
    blocked: set[tuple[str, str]] = set()

    def cut(a: str, b: str) -> None:
        blocked.add((a, b))
        blocked.add((b, a))

    if kind == "halves":
        half = len(ns) // 2
        for a in ns[:half]:
            for b in ns[half:]:
                cut(a, b)
    elif kind == "majority_ring":
        # each node sees its ring neighbours only: everyone sees a majority (n <= 5), but no
        # two nodes see the same one
        n = len(ns)
        for i in range(n):
            for j in range(i + 1, n):
                if min(j - i, n - (j - i)) > 1:
                    cut(ns[i], ns[j])
    elif kind == "bridge":
        # two halves, one bridge node that sees both
        bridge, rest = ns[0], ns[1:]
        half = len(rest) // 2
        for a in rest[:half]:
            for b in rest[half:]:
                cut(a, b)
        del bridge
    elif kind == "isolate_leader":
        victim = leader if leader in ns else ns[0]
        for b in ns:
            if b != victim:
                cut(victim, b)
    elif kind == "asymmetric":
        victim = ns[0]
        for b in ns[1:]:
            if rng.random() < 0.5:
                blocked.add((victim, b))  # victim can hear but not be heard
            else:
                blocked.add((b, victim))
    else:
        raise ValueError(f"unknown partition {kind!r}")
    return blocked
