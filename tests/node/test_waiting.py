"""Waiting operations and topic pushes through the real node: waiters are woken by applies,
time out cleanly, and leave nothing behind when their connection dies."""

from __future__ import annotations

import trio

from loom.node.server import Node
from tests.conftest import PKI, RawConn, connect


async def _session(c: RawConn) -> int:
    r = await c.request("SESSION_OPEN", ttl_ms=60_000)
    assert r["s"] == 0, r
    return int(r["r"]["session_id"])


async def test_poll_waits_until_a_push_wakes_it(node: Node, pki: PKI) -> None:
    a, b = await connect(node, pki), await connect(node, pki)
    got: list[dict[str, object]] = []

    async def poll() -> None:
        got.append(await a.request("QUEUE_POLL", name="jobs", timeout_ms=10_000))

    async with trio.open_nursery() as n:
        n.start_soon(poll)
        await trio.sleep(0.2)  # the poll is waiting (nothing to take yet)
        assert not got
        assert (await b.request("QUEUE_PUSH", name="jobs", value=b"job-1"))["s"] == 0
    assert got[0]["s"] == 0 and got[0]["r"] == b"job-1"
    assert (await b.request("QUEUE_SIZE", name="jobs"))["r"] == 0
    await a.aclose()
    await b.aclose()


async def test_poll_times_out_with_nothing(node: Node, admin: RawConn) -> None:
    r = await admin.request("QUEUE_POLL", name="empty", timeout_ms=150)
    assert r["s"] == 0 and r["r"] is None


async def test_lock_waiter_gets_the_lock_with_a_larger_fence(node: Node, pki: PKI) -> None:
    a, b = await connect(node, pki), await connect(node, pki)
    sa, sb = await _session(a), await _session(b)
    first = await a.request("LOCK_LOCK", name="L", session_id=sa, timeout_ms=0)
    assert first["s"] == 0 and isinstance(first["r"], int)
    got: list[dict[str, object]] = []

    async def lock_b() -> None:
        got.append(await b.request("LOCK_LOCK", name="L", session_id=sb, timeout_ms=10_000))

    async with trio.open_nursery() as n:
        n.start_soon(lock_b)
        await trio.sleep(0.2)
        assert not got
        assert (await a.request("LOCK_UNLOCK", name="L", session_id=sa))["s"] == 0
    assert got[0]["s"] == 0
    assert isinstance(got[0]["r"], int) and got[0]["r"] > first["r"]
    owner = await a.request("LOCK_GET_OWNER", name="L")
    assert owner["r"]["session_id"] == sb
    await a.aclose()
    await b.aclose()


async def test_a_waiter_whose_connection_dies_leaves_no_ghost(node: Node, pki: PKI) -> None:
    a, b = await connect(node, pki), await connect(node, pki)
    sa, sb = await _session(a), await _session(b)
    assert (await a.request("LOCK_LOCK", name="G", session_id=sa, timeout_ms=0))["s"] == 0

    async def doomed() -> None:
        await b.request("LOCK_LOCK", name="G", session_id=sb, timeout_ms=30_000)

    with trio.move_on_after(0.3):
        await doomed()  # cancelled while waiting; then its connection goes away
    await b.aclose()
    assert (await a.request("LOCK_UNLOCK", name="G", session_id=sa))["s"] == 0
    r = await a.request("LOCK_IS_LOCKED", name="G")
    assert r["r"]["locked"] is False  # nothing was granted to the dead waiter
    await a.aclose()


async def test_topic_pushes_and_replays_from_a_sequence(node: Node, pki: PKI) -> None:
    pub, sub = await connect(node, pki), await connect(node, pki)
    for i in range(3):
        r = await pub.request("TOPIC_PUBLISH", name="news", value=f"m{i}".encode())
        assert r["s"] == 0 and r["r"]["seq"] == i + 1
    ack = await sub.request("TOPIC_SUBSCRIBE", name="news", from_seq=2)
    assert ack["s"] == 0
    replay = [await sub.recv(), await sub.recv()]
    assert [(p["p"]["seq"], p["p"]["value"]) for p in replay if p] == [(2, b"m1"), (3, b"m2")]
    assert all(p and p["id"] == ack["id"] for p in replay)
    assert (await pub.request("TOPIC_PUBLISH", name="news", value=b"live"))["s"] == 0
    live = await sub.recv()
    assert live is not None and live["p"]["seq"] == 4 and live["p"]["value"] == b"live"
    await pub.aclose()
    await sub.aclose()
