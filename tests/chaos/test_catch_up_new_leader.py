"""A follower that missed the membership change which added the current leader.

Found by the chaos membership nemesis (runs that never converged: a restarted follower stuck as
pre-candidate, a learner stuck at index 64, each refusing the leader with "not a member"). The
peer listener admits only the members of the node's own newest configuration, so a node whose
log stops before the leader's MEMBER_ADD refuses the only node that could bring it up to date.
Expected to fail until the peer plane always admits such a leader.
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


# not strict: on the newest main the follower catches up now and then (1 run in 4), so the
# outcome is no longer certain either way
@pytest.mark.xfail(strict=False, raises=AssertionError,
                   reason="a node behind the leader's MEMBER_ADD refuses it")
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
                                 peer_addr=f"127.0.0.1:{cluster.nodes['n4'].peer_port}")
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
                await cluster.wait_converged(20)
            except ConvergeError as e:  # while the bug stands
                stuck = str(e)
            nursery.cancel_scope.cancel()
    finally:
        await cluster.aclose()
    return stuck
