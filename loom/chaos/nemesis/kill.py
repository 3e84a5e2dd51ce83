"""kill -9 of the leader, of a follower, or of a majority; healing restarts them on their data."""

from __future__ import annotations

import random

from loom.chaos.cluster import ChaosCluster
from loom.chaos.nemesis import Nemesis


class KillNemesis(Nemesis):
    name = "kill"

    def __init__(self, cluster: ChaosCluster, rng: random.Random) -> None:
        super().__init__(cluster, rng)
        self.killed: list[str] = []

    async def inject(self) -> str | None:
        live = self.cluster.live()
        if not live:
            return None
        shape = self.rng.choice(("leader", "follower", "majority"))
        leader = await self.cluster.leader()
        if shape == "leader" and leader is not None:
            targets = [leader]
        elif shape == "majority":
            targets = self.rng.sample(live, min(len(live), len(self.cluster.members) // 2 + 1))
        else:
            shape = "follower"
            followers = [n for n in live if n != leader]
            if not followers:
                return None
            targets = [self.rng.choice(followers)]
        for nid in targets:
            await self.cluster.kill(nid)
            self.killed.append(nid)
        return f"kill-{shape}"

    async def heal(self) -> None:
        for nid in self.killed:
            if nid in self.cluster.members:
                await self.cluster.start(nid)
        self.killed.clear()
