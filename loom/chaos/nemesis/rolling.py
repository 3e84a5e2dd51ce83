"""Rolling restart: every member in turn is stopped (SIGTERM, graceful) and started again on its
data, the next one only once the restarted node answers CLUSTER_STATUS (at most 20 s each)."""

from __future__ import annotations

import trio

from loom.chaos.nemesis import Nemesis

SERVE_S = 20.0


class RollingRestartNemesis(Nemesis):
    name = "rolling"

    async def inject(self) -> str | None:
        for nid in list(self.cluster.members):
            await self.cluster.stop(nid)
            await self.cluster.start(nid)
            with trio.move_on_after(SERVE_S):
                for _ in range(1000):
                    if await self.cluster.status(nid) is not None:
                        break
                    await trio.sleep(0.1)
        return "rolling-restart"
