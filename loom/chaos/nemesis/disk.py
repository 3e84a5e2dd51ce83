"""Disk faults through the node's test-only storage hook (loom/node/testhooks.py): a member is
restarted on its data with every fsync slowed by 5-50 ms, or with fsync failing from the Nth
call on. A node whose fsync fails must stop (the storage cannot promise durability any more)
rather than acknowledge what it could not make durable: its exit is expected and counted as
`disk-fail-stopped`; whether it lied is what the workloads' checkers see. Healing restarts it
with a healthy disk.
"""

from __future__ import annotations

import random

from loom.chaos.cluster import ChaosCluster
from loom.chaos.nemesis import Nemesis


class DiskNemesis(Nemesis):
    name = "disk"

    def __init__(self, cluster: ChaosCluster, rng: random.Random) -> None:
        super().__init__(cluster, rng)
        self.hooked: list[str] = []
        self.failing = False

    async def inject(self) -> str | None:
        live = self.cluster.live()
        if not live:
            return None
        target = self.rng.choice(live)
        self.failing = self.rng.random() < 0.5
        if self.failing:
            hooks = {"fsync_fail_after": self.rng.randint(8, 40)}
        else:
            hooks = {"fsync_delay_ms": self.rng.randint(5, 50)}
        await self.cluster.kill(target)
        await self.cluster.start(target, hooks)
        if self.failing:
            self.cluster.expect_exit.add(target)  # until its next start
        self.hooked.append(target)
        return "disk-fsync-fail" if self.failing else "disk-fsync-slow"

    async def heal(self) -> None:
        for nid in self.hooked:
            n = self.cluster.nodes[nid]
            if self.failing:
                stopped = n.proc is not None and n.proc.returncode is not None
                self.outcomes["disk-fail-stopped" if stopped else "disk-fail-not-reached"] += 1
            if nid in self.cluster.members:
                await self.cluster.kill(nid)
                await self.cluster.start(nid)
        self.hooked.clear()
