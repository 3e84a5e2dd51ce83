"""A follower that fell behind the leader's compacted log catches up from a snapshot."""

from __future__ import annotations

import pytest
import trio

from tests.cluster.conftest import OK, Client, ClusterFactory

pytestmark = pytest.mark.slow

WRITES = 400
WRITERS = 4


async def test_stopped_follower_catches_up_from_a_snapshot(
        cluster_factory: ClusterFactory) -> None:
    cluster = await cluster_factory(snapshot_every=50, trailing_entries=10)
    leader = await cluster.wait_leader()
    follower = next(n for n in cluster.ids if n != leader)
    before = await cluster.stats(follower)
    assert before is not None
    behind_at = before["log"]["last_index"]
    assert await cluster.stop(follower) == 0

    async def writer(c: Client, w: int) -> None:
        for i in range(w, WRITES, WRITERS):
            r = await c.call("MAP_PUT", name="m", key=f"k{i}", value=f"v{i}".encode(),
                             retry_unknown=True)  # same key, same value: safe to repeat
            assert r["s"] == OK, r

    t0 = trio.current_time()
    async with trio.open_nursery() as n:
        for w in range(WRITERS):
            n.start_soon(writer, cluster.client(), w)
    print(f"{WRITES} writes by {WRITERS} clients in {trio.current_time() - t0:.2f} s")

    lst = await cluster.stats(leader)
    assert lst is not None
    # What the follower needs next is no longer in the leader's log: only a snapshot helps.
    first_kept = lst["log"]["snapshot_index"] - 10 + 1
    assert first_kept > behind_at + 1, (behind_at, lst["log"])

    await cluster.start(follower)
    t_restart = trio.current_time()
    sts = await cluster.wait_converged(timeout=60)
    print(f"{follower} (stopped at index {behind_at}) caught up to "
          f"{sts[follower]['applied_index']} within {trio.current_time() - t_restart:.2f} s "
          f"of its restart")
    fst = await cluster.stats(follower)
    assert fst is not None
    assert fst["log"]["snapshot_index"] >= first_kept, fst["log"]
    snaps = [p for p in (cluster.nodes[follower].data_dir / "raft").rglob("*")
             if "snap" in p.name]
    assert snaps, "no snapshot file in the follower's data directory"
    # received into a temp file as the chunks came, then installed from it: none left over
    assert not [p for p in snaps if p.name.endswith(".tmp")], snaps

    # The installed snapshot holds the data: with the follower leading, every write reads back.
    admin = cluster.client()
    await cluster.transfer_leadership(admin, follower)
    # A write first: a new leader serves reads only after its next write is applied (see
    # test_new_leader_serves_linearizable_reads_before_any_new_write).
    assert (await admin.call("MAP_PUT", name="m", key="after", value=b"x"))["s"] == OK
    for i in range(WRITES):
        r = await admin.call("MAP_GET", name="m", key=f"k{i}", retry_unknown=True)
        assert r["s"] == OK and r["r"] == f"v{i}".encode(), (i, r)
    assert admin.node == follower
