"""Leader failure on real processes: SIGKILL (I2), SIGSTOP/SIGCONT (I3), and a deduplicated
counter increment retried across a leader change (a slice of I5)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from tests.cluster.conftest import (
    INDETERMINATE,
    NOT_LEADER,
    OK,
    TIMEOUT,
    UNAVAILABLE,
    Client,
    Cluster,
    ClusterFactory,
    Conn,
)

pytestmark = pytest.mark.slow

REFUSED = frozenset({NOT_LEADER, UNAVAILABLE, TIMEOUT})


def value_of(i: int) -> bytes:
    return f"value-{i}".encode()


async def put_range(c: Client, keys: range, acked: dict[str, bytes],
                    unknown: dict[str, bytes]) -> list[float]:
    """MAP_PUT k<i> = value-<i> for each i; returns the time each acknowledgement arrived."""
    times = []
    for i in keys:
        r = await c.call("MAP_PUT", name="m", key=f"k{i}", value=value_of(i))
        if r["s"] == OK:
            acked[f"k{i}"] = value_of(i)
            times.append(trio.current_time())
        elif r["s"] in INDETERMINATE:
            unknown[f"k{i}"] = value_of(i)
        else:
            raise AssertionError(f"MAP_PUT k{i}: {r}")
    return times


async def check_readable(c: Client, acked: dict[str, bytes], unknown: dict[str, bytes]) -> None:
    for key, want in acked.items():
        r = await c.call("MAP_GET", name="m", key=key, retry_unknown=True)
        assert r["s"] == OK and r["r"] == want, f"acknowledged write {key} lost: {r}"
    for key, want in unknown.items():  # indeterminate: present with its value, or absent
        r = await c.call("MAP_GET", name="m", key=key, retry_unknown=True)
        assert r["s"] == OK and r["r"] in (None, want), (key, r)


async def test_leader_sigkill_new_leader_no_acked_write_lost_old_leader_rejoins(
        cluster: Cluster) -> None:
    c = cluster.client()
    acked: dict[str, bytes] = {}
    unknown: dict[str, bytes] = {}
    old = await cluster.wait_leader()
    await put_range(c, range(0, 40), acked, unknown)

    t_kill = trio.current_time()
    await cluster.kill(old)
    survivors = [n for n in cluster.ids if n != old]
    times = await put_range(c, range(40, 80), acked, unknown)
    new = await cluster.wait_leader(among=survivors)
    assert new != old
    print(f"SIGKILL of {old}: first write acknowledged by {new} after "
          f"{times[0] - t_kill:.3f} s; client retries {c.retries}, redirects {c.redirects}")
    assert len(acked) + len(unknown) == 80

    await cluster.start(old)
    t_restart = trio.current_time()
    await put_range(c, range(80, 100), acked, unknown)
    sts = await cluster.wait_converged(timeout=30)
    print(f"{old} restarted and caught up within {trio.current_time() - t_restart:.3f} s "
          f"(applied index {sts[old]['applied_index']})")
    assert sts[old]["role"] == "follower"
    assert sts[old]["leader"] in survivors
    assert sts[old]["term"] == sts[sts[old]["leader"]]["term"]
    await check_readable(c, acked, unknown)
    print(f"acknowledged {len(acked)}, indeterminate {len(unknown)}")


async def recv_all(conn: Conn, ids: list[int], timeout: float) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    with trio.fail_after(timeout):
        while len(out) < len(ids):
            p = conn.session.next_payload()
            if p is None:
                data = await conn.stream.receive_some(65536)
                assert data, f"the old leader closed the connection; got {out}"
                conn.session.receive_data(data)
                continue
            from loom.wire.codec import decode_payload

            obj = decode_payload(p)
            assert isinstance(obj, dict)
            out[obj["id"]] = obj
    return out


@pytest.mark.parametrize("lease_reads,isolated", [
    (False, False),
    (False, True),
    (True, True),
], ids=["read-index", "read-index-isolated", "lease-reads-isolated"])
async def test_paused_leader_cannot_ack_or_serve_stale_reads_after_resume(
        cluster_factory: ClusterFactory, lease_reads: bool, isolated: bool) -> None:
    # isolated: the paused leader's peer links are also cut from the moment it is paused until
    # its first answers are in (a slow network after a pause), so nothing from the new leader
    # waits in its sockets and what it answers first cannot depend on which socket it reads
    # first after SIGCONT.
    cluster = await cluster_factory(proxied=isolated, lease_reads=lease_reads)
    c = cluster.client()
    old = await cluster.wait_leader()
    assert (await c.call("MAP_PUT", name="m", key="x", value=b"old"))["s"] == OK
    # A connection straight to the leader, opened while it is healthy.
    direct = await cluster.connect(old)
    assert (await direct.request("MAP_GET", name="m", key="x"))["r"] == b"old"

    t_pause = trio.current_time()
    cluster.pause(old)
    if isolated:
        cluster.isolate(old)
    others = [n for n in cluster.ids if n != old]
    new = await cluster.wait_leader(among=others)
    t_elected = trio.current_time()
    r = await c.call("MAP_PUT", name="m", key="x", value=b"new")
    assert r["s"] == OK, r
    print(f"{old} paused; {new} leads after {t_elected - t_pause:.3f} s")

    # Requests sent to the paused leader wait in its socket; it reads them first on resume.
    get1, f1 = direct.frame("MAP_GET", name="m", key="x")
    put1, f2 = direct.frame("MAP_PUT", name="m", key="y", value=b"from-the-old-leader")
    await direct.send(f1 + f2)
    await trio.sleep(max(0.0, 2.0 - (trio.current_time() - t_pause)))
    cluster.resume(old)
    t_resume = trio.current_time()
    replies = await recv_all(direct, [get1, put1], timeout=20)
    print(f"replies from {old} after resume ({trio.current_time() - t_resume:.3f} s): "
          f"{ {k: (v['s'], v.get('r')) for k, v in replies.items()} }")
    if isolated:
        cluster.heal()
    g = replies[get1]
    assert g["s"] in REFUSED or (g["s"] == OK and g["r"] == b"new"), \
        f"the resumed old leader served a stale read: {g}"
    assert replies[put1]["s"] in REFUSED, f"the resumed old leader acknowledged a write: {replies}"

    # And requests sent once it hears the cluster again, on the same and on a new connection.
    for conn in (direct, await cluster.connect(old)):
        g = await conn.request("MAP_GET", name="m", key="x", timeout=20)
        assert g["s"] in REFUSED or (g["s"] == OK and g["r"] == b"new"), g
        p = await conn.request("MAP_PUT", name="m", key="y", value=b"late", timeout=20)
        assert p["s"] in REFUSED, p

    sts = await cluster.wait_converged()
    assert sts[old]["role"] == "follower", sts[old]
    for _ in range(5):  # every linearizable read now returns the majority's value
        r = await c.call("MAP_GET", name="m", key="x", retry_unknown=True)
        assert r["s"] == OK and r["r"] == b"new", r
    r = await c.call("MAP_GET", name="m", key="y", retry_unknown=True)
    assert r["s"] == OK and r["r"] is None, f"a write refused by the old leader was applied: {r}"


async def test_counter_increment_retried_across_leader_change_is_applied_once(
        cluster: Cluster) -> None:
    c = cluster.client(client_id="counter-client")
    for seq in (1, 2, 3):
        r = await c.call("COUNTER_INCREMENT", seq=seq, retry_unknown=True, name="hits")
        assert r["s"] == OK and r["r"] == seq, r
    leader = await cluster.wait_leader()
    # seq 4 is sent to the leader, which is killed before its answer is read.
    direct = await cluster.connect(leader, client_id="counter-client")
    _, frame = direct.frame("COUNTER_INCREMENT", seq=4, name="hits")
    await direct.send(frame)
    await trio.sleep(0.01)
    await cluster.kill(leader)
    await direct.aclose()
    await c.aclose()  # its connection may be to the dead leader

    r4 = await c.call("COUNTER_INCREMENT", seq=4, retry_unknown=True, name="hits")
    assert r4["s"] == OK and r4["r"] == 4, r4
    again = await c.call("COUNTER_INCREMENT", seq=4, retry_unknown=True, name="hits")
    assert again["s"] == OK and again["r"] == 4, again
    old = await c.call("COUNTER_INCREMENT", seq=3, retry_unknown=True, name="hits")
    assert old["s"] == OK and old["r"] == 3, f"an acknowledged seq retried: {old}"
    r5 = await c.call("COUNTER_INCREMENT", seq=5, retry_unknown=True, name="hits")
    assert r5["s"] == OK and r5["r"] == 5, r5

    await cluster.start(leader)
    await cluster.wait_converged()
    r = await c.call("COUNTER_GET", name="hits", retry_unknown=True)
    assert r["s"] == OK and r["r"] == 5, r


async def test_new_leader_serves_linearizable_reads_before_any_new_write(
        cluster: Cluster) -> None:
    c = cluster.client()
    old = await cluster.wait_leader()
    assert (await c.call("MAP_PUT", name="m", key="a", value=b"1"))["s"] == OK
    to = next(n for n in cluster.ids if n != old)
    assert (await c.call("LEADER_TRANSFER", to=to, retry_unknown=True))["s"] == OK
    assert await cluster.wait_leader(not_in=(old,)) == to
    r = await cluster.request(to, "MAP_GET", timeout=10, name="m", key="a")
    assert r is not None and r["s"] == OK and r["r"] == b"1", r


async def test_a_killed_leader_is_replaced_before_the_election_timeout(
        cluster_factory: ClusterFactory) -> None:
    """Election timeouts of 5 s, yet a leader whose process is killed is replaced well within
    them: its followers' dials are refused, which proves the process gone (RaftCore.peer_gone).
    Only that path can elect a leader before the 5 s are up."""
    cluster = await cluster_factory(election_ticks_min=250, election_ticks_max=251)
    old = await cluster.wait_leader(timeout=30)
    c = cluster.client()
    r = await c.call("MAP_PUT", name="m", key="before", value=b"1")
    assert r["s"] == OK, r
    t_kill = trio.current_time()
    await cluster.kill(old)
    survivors = [n for n in cluster.ids if n != old]
    new = await cluster.wait_leader(among=survivors, timeout=4.0)
    took = trio.current_time() - t_kill
    print(f"SIGKILL of {old}: {new} leads after {took:.3f} s (election timeout 5 s)")
    r = await c.call("MAP_GET", name="m", key="before", retry_unknown=True)
    assert r["s"] == OK and r["r"] == b"1", r
