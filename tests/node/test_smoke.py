from __future__ import annotations

from loom.node.server import Node
from tests.conftest import RawConn


async def test_put_get_roundtrip(node: Node, admin: RawConn) -> None:
    r = await admin.request("MAP_PUT", name="default", key="k", value=b"v")
    assert r["s"] == 0, r
    r = await admin.request("MAP_GET", name="default", key="k")
    assert r == {"id": r["id"], "s": 0, "r": b"v"}
