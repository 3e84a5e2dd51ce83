"""The audit log of a real node (SECURITY-CATALOGUE H1-H4)."""

from __future__ import annotations

import json
import threading
from typing import Any

import trio

from loom.node.config import AuditConfig
from loom.node.server import Node
from tests.conftest import MemorySink, NodeFactory
from tests.node.conftest import (
    BAD_REQUEST,
    FORBIDDEN,
    OK,
    WRITER_P,
    Dial,
    audit_flushed,
    frame,
    raw_request,
    records,
)

FIELDS = {"ts", "node", "seq", "client_id", "principal", "roles", "command", "result",
          "duration_ms"}
SECRET = b"SECRET-VALUE-7f3a9c"


async def test_one_record_per_write_outcome(node: Node, dial: Dial) -> None:
    admin = await dial(node, "admin")
    writer = await dial(node, "writer")
    who = (await admin.request("WHOAMI"))["r"]["connection"]
    expected: list[tuple[str, str, str | None]] = []  # (command, result, key)

    async def go(conn: Any, op: str, result: str, audit_key: str | None = None,
                 **body: Any) -> dict[str, Any]:
        r = await conn.request(op, **body)
        expected.append((op, result, audit_key))
        return r

    r = await go(admin, "MAP_PUT", "ok", "k1", name="m", key="k1", value=b"v")
    assert r["s"] == OK
    r = await go(writer, "MAP_DELETE", "denied", "k1", name="m", key="k1")
    assert r["s"] == FORBIDDEN
    s = (await go(admin, "SESSION_OPEN", "ok"))["r"]["session_id"]
    r = await go(admin, "LOCK_UNLOCK", "conflict", None, name="L", session_id=s)
    assert r["s"] == 5, r
    r = await go(admin, "LIST_SET", "not_found", None, name="l", index=3, value=b"x")
    assert r["s"] == 4, r
    r = await go(admin, "COUNTER_ADD", "bad_request", None, name="c", delta=True)
    assert r["s"] == BAD_REQUEST
    # Reads are not modifications: no record (audit_reads is off).
    assert (await admin.request("MAP_GET", name="m", key="k1"))["s"] == OK
    assert (await admin.request("PING"))["s"] == OK
    await audit_flushed(node)
    recs = records(node)
    assert [(x["command"], x["result"]) for x in recs] == [(c, r) for c, r, _ in expected]
    for rec, (_, _, key) in zip(recs, expected, strict=True):
        missing = FIELDS - set(rec)
        assert not missing, (missing, rec)
        assert rec["node"] == "n1"
        assert isinstance(rec["duration_ms"], int | float) and rec["duration_ms"] >= 0
        if key is not None:
            assert rec["key"] == key and rec["structure"] == "m", rec
    assert [x["seq"] for x in recs] == list(range(1, len(recs) + 1))
    assert recs[0]["client_id"] == who
    assert recs[1]["principal"] == WRITER_P
    assert recs[1]["roles"] == ["data-writer", "reader"]


async def test_no_values_in_records(node: Node, dial: Dial) -> None:
    admin = await dial(node, "admin")
    writer = await dial(node, "writer")
    v = SECRET
    for conn in (admin, writer):
        await conn.request("MAP_PUT", name="m", key="k", value=v)
        await conn.request("MAP_PUT_ALL", name="m", entries={"a": v, "b": v})
        await conn.request("MAP_COMPARE_AND_SET", name="m", key="k", expected=v, value=v)
        await conn.request("QUEUE_PUSH", name="q", value=v)
        await conn.request("ATOMIC_REF_SET", name="r", value=v)
        await conn.request("TOPIC_PUBLISH", name="t", value=v)
        await conn.request("BATCH_EXECUTE", ops=[
            {"op": "MAP_PUT", "b": {"name": "m", "key": "k", "value": v}}])
        await conn.request("MAP_PUT", name="m", key="k", value=v, colour=v.decode())
        await conn.request("MAP_PUT", name="m", key="k", value=v.decode())
    await audit_flushed(node)
    text = "\n".join(node.sink.lines)  # type: ignore[attr-defined]
    assert len(node.sink.lines) >= 18  # type: ignore[attr-defined]
    assert SECRET.decode() not in text
    assert SECRET.hex() not in text
    assert "U0VDUkVU" not in text  # base64 of the value's start


async def test_control_characters_escaped_one_record_one_line(node: Node, dial: Dial) -> None:
    admin = await dial(node, "admin")
    keys = ["a\u0085b", "line\u2028sep", "para\u2029sep", "rtl\u202eoverride", "bom\ufeff",
            "é-ü", "zero\u200bwidth"]
    for k in keys:
        r = await admin.request("MAP_PUT", name="m", key=k, value=b"v")
        assert r["s"] == OK, (k, r)
    for bad in ["new\nline", "cr\rlf", "nul\x00", "esc\x1b[2J", "del\x7f"]:
        r = await admin.request("MAP_PUT", name="m", key=bad, value=b"v")
        assert r["s"] == BAD_REQUEST, (bad, r)
    await audit_flushed(node)
    lines: list[str] = node.sink.lines  # type: ignore[attr-defined]
    assert len(lines) == len(keys) + 5
    for line in lines:
        assert "\n" not in line and "\r" not in line
        assert line.isascii(), line  # every non-ASCII character escaped
        assert all(0x20 <= ord(ch) < 0x7F for ch in line), line
    got = [json.loads(x).get("key") for x in lines[: len(keys)]]
    assert got == keys
    for line in lines[len(keys):]:
        assert json.loads(line)["result"] == "bad_request"


async def test_client_supplied_ids_cannot_replace_client_id(node: Node, dial: Dial) -> None:
    admin = await dial(node, "admin", hello=False)
    r = await admin.request("HELLO", client_name="tests", min_version=1, max_version=1,
                            client_id="c1")
    assert r["s"] == OK
    conn_id = r["r"]["connection"]
    # A request id, a sequence number and forwarding headers do not change who is recorded.
    r = await raw_request(admin, frame("MAP_PUT", {"name": "m", "key": "k", "value": b"v"},
                                       rid=424242, q=77))
    assert r is not None and r["s"] == OK
    for h in ({"X-Request-Id": "c999"}, {"X-Forwarded-For": "10.9.9.9"},
              {"X-Client-Id": "c999"}):
        r = await raw_request(admin, frame("MAP_PUT", {"name": "m", "key": "k", "value": b"v"},
                                           rid=5, headers=h))
        assert r is not None and r["s"] in (BAD_REQUEST, 2), r
    r = await raw_request(admin, frame("MAP_PUT", {"name": "m", "key": "k", "value": b"v",
                                                   "client_id": "c999"}, rid=6))
    assert r is not None and r["s"] == BAD_REQUEST
    await audit_flushed(node)
    recs = records(node)
    assert len(recs) == 5
    assert {x["client_id"] for x in recs} == {conn_id}
    text = "\n".join(node.sink.lines)  # type: ignore[attr-defined]
    assert "c999" not in text and "10.9.9.9" not in text and "424242" not in text


# -- H2/H3: overflow and the priority lane -------------------------------------------------------
class BlockingSink(MemorySink):
    """A sink whose writes wait until released (as a stalled disk or pipe would)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def write_lines(self, lines: list[str]) -> None:
        self.entered.set()
        if not self.release.wait(timeout=60):
            raise OSError("test sink was never released")
        super().write_lines(lines)


async def _wait_entered(sink: BlockingSink) -> None:
    for _ in range(500):
        if sink.entered.is_set():
            return
        await trio.sleep(0.01)
    raise AssertionError("the drainer never reached the sink")


def _check_coverage(node: Node, recs: list[dict[str, Any]]) -> set[int]:
    present = {x["seq"] for x in recs}
    covered: set[int] = set()
    for x in recs:
        for lo, hi in x.get("dropped", []):
            rng = set(range(lo, hi + 1))
            assert not rng & present, f"a record reported dropped is present: {lo}..{hi}"
            assert all(s < x["seq"] for s in rng), x
            covered |= rng
    top = max(present)
    assert present | covered == set(range(1, top + 1)), "a seq is neither present nor dropped"
    missing = top - len(present)
    assert missing == len(covered)
    assert missing == node.audit.statistics().dropped
    return covered


async def test_overflow_makes_loss_visible(start_node: NodeFactory, dial: Dial) -> None:
    sink = BlockingSink()
    node = await start_node(sink=sink, audit=AuditConfig(sink="off", queue_size=4,
                                                         priority_queue_size=4))
    try:
        admin = await dial(node, "admin")
        writer = await dial(node, "writer")
        assert (await writer.request("MAP_PUT", name="m", key="first", value=b"v"))["s"] == OK
        await _wait_entered(sink)
        for i in range(500):
            r = await writer.request("MAP_PUT", name="m", key=f"k{i}", value=b"v")
            assert r["s"] == OK, r  # writes never wait for the audit sink
        assert node.audit.statistics().dropped > 0
        # Security events still get through the priority lane while data records drop.
        r = await writer.request("MAP_DELETE", name="m", key="k1")
        assert r["s"] == FORBIDDEN
        denied_seq = node.audit.statistics().emitted
        assert (await admin.request("ACL_GET"))["s"] == OK
        admin_seq = node.audit.statistics().emitted
    finally:
        sink.release.set()
    await audit_flushed(node)
    # One more record carries the ranges dropped since the last one that got through.
    assert (await writer.request("MAP_PUT", name="m", key="last", value=b"v"))["s"] == OK
    await audit_flushed(node)
    recs = records(node)
    dropped = _check_coverage(node, recs)
    assert len(dropped) > 400
    by_seq = {x["seq"]: x for x in recs}
    assert by_seq[denied_seq]["command"] == "MAP_DELETE"
    assert by_seq[denied_seq]["result"] == "denied"
    assert by_seq[admin_seq]["command"] == "ACL_GET"
    st = node.audit.statistics()
    assert st.emitted == len(recs) + st.dropped
    assert (await admin.request("NODE_STATS"))["r"]["audit"]["dropped"] == st.dropped


async def test_no_drops_at_nominal_load(start_node: NodeFactory, dial: Dial) -> None:
    node = await start_node(audit=AuditConfig(sink="off", queue_size=64,
                                              priority_queue_size=16))
    w = await dial(node, "writer")
    for i in range(200):
        assert (await w.request("MAP_PUT", name="m", key=f"k{i}", value=b"v"))["s"] == OK
    await audit_flushed(node)
    recs = records(node)
    assert [x["seq"] for x in recs] == list(range(1, 201))
    assert not any("dropped" in x for x in recs)
    assert node.audit.statistics().dropped == 0
