"""Membership changes while the workloads go on: add a learner, promote it, transfer leadership
to it, remove an old voter (whose process is then stopped for good), keeping the number of
voters. Spare ids run out after a few replacements; then only leadership transfers remain.

Admin calls go through the project's client with retries. `cluster.members` follows what the
cluster acknowledged; an answer lost in a fault is settled by reading MEMBER_LIST.
"""

from __future__ import annotations

from typing import Any

import trio

from loom.chaos.cluster import STATUS_ERRORS, ChaosCluster
from loom.chaos.nemesis import Nemesis
from loom.client import AsyncClient
from loom.wire.errors import Timeout

STEP_S = 15.0  # one admin step (with its retries) at most
CATCH_UP_S = 15.0


class MembershipNemesis(Nemesis):
    name = "membership"

    async def inject(self) -> str | None:
        c = self.cluster
        async with trio.open_nursery() as nursery:
            admin = await c.admin(nursery, limit_s=STEP_S)
            try:
                if not c.spares or self.rng.random() < 0.3:
                    await _call(admin, "LEADER_TRANSFER", to=self.rng.choice(c.members))
                    return "leader-transfer"
                return await self._replace(admin, c.spares[0])
            finally:
                await admin.aclose()

    async def _replace(self, admin: AsyncClient, new: str) -> str:
        added = await self._add(admin, new)
        if added != "promoted":
            return added
        await _call(admin, "LEADER_TRANSFER", to=new)
        leader = await self.cluster.leader()
        gone = self.rng.choice([m for m in self.cluster.members if m not in (new, leader)])
        if await self._remove(admin, gone):
            await self.cluster.stop(gone)
        return "member-replace"

    async def _add(self, admin: AsyncClient, new: str) -> str:
        """Start `new`, add it as a learner, promote it once caught up: "promoted", or the kind
        of fault it came to ("learner-add-failed", "learner-add": never promoted)."""
        c = self.cluster
        await c.start(new)
        addr = c.nodes[new].peer_listen
        r = await _call(admin, "MEMBER_ADD", node=new, peer_addr=addr, learner=True)
        if r == "ok":
            c.members.append(new)
        elif r == "unknown":
            await _sync(c, admin)
        if new not in c.members:
            await c.kill(new)
            c.removed.add(new)  # its id may be half-known to the cluster: never reused
            return "learner-add-failed"
        promoted = "fail"
        with trio.move_on_after(CATCH_UP_S):
            for _ in range(100):  # refused until the learner has caught up
                promoted = await _call(admin, "MEMBER_PROMOTE", node=new)
                if promoted != "fail":
                    break
                await trio.sleep(0.3)
        return "promoted" if promoted == "ok" else "learner-add"

    async def _remove(self, admin: AsyncClient, gone: str) -> bool:
        """MEMBER_REMOVE `gone`; whether the cluster removed it (its process is left alone)."""
        c = self.cluster
        r = await _call(admin, "MEMBER_REMOVE", node=gone)
        if r == "ok":
            c.members.remove(gone)
        elif r == "unknown":
            await _sync(c, admin)
        if gone not in c.members:
            c.removed.add(gone)
            return True
        return False


async def _call(admin: AsyncClient, op: str, **body: Any) -> str:
    """"ok", "fail" (refused: not applied) or "unknown"."""
    try:
        with trio.fail_after(STEP_S):
            await admin.call_body(op, body)
        return "ok"
    except (Timeout, trio.TooSlowError):
        return "unknown"
    except STATUS_ERRORS:
        return "fail"


async def _sync(c: ChaosCluster, admin: AsyncClient) -> None:
    """cluster.members := the member list a linearizable write-path node answers."""
    for _ in range(10):
        try:
            with trio.fail_after(STEP_S):
                await admin.call("MAP_PUT", name="chaos-admin", key="barrier", value=b"1")
                r = await admin.call("MEMBER_LIST")
        except STATUS_ERRORS:
            await trio.sleep(0.5)
            continue
        ids = {m["id"] for m in r["members"]}
        c.members = [m for m in c.nodes if m in ids]
        return
