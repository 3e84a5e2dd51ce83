"""Disk faults through the node's test-only storage hook (loom/node/testhooks.py): a member is
restarted on its data with every fsync slowed by 5-50 ms, or with fsync failing from the Nth
call on. A node whose fsync fails must stop (the storage cannot promise durability any more)
rather than acknowledge what it could not make durable: its exit is expected and counted as
`disk-fail-stopped`; whether it lied is what the workloads' checkers see. Healing restarts it
with a healthy disk. `PowerLossNemesis` ("power") cuts the power of a majority or of all.
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


class PowerLossNemesis(Nemesis):
    """Power loss: a majority of the members, or all of them, are restarted with the node's
    `power_loss` storage hook (what a node writes stays in its memory until it is fsynced), run
    under the workloads for the hold time, then lose power together: SIGKILLed at once, so each
    keeps on disk exactly what it fsynced. Healing starts them again with a healthy disk.
    Every acknowledged write was fsynced by a majority before it was acknowledged, so nothing
    acknowledged may be lost; a node that acknowledges before its fsync (the `ack_before_fsync`
    mutant) loses acknowledged writes here and the workloads' checkers see it."""

    name = "power"

    def __init__(self, cluster: ChaosCluster, rng: random.Random) -> None:
        super().__init__(cluster, rng)
        self.hooked: list[str] = []

    async def inject(self) -> str | None:
        members = list(self.cluster.members)
        live = self.cluster.live()
        if len(live) < len(members):
            return None  # a cut of every member only means something if they all run
        every = self.rng.random() < 0.5
        targets = members if every else self.rng.sample(members, len(members) // 2 + 1)
        for nid in targets:
            await self.cluster.kill(nid)
            await self.cluster.start(nid, {"power_loss": True})
        self.hooked = targets
        return "power-loss-all" if every else "power-loss-majority"

    async def heal(self) -> None:
        if not self.hooked:
            return
        await self.cluster.kill_all(self.hooked)
        for nid in self.hooked:
            if nid in self.cluster.members:
                await self.cluster.start(nid)
        self.hooked = []
