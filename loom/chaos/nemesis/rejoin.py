"""A removed member comes back with its old data and certificate (SECURITY-CATALOGUE A7).

A spare joins (learner, then voter: the voters stay as many), then a voter other than the
leader is killed and, while it is down, removed: its data never hears of its removal. Then it
is started again on that data, with its still-valid certificate, and believes it is a voter.

What must hold, checked when the fault is healed (each breach an anomaly of the run):
- it learns it was removed (its CLUSTER_STATUS says `removed`) within `LEARN_S`: the members
  it dials refuse its id by name and tell it so (loom/node/peer.py), and it stops campaigning;
- it never takes part again: no member steps a Raft message from it (the peer plane's
  `received` count for its id, on every member that ran throughout, does not grow). The
  count is taken once a member has applied the removal (its own CLUSTER_STATUS no longer lists
  the id; waited for at most `APPLY_S`): before that, stepping a message the victim sent while
  it was a member (still in the member's socket buffer when the victim was killed) is legal,
  and a member that lags behind the removal is not checked.
Healing stops it for good. Spare ids run out after a couple of rounds; then nothing is done.
"""

from __future__ import annotations

import random

import trio

from loom.chaos.cluster import ChaosCluster
from loom.chaos.nemesis.membership import STEP_S, MembershipNemesis

LEARN_S = 10.0
APPLY_S = 10.0  # how long the live members get to apply the removal before the count


class RejoinNemesis(MembershipNemesis):
    name = "rejoin"

    def __init__(self, cluster: ChaosCluster, rng: random.Random) -> None:
        super().__init__(cluster, rng)
        self.back: str | None = None
        self.baseline: dict[str, tuple[int, int]] = {}  # member -> (its starts, received)

    async def inject(self) -> str | None:
        c = self.cluster
        if not c.spares:
            return None
        async with trio.open_nursery() as nursery:
            admin = await c.admin(nursery, limit_s=STEP_S)
            try:
                added = await self._add(admin, c.spares[0])
                if added != "promoted":
                    return added
                leader = await c.leader()
                victims = [m for m in c.live() if m not in (leader, c.members[-1])]
                if not victims:
                    return "rejoin-no-victim"
                victim = self.rng.choice(victims)
                await c.kill(victim)  # down before its removal: its data never hears of it
                if not await self._remove(admin, victim):
                    await c.start(victim)
                    return "rejoin-remove-failed"
            finally:
                await admin.aclose()
        self.baseline = await self._received(victim, await self._applied_removal(victim))
        await c.start(victim)
        self.back = victim
        return "rejoin-removed-member"

    async def _applied_removal(self, nid: str) -> list[str]:
        """The live members whose own configuration no longer lists `nid`, waiting at most
        `APPLY_S` for all of them."""
        deadline = trio.current_time() + APPLY_S
        while True:
            live, done = self.cluster.live(), []
            for m in live:
                st = await self.cluster.status(m)
                if st is not None and all(x.get("id") != nid for x in st.get("members", [])):
                    done.append(m)
            if len(done) == len(live) or trio.current_time() >= deadline:
                return done
            await trio.sleep(0.2)

    async def _received(self, nid: str, among: list[str] | None = None
                        ) -> dict[str, tuple[int, int]]:
        """Per live member (of `among`, when given): (its process's start count, Raft messages
        it stepped from `nid`)."""
        out = {}
        for m in self.cluster.live():
            if among is not None and m not in among:
                continue
            st = await self.cluster.node_stats(m)
            if st is not None:
                peer = st.get("peer", {}).get("peers", {}).get(nid, {})
                out[m] = (self.cluster.nodes[m].starts, int(peer.get("received", 0)))
        return out

    async def heal(self) -> None:
        nid, self.back = self.back, None
        if nid is None:
            return
        c = self.cluster
        said = None
        with trio.move_on_after(LEARN_S):
            while said is None:
                st = await c.status(nid)
                said = st.get("removed") if st is not None else None
                await trio.sleep(0.2)
        if said is None:
            self.anomalies.append(
                f"removed member {nid}, restarted on its old data and certificate, was not told "
                f"it was removed within {LEARN_S:g} s (it still campaigns)")
        after = await self._received(nid)
        for m, (starts, received) in after.items():
            was = self.baseline.get(m)
            if was is not None and was[0] == starts and received > was[1]:
                self.anomalies.append(
                    f"member {m} stepped {received - was[1]} Raft message(s) from {nid} after "
                    f"{nid} was removed")
        self.outcomes["rejoin-told-removed" if said is not None else "rejoin-not-told"] += 1
        await c.stop(nid)
