"""A member removed while it was down learns it was removed when it comes back.

n3 never got the commit of its removal, so its log still lists it as a voter. Its peers refuse
its connections and tell it why (peer.py, peerlink.py REMOVED_NOTICE); from then on it stops
campaigning (its term stops rising) and answers every client request, stale reads included,
with UNAVAILABLE naming the removal. NODE_STATS and CLUSTER_STATUS say so.
"""

from __future__ import annotations

from typing import Any

import trio

from tests.cluster.conftest import OK, UNAVAILABLE, Client, Cluster, Conn, ConnError


async def put(c: Client, key: str, value: bytes) -> None:
    r = await c.call("MAP_PUT", name="m", key=key, value=value, retry_unknown=True)
    assert r["s"] == OK, r


async def _stale_get(cluster: Cluster, nid: str) -> dict[str, Any] | None:
    n = cluster.nodes[nid]
    try:
        with trio.fail_after(3):
            c = await Conn.open(cluster.pki, n.client_port, timeout=2)
            try:
                return await c.request("MAP_GET", stale=True, timeout=2, name="m", key="k0")
            finally:
                await c.aclose()
    except (ConnError, trio.TooSlowError):
        return None


async def test_member_removed_while_down_stops_serving_and_campaigning(cluster: Cluster
                                                                        ) -> None:
    c = cluster.client()
    leader = await cluster.wait_leader()
    await put(c, "k0", b"old")
    gone = next(nid for nid in cluster.ids if nid != leader)
    stay = [nid for nid in cluster.ids if nid != gone]
    await cluster.wait_converged()
    await cluster.stop(gone)
    c.only = stay
    r = await c.call("MEMBER_REMOVE", node=gone, retry_unknown=True)
    assert r["s"] == OK, r
    await put(c, "k0", b"new")

    await cluster.start(gone)  # on its data: its log never saw its removal
    last = None
    with trio.fail_after(30):
        while True:
            last = await _stale_get(cluster, gone)
            if last is not None and last["s"] == UNAVAILABLE:
                break
            await trio.sleep(0.2)
    assert last is not None
    err = last["e"]
    assert isinstance(err, dict) and "removed" in err["msg"], last

    stats = await cluster.stats(gone)
    assert stats is not None and stats["log"]["removed"], stats
    status = await cluster.status(gone)
    assert status is not None and "removed" in status, status
    term = status["term"]
    await trio.sleep(3)  # many election timeouts (200..400 ms each)
    later = await cluster.status(gone)
    assert later is not None and later["term"] == term, (status, later)
    assert later["role"] != "leader", later
    # It said so once, with how to come back.
    text = cluster.nodes[gone].log_text()
    assert text.count("--readmit` (it comes back as a learner)") == 1, text[-3000:]
