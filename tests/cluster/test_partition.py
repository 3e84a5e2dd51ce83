"""A network partition isolating the leader, cut at per-pair TCP proxies on the peer links."""

from __future__ import annotations

import pytest
import trio

from tests.cluster.conftest import NOT_LEADER, OK, TIMEOUT, UNAVAILABLE, ClusterFactory

pytestmark = pytest.mark.slow

REFUSED = frozenset({NOT_LEADER, UNAVAILABLE, TIMEOUT})


async def test_isolated_leader_refuses_majority_carries_on_then_converges(
        cluster_factory: ClusterFactory) -> None:
    cluster = await cluster_factory(proxied=True)
    c = cluster.client()
    old = await cluster.wait_leader()
    for i in range(10):
        assert (await c.call("MAP_PUT", name="m", key=f"a{i}", value=b"before"))["s"] == OK

    direct = await cluster.connect(old)
    t_cut = trio.current_time()
    cluster.isolate(old)
    majority = [n for n in cluster.ids if n != old]

    async def minority_side() -> None:
        r = await direct.request("MAP_PUT", name="m", key="minority", value=b"x", timeout=20)
        assert r["s"] in REFUSED, f"the isolated leader acknowledged a write: {r}"
        g = await direct.request("MAP_GET", name="m", key="a0", timeout=20)
        assert g["s"] in REFUSED, f"the isolated leader served a read: {g}"
        print(f"isolated {old} answered the write {r['e']['code']} and the read "
              f"{g['e']['code']}")
        # Asked for a stale read, it answers from its own replica at once, partition or not.
        s = await direct.request("MAP_GET", name="m", key="a0", stale=True, timeout=5)
        assert s["s"] == OK and s["r"] == b"before", s

    async def majority_side() -> None:
        c.only = majority  # a client on the majority's side of the partition
        await c.aclose()
        new = await cluster.wait_leader(among=majority)
        print(f"majority elected {new} {trio.current_time() - t_cut:.3f} s after the cut")
        for i in range(20):
            r = await c.call("MAP_PUT", name="m", key=f"b{i}", value=b"during")
            assert r["s"] == OK, r

    async with trio.open_nursery() as n:
        n.start_soon(minority_side)
        n.start_soon(majority_side)
    st = await cluster.status(old)
    assert st is not None and st["role"] != "leader", st
    print(f"isolated {old} after {trio.current_time() - t_cut:.2f} s: role {st['role']}, "
          f"term {st['term']}")

    c.only = None
    cluster.heal()
    t_heal = trio.current_time()
    sts = await cluster.wait_converged(timeout=30)
    print(f"converged {trio.current_time() - t_heal:.3f} s after healing")
    assert sts[old]["role"] == "follower" and sts[old]["leader"] in majority, sts[old]
    # Healed, the old leader is a follower: it answers a stale read from its replica (caught
    # up here: the cluster converged), and a linearizable one through the leader's ReadIndex.
    for stale in (True, False):
        s = await direct.request("MAP_GET", name="m", key="b0", stale=stale, timeout=5)
        assert s["s"] == OK and s["r"] == b"during", (stale, s)
    for i in range(10):
        r = await c.call("MAP_GET", name="m", key=f"a{i}", retry_unknown=True)
        assert r["s"] == OK and r["r"] == b"before", r
    for i in range(20):
        r = await c.call("MAP_GET", name="m", key=f"b{i}", retry_unknown=True)
        assert r["s"] == OK and r["r"] == b"during", r
    r = await c.call("MAP_GET", name="m", key="minority", retry_unknown=True)
    assert r["s"] == OK and r["r"] is None, r
    assert cluster.net is not None
    refused = sum(p.statistics().refused for p in cluster.net.proxies.values())
    print(f"connections refused at the cut proxies: {refused}")
