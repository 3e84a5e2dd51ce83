"""A member that lost its data directory, on real processes: started again under its old name
without --join it refuses to found a cluster of its old --peers list (exit 2, saying what to
do) and leaves nothing behind that a later start would take for a log; removed, started with
--join and re-admitted, it catches up, stops joining (its `joining` file is gone) and serves
what was written before it lost its disk (loom.node.bootstrap, loom.raft.core "joining")."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest
import trio

from loom.node.bootstrap import JOINING_FILE
from loom.node.config import to_toml
from tests.cluster.conftest import OK, Cluster
from tests.cluster.test_membership import peer_addr, put, wait_caught_up, wait_members

pytestmark = pytest.mark.slow


async def refused_start(cluster: Cluster, nid: str, *args: str) -> str:
    n = cluster.nodes[nid]
    before = n.log_text()
    proc = await cluster.spawn(n.config, n.log, *args)
    with trio.fail_after(30):
        rc = await proc.wait()
    out = n.log_text()[len(before):]
    assert rc == 2, f"{nid} exited {rc}, not 2:\n{out}"
    return out


async def test_wiped_member_refuses_to_found_then_rejoins_with_join(cluster: Cluster) -> None:
    c = cluster.client()
    leader = await cluster.wait_leader()
    for i in range(10):
        await put(c, f"k{i}", b"v%d" % i)
    wiped = next(nid for nid in cluster.ids if nid != leader)
    stay = sorted(nid for nid in cluster.ids if nid != wiped)
    await cluster.kill(wiped)
    shutil.rmtree(cluster.nodes[wiped].data_dir)

    # Its old command line: refused, twice (the refusal wrote nothing that looks like a log).
    for _ in range(2):
        out = await refused_start(cluster, wiped)
        assert "refusing to found a cluster of n1, n2, n3" in out, out
        assert "--join" in out and "--initial-cluster-state new" in out, out
    out = await refused_start(cluster, wiped, "--join", "--initial-cluster-state", "new")
    assert "initial_cluster_state" in out, out
    sts = await cluster.wait_converged(stay)
    assert sts[leader]["role"] == "leader", sts

    # The operator's way back: remove it, start it empty with --join, re-admit it.
    r = await c.call("MEMBER_REMOVE", node=wiped, retry_unknown=True)
    assert r["s"] == OK, r
    c.only = stay
    await wait_members(cluster, leader, stay, [])
    n = cluster.nodes[wiped]
    n.config.write_text(to_toml(replace(cluster.config_for(wiped), join=True)),
                        encoding="utf-8")
    await cluster.start(wiped)
    assert (n.data_dir / JOINING_FILE).exists()
    st = await cluster.request(wiped, "CLUSTER_STATUS", timeout=10)
    assert st is not None and st["s"] == OK and st["r"]["joining"] is True, st
    r = await c.call("MEMBER_ADD", node=wiped, peer_addr=peer_addr(cluster, wiped), readmit=True)
    assert r["s"] == OK, r
    await put(c, "after-readmit", b"y")
    await wait_caught_up(cluster, wiped, timeout=20)
    with trio.fail_after(10):
        while (n.data_dir / JOINING_FILE).exists():
            await trio.sleep(0.05)
    st = await cluster.request(wiped, "CLUSTER_STATUS", timeout=10)
    assert st is not None and st["r"]["joining"] is False, st
    r = await c.call("MEMBER_PROMOTE", node=wiped, retry_unknown=True)
    assert r["s"] == OK, r
    for nid in cluster.ids:
        await wait_members(cluster, nid, sorted(cluster.ids), [])
    for key, value in (("k3", b"v3"), ("after-readmit", b"y")):
        got = await cluster.request(wiped, "MAP_GET", timeout=10, name="m", key=key, stale=True)
        assert got is not None and got["s"] == OK and got["r"] == value, got
