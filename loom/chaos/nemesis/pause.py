"""SIGSTOP / SIGCONT: the leader (held past the election timeout) or followers.

The scheduler holds every fault at least a second, well past the run's election timeout
(cluster.ELECTION_TIMEOUT_S), so a paused leader is deposed while it sleeps and wakes up
believing it still leads: the case leases and fencing must survive.
"""

from __future__ import annotations

import random

from loom.chaos.cluster import ChaosCluster
from loom.chaos.nemesis import Nemesis


class PauseNemesis(Nemesis):
    name = "pause"

    def __init__(self, cluster: ChaosCluster, rng: random.Random) -> None:
        super().__init__(cluster, rng)
        self.paused: list[str] = []

    async def inject(self) -> str | None:
        live = self.cluster.live()
        leader = await self.cluster.leader()
        if self.rng.random() < 0.5 and leader is not None:
            targets, kind = [leader], "pause-leader"
        else:
            followers = [n for n in live if n != leader]
            k = max(1, (len(self.cluster.members) - 1) // 2)
            targets, kind = self.rng.sample(followers, min(k, len(followers))), "pause-followers"
        if not targets:
            return None
        for nid in targets:
            self.cluster.pause(nid)
            self.paused.append(nid)
        return kind

    async def heal(self) -> None:
        for nid in self.paused:
            self.cluster.resume(nid)
        self.paused.clear()
