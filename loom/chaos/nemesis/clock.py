"""Clock faults through the node's test-only hooks (loom/node/testhooks.py): a member (the
leader half of the time) is restarted on its data with its wall clock offset by up to ±5 s and
its monotonic clock and Raft ticks running at 0.93-1.07 times real speed; healing restarts it
with the true clock.

The rate stays inside what leases are built to tolerate (`lease_drift_ticks` 2 of
`election_ticks_min` 10 ticks: 20 %, with the tick rounding to whole milliseconds), so a stale
lease read under this nemesis is a bug, not a broken assumption. Offsets move the time the
leader stamps on proposals: TTLs, session expiry and lock leases must hold up against it.
"""

from __future__ import annotations

import random

from loom.chaos.cluster import ChaosCluster
from loom.chaos.nemesis import Nemesis

RATE = (0.93, 1.07)
OFFSET_MS = 5_000


class ClockNemesis(Nemesis):
    name = "clock"

    def __init__(self, cluster: ChaosCluster, rng: random.Random) -> None:
        super().__init__(cluster, rng)
        self.skewed: list[str] = []

    async def inject(self) -> str | None:
        live = self.cluster.live()
        leader = await self.cluster.leader()
        if not live:
            return None
        target = leader if leader is not None and self.rng.random() < 0.5 else \
            self.rng.choice(live)
        hooks = {"clock_offset_ms": self.rng.randint(-OFFSET_MS, OFFSET_MS),
                 "clock_rate": round(self.rng.uniform(*RATE), 3)}
        await self.cluster.kill(target)
        await self.cluster.start(target, hooks)
        self.skewed.append(target)
        return "clock-skew-leader" if target == leader else "clock-skew"

    async def heal(self) -> None:
        for nid in self.skewed:
            if nid in self.cluster.members:
                await self.cluster.kill(nid)
                await self.cluster.start(nid)
        self.skewed.clear()
