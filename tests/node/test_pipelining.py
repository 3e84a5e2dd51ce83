"""Pipelined requests on one connection: more than the connection's slots, mixed outcomes
(applied writes, reads, refusals, node-local answers, a waiting poll), every request answered
exactly once, answers in one order-independent stream, and the node healthy afterwards."""

from __future__ import annotations

from typing import Any

import trio

from loom.node.config import Limits
from loom.wire import catalog
from loom.wire.codec import encode
from loom.wire.errors import Status
from tests.conftest import PKI, NodeFactory, connect
from tests.node.conftest import BAD_REQUEST, FORBIDDEN, OK, healthy

BUSY = int(Status.BUSY)


def req(rid: int, op: str, **body: Any) -> bytes:
    return encode({"v": 1, "id": rid, "op": catalog.BY_NAME[op].opcode, "b": body})


async def test_more_requests_than_slots_each_answered_once(start_node: NodeFactory,
                                                           pki: PKI) -> None:
    node = await start_node(limits=Limits(max_outstanding_per_connection=8,
                                          max_output_buffer_frames=16))
    admin = await connect(node, pki, "admin")
    assert (await admin.request("LATCH_TRY_SET_COUNT", name="gate", count=1))["r"] is True
    conn = await connect(node, pki, "writer")
    expect: dict[int, int] = {}
    frames = []
    rid = 100
    for i in range(300):
        rid += 1
        kind = i % 6
        if kind in (0, 1):
            frames.append(req(rid, "MAP_PUT", name="data", key=f"k{i}", value=b"v%d" % i))
            expect[rid] = OK
        elif kind == 2:
            frames.append(req(rid, "MAP_GET", name="data", key=f"k{i - 2}"))
            expect[rid] = OK
        elif kind == 3:
            frames.append(req(rid, "LOCK_UNLOCK", name="l", session_id=1))
            expect[rid] = FORBIDDEN  # reserved to admin
        elif kind == 4:
            frames.append(req(rid, "MAP_PUT", name="data", key=7, value=b"x"))
            expect[rid] = BAD_REQUEST  # a key must be a string
        else:
            frames.append(req(rid, "PING"))
            expect[rid] = OK
    frames.append(req(1, "LATCH_AWAIT", name="gate", timeout_ms=200))  # waits, answers False
    expect[1] = OK
    async with trio.open_nursery() as n:
        n.start_soon(conn.send_raw, b"".join(frames))  # far beyond the 8 slots: TCP pushback
        seen: dict[int, dict[str, Any]] = {}
        while len(seen) < len(expect):
            r = await conn.recv()
            assert r is not None, "the connection closed"
            assert r["id"] not in seen, f"request {r['id']} answered twice"
            seen[r["id"]] = r
    assert {i: r["s"] for i, r in seen.items()} == expect
    assert seen[1]["r"] is False
    # Requests in flight together are concurrent (a pipelined read need not see the write
    # sent just before it); once answered, every write is visible.
    for i in range(0, 300, 6):
        got = await conn.request("MAP_GET", name="data", key=f"k{i + 1}")
        assert got["r"] == b"v%d" % (i + 1), got
    await healthy(conn)
    for c in (conn, admin):
        await c.aclose()


async def test_a_burst_beyond_the_log_inbox_is_shed_with_busy(start_node: NodeFactory,
                                                              pki: PKI) -> None:
    node = await start_node(limits=Limits(max_pending_proposals=4))
    conn = await connect(node, pki, "writer")
    n = 200
    await conn.send_raw(b"".join(
        req(i, "MAP_PUT", name="shed", key=f"k{i}", value=b"v") for i in range(1, n + 1)))
    answers: dict[int, dict[str, Any]] = {}
    while len(answers) < n:
        r = await conn.recv()
        assert r is not None and r["id"] not in answers, r
        answers[r["id"]] = r
    busy = [i for i, r in answers.items() if r["s"] == BUSY]
    ok = [i for i, r in answers.items() if r["s"] == OK]
    assert len(busy) + len(ok) == n, {r["s"] for r in answers.values()}
    assert busy and ok, (len(busy), len(ok))
    assert all(answers[i]["e"]["retry_after_ms"] > 0 for i in busy)
    # A shed write was never proposed; an acknowledged one is there.
    for i in (busy[0], busy[-1], ok[0], ok[-1]):
        got = await conn.request("MAP_GET", name="shed", key=f"k{i}")
        assert got["r"] == (b"v" if i in ok else None), (i, got)
    await healthy(conn)
    await conn.aclose()


async def test_read_consistency_field(start_node: NodeFactory, pki: PKI) -> None:
    node = await start_node()
    conn = await connect(node, pki, "admin")
    assert (await conn.request("MAP_PUT", name="c", key="k", value=b"v"))["s"] == OK

    async def raw(c: object, **body: Any) -> dict[str, Any]:
        await conn.send_raw(encode({"v": 1, "id": 7, "op": catalog.BY_NAME["MAP_GET"].opcode,
                                    "b": {"name": "c", "key": "k"}, "c": c, **body}))
        r = await conn.recv()
        assert r is not None and r["id"] == 7, r
        return r

    assert (await raw("stale"))["r"] == b"v"
    assert (await raw("linearizable"))["r"] == b"v"
    for bad in ("eventual", 1, None):
        assert (await raw(bad))["s"] == BAD_REQUEST
    await conn.send_raw(encode({"v": 1, "id": 8, "op": catalog.BY_NAME["MAP_PUT"].opcode,
                                "b": {"name": "c", "key": "k", "value": b"w"}, "c": "stale"}))
    r = await conn.recv()
    assert r is not None and r["s"] == BAD_REQUEST and "only reads" in r["e"]["msg"], r
    assert (await conn.request("MAP_GET", name="c", key="k"))["r"] == b"v"  # not written
    await conn.aclose()


async def test_answers_written_directly_to_a_client_that_stops_reading_arrive_whole(
        start_node: NodeFactory, pki: PKI) -> None:
    # One request in flight at a time, so each answer is written without the connection's
    # writer; the client reads nothing until the socket buffers are long full (20 MiB), so
    # later answers are left half-written and must be finished, in order, by the writer.
    node = await start_node()
    conn = await connect(node, pki, "admin")
    big = bytes(range(256)) * 4000  # 1,024,000 bytes
    assert (await conn.request("MAP_PUT", name="m", key="big", value=big))["s"] == OK
    for rid in range(1000, 1020):
        await conn.send_raw(req(rid, "MAP_GET", name="m", key="big"))
        await trio.sleep(0.05)  # answered (or stuck in a full socket) before the next one
    with trio.fail_after(30):
        for rid in range(1000, 1020):
            r = await conn.recv()
            assert r is not None and r["id"] == rid and r["s"] == OK and r["r"] == big
    await healthy(conn)
    await conn.aclose()
