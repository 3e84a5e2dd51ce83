"""The catalog's execution column decides the path: log reads append nothing to the log."""

from __future__ import annotations

from loom.node.server import Node
from tests.conftest import RawConn
from tests.node.conftest import OK, frame, raw_request

ADMIN_READS = (
    ("ACL_GET", {}),
    ("STRUCT_LIST", {"limit": 10}),
    ("STRUCT_STATS", {"category": "MAP", "name": "m"}),
)


def last_index(node: Node) -> int:
    return node.log.statistics().last_index


async def test_admin_reads_append_no_log_entry(node: Node, admin: RawConn) -> None:
    r = await admin.request("MAP_PUT", name="m", key="k", value=b"v")
    assert r["s"] == OK, r
    before = last_index(node)
    for op, body in ADMIN_READS:
        r = await admin.request(op, **body)
        assert r["s"] == OK, (op, r)
        assert last_index(node) == before, f"{op} appended a log entry"
    assert (await admin.request("STRUCT_STATS", category="MAP", name="m"))["r"]["size"] == 1
    # Stale, from the replica at once: allowed for reads, and still nothing appended.
    r = await raw_request(admin, frame("ACL_GET", rid=99, c="stale"))
    assert r is not None and r["s"] == OK, r
    assert last_index(node) == before
    # The contrast that makes the test able to fail: a write appends exactly one entry.
    r = await admin.request("STRUCT_DESTROY", category="MAP", name="m")
    assert r["s"] == OK and r["r"] is True, r
    assert last_index(node) == before + 1


async def test_stale_is_refused_on_types_that_change_state(admin: RawConn) -> None:
    for op, body in (("MAP_PUT", {"name": "m", "key": "k", "value": b"v"}),
                     ("MEMBER_PROMOTE", {"node": "n9"})):
        r = await raw_request(admin, frame(op, body, rid=7, c="stale"))
        assert r is not None and r["s"] != OK and r["e"]["code"] == "BAD_REQUEST", (op, r)
