"""A follower that missed the membership change which added the current leader catches up.

Found by the chaos membership nemesis (runs that never converged: a restarted follower stuck as
pre-candidate, a learner stuck at index 64, each refusing the leader with "not a member"). The
peer listener admitted only the members of the node's own newest configuration, so a node
whose log stopped before the leader's MEMBER_ADD refused the only node that could bring it up
to date. Now the members it still trusts tell it their committed configuration (PEER_MEMBERS),
and it admits, and dials, the members of a newer one (loom/security/peertrust.py).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from loom.chaos.cluster import ChaosCluster, ConvergeError
from loom.client import AsyncClient


async def _until_ok(c: AsyncClient, op: str, **body: object) -> None:
    for _ in range(100):
        try:
            await c.call_body(op, body)
            return
        except Exception:  # refused until the learner caught up
            await trio.sleep(0.2)
    raise AssertionError(f"{op} {body} never succeeded")


@pytest.mark.timeout(240)
def test_follower_behind_the_leaders_admission_catches_up(tmp_path: Path) -> None:
    # run without pytest-trio so the assertion is not wrapped in an exception group
    stuck = trio.run(_behind_the_leaders_admission, tmp_path)
    assert stuck is None, stuck


async def _behind_the_leaders_admission(tmp_path: Path) -> str | None:
    """None once the restarted follower has converged, else what the cluster looked like."""
    cluster = ChaosCluster(tmp_path, 3, random.Random(3))
    stuck: str | None = None
    try:
        async with trio.open_nursery() as nursery:
            await cluster.setup(nursery)
            await cluster.wait_converged(60)
            leader = await cluster.leader()
            behind = next(m for m in cluster.members if m != leader)
            await cluster.kill(behind)
            with trio.fail_after(60):
                admin = await cluster.admin(nursery, limit_s=10)
                await cluster.start("n4")
                await admin.call("MEMBER_ADD", node="n4", learner=True,
                                 peer_addr=cluster.nodes['n4'].peer_listen)
                cluster.members.append("n4")
                await _until_ok(admin, "MEMBER_PROMOTE", node="n4")
                for _ in range(20):  # a transfer is acknowledged when it starts
                    await _until_ok(admin, "LEADER_TRANSFER", to="n4")
                    await trio.sleep(1.0)
                    if await cluster.leader() == "n4":
                        break
                for i in range(20):
                    await admin.map_put("m", f"k{i}", b"v")
                await admin.aclose()
            assert await cluster.leader() == "n4"
            await cluster.start(behind)
            try:
                sts = await cluster.wait_converged(20)
                # caught up from the leader it had refused, while that node still leads
                leaders = {nid: st.get("leader") for nid, st in sts.items()}
                if set(leaders.values()) != {"n4"}:
                    stuck = f"converged under another leader: {leaders}"
            except ConvergeError as e:
                st = (await cluster.diagnose()).get(behind)
                seen = {k: st.get(k) for k in ("peer_trust", "peer")} if isinstance(st, dict) \
                    else st
                stuck = f"{e}\n{behind}: {seen}"
            nursery.cancel_scope.cancel()
    finally:
        await cluster.aclose()
    return stuck
