"""ACL changes across real processes (SECURITY-CATALOGUE D8, issue #14 item 1).

- A role revoked through one node is enforced by every node once the revocation is applied
  there: writes, linearizable reads and stale reads alike.
- A follower whose replica still holds the old policy when a linearizable read arrives does
  not allow that read on the old policy: the read is served at an index at or past the
  revocation, so it is decided by the policy in force at that index.
- SIGHUP on a node after `acl set` keeps the replicated version (the config's [acl] only
  seeds a new cluster).
"""

from __future__ import annotations

import signal
from typing import Any

import pytest
import trio

from tests.cluster.conftest import NOT_LEADER, OK, Cluster, Conn
from tests.conftest import TEST_ACL
from tests.node.conftest import FORBIDDEN, WRITER_P

pytestmark = pytest.mark.slow


def revoked_writer() -> dict[str, Any]:
    """TEST_ACL with the writer's roles taken away (it keeps only the guest's)."""
    return {**TEST_ACL, "principals": {**TEST_ACL["principals"], WRITER_P: ["guest"]}}


async def acl_version(c: Conn) -> int:
    r = await c.request("ACL_GET")
    assert r["s"] == OK, r
    v: int = r["r"]["version"]
    return v


async def wait_applied(cluster: Cluster, nid: str, index: int, timeout: float = 15.0) -> None:
    with trio.fail_after(timeout):
        while True:
            st = await cluster.status(nid)
            if st is not None and st["applied_index"] >= index:
                return
            await trio.sleep(0.02)


async def test_revocation_through_one_node_is_enforced_by_every_node(cluster: Cluster) -> None:
    leader = await cluster.wait_leader()
    admin = cluster.client()
    assert (await admin.call("MAP_PUT", name="m", key="k", value=b"v"))["s"] == OK
    await cluster.wait_converged()
    writers = {nid: await cluster.connect(nid, name="writer") for nid in cluster.ids}
    for nid, w in writers.items():  # allowed everywhere before
        assert (await w.request("MAP_GET", name="m", key="k", stale=True))["s"] == OK, nid
        assert (await w.request("MAP_GET", name="m", key="k"))["s"] == OK, nid
    v1 = await acl_version(await cluster.connect(leader))

    # Revoke through a follower: the request follows NOT_LEADER or is proposed from there.
    follower = next(n for n in cluster.ids if n != leader)
    via = await cluster.connect(follower)
    r = await via.request("ACL_SET", policy=revoked_writer(), expected_version=v1)
    if r["s"] == NOT_LEADER:  # a follower names the leader; the revocation goes there
        assert r["e"]["leader"] == leader, r
        r = await (await cluster.connect(leader)).request(
            "ACL_SET", policy=revoked_writer(), expected_version=v1)
    assert r["s"] == OK, r
    st = await cluster.status(leader)
    assert st is not None
    revoked_at = st["commit_index"]  # the revocation is committed: at or below this index

    for nid, w in writers.items():  # the writer's connections were opened before
        await wait_applied(cluster, nid, revoked_at)
        for stale in (True, False):
            r = await w.request("MAP_GET", name="m", key="k", stale=stale)
            assert r["s"] == FORBIDDEN, (nid, stale, r)
        r = await w.request("MAP_PUT", name="m", key="k", value=b"w")
        assert r["s"] == FORBIDDEN, (nid, r)
        fresh = await cluster.connect(nid, name="writer")
        assert (await fresh.request("MAP_GET", name="m", key="k", stale=True))["s"] == FORBIDDEN
    check = await cluster.connect(leader)
    assert (await check.request("MAP_GET", name="m", key="k"))["r"] == b"v"


async def test_a_lagging_follower_never_allows_a_read_on_the_old_policy(
        cluster: Cluster) -> None:
    """The follower is stopped (SIGSTOP) while the revocation commits, so its replica still
    holds the old policy when the writer's linearizable reads reach it on resume. Each read
    is served only once the follower applied up to the leader's commit index, which includes
    the revocation: it must be refused, whatever order the follower handles the read and the
    leader's entries in."""
    leader = await cluster.wait_leader()
    lagging = next(n for n in cluster.ids if n != leader)
    admin = await cluster.connect(leader)
    assert (await admin.request("MAP_PUT", name="m", key="k", value=b"v"))["s"] == OK
    await cluster.wait_converged()
    w = await cluster.connect(lagging, name="writer")
    assert (await w.request("MAP_GET", name="m", key="k"))["s"] == OK
    v1 = await acl_version(admin)

    cluster.pause(lagging)
    try:
        r = await admin.request("ACL_SET", policy=revoked_writer(), expected_version=v1)
        assert r["s"] == OK, r  # committed by the two other nodes
        # Queue reads in the stopped follower's socket, then let it run.
        rids = []
        for _ in range(8):
            rid, data = w.frame("MAP_GET", name="m", key="k")
            await w.send(data)
            rids.append(rid)
    finally:
        cluster.resume(lagging)
    for rid in rids:
        r = await w.recv_id(rid, timeout=10)
        assert r["s"] == FORBIDDEN, r


async def test_sighup_after_acl_set_keeps_the_replicated_version(cluster: Cluster) -> None:
    leader = await cluster.wait_leader()
    admin = await cluster.connect(leader)
    v1 = await acl_version(admin)
    r = await admin.request("ACL_SET", policy=revoked_writer(), expected_version=v1)
    assert r["s"] == OK, r
    await cluster.wait_converged()
    for nid in cluster.ids:  # every node re-reads a config whose [acl] is still version 1's
        proc = cluster.nodes[nid].proc
        assert proc is not None
        proc.send_signal(signal.SIGHUP)
    with trio.fail_after(15):  # every node logs its reload
        while not all("reload: certificates" in cluster.nodes[n].log_text()
                      for n in cluster.ids):
            await trio.sleep(0.05)
    assert all("differs from the replicated ACL policy" in cluster.nodes[n].log_text()
               for n in cluster.ids)
    await trio.sleep(0.3)  # room for a (wrong) proposal to commit and apply
    st = await cluster.wait_converged()
    assert await acl_version(admin) == v1 + 1
    for nid in cluster.ids:
        w = await cluster.connect(nid, name="writer")
        r = await w.request("MAP_GET", name="m", key="k", stale=True)
        assert r["s"] == FORBIDDEN, (nid, r)
    assert len({s["applied_index"] for s in st.values()}) == 1
