"""Linearizable reads served through a follower, on real processes, while its leader is gone.

A follower asks the leader for a ReadIndex; when the leader stops (SIGSTOP) the request is
lost. The follower asks again after an election timeout's worth of ticks and at once of a
new leader (loom/node/waiters.py `ask_again`), so each read ends within about an election:
served (OK), or refused as "not executed, retry" (NOT_LEADER, while the follower itself
campaigns); never held until its deadline (TIMEOUT, which clients raise at once).
"""

from __future__ import annotations

import pytest
import trio

from loom.chaos.cluster import FAST_RAFT
from tests.cluster.conftest import NOT_LEADER, OK, Cluster
from tests.cluster.test_acl_revocation import replies

pytestmark = pytest.mark.slow


async def test_reads_in_flight_on_a_follower_when_its_leader_stops_end_before_their_deadline(
        cluster: Cluster) -> None:
    leader = await cluster.wait_leader()
    follower = next(n for n in cluster.ids if n != leader)
    admin = await cluster.connect(leader)
    assert (await admin.request("MAP_PUT", name="m", key="k", value=b"v"))["s"] == OK
    await cluster.wait_converged()
    c = await cluster.connect(follower)
    assert (await c.request("MAP_GET", name="m", key="k"))["s"] == OK
    cluster.pause(leader)
    try:
        t0 = trio.current_time()
        rids = []
        for _ in range(4):  # spread over most of an election timeout (200..400 ms)
            rid, data = c.frame("MAP_GET", name="m", key="k")
            await c.send(data)
            rids.append(rid)
            await trio.sleep(0.05)
        got = await replies(c, rids, timeout=2 * FAST_RAFT.read_timeout_s)
        took = trio.current_time() - t0
    finally:
        cluster.resume(leader)
    print(f"answers after {took:.2f} s: {[got[r]['s'] for r in rids]}")
    for rid in rids:
        r = got[rid]
        assert r["s"] == NOT_LEADER or (r["s"] == OK and r["r"] == b"v"), r
