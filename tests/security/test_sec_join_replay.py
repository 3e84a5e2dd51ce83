"""SECURITY-CATALOGUE A6 (`sec-peer-join-replay`): a captured membership request replayed on a
new TLS session has no effect.

Loom has no join handshake on the peer port: a node joins only when an administrator's
MEMBER_ADD (an ACL-checked client request over mutual TLS) is committed. Replaying its exact
bytes needs the administrator's key to open a session at all; even then the replay is refused,
whether the node is still a member (a no-op change) or was removed since (a removed id comes
back only by explicit re-admission), and the configuration is unchanged.
"""

from __future__ import annotations

from typing import Any

from loom.wire import catalog
from loom.wire.codec import encode
from tests.conftest import PKI, NodeFactory, connect

OK, FORBIDDEN, CONFLICT = 0, 3, 5


def member_add_frame(rid: int) -> bytes:
    return encode({"v": 1, "id": rid, "op": catalog.BY_NAME["MEMBER_ADD"].opcode,
                   "b": {"node": "n9", "peer_addr": "127.0.0.1:9", "learner": True}})


async def replay(node: Any, pki: PKI, who: str, frame: bytes) -> dict[str, Any]:
    conn = await connect(node, pki, who)  # a new TLS session
    try:
        await conn.send_raw(frame)
        r = await conn.recv()
        assert r is not None
        return r
    finally:
        await conn.aclose()


async def members(node: Any, pki: PKI) -> list[str]:
    conn = await connect(node, pki, "admin")
    try:
        r = await conn.request("MEMBER_LIST")
        return sorted(m["id"] for m in r["r"]["members"])
    finally:
        await conn.aclose()


async def test_a6_replayed_member_add_has_no_effect(start_node: NodeFactory, pki: PKI) -> None:
    node = await start_node()
    captured = member_add_frame(41)
    assert (await replay(node, pki, "admin", captured))["s"] == OK  # the original request
    assert await members(node, pki) == ["n1", "n9"]

    r = await replay(node, pki, "admin", captured)  # replayed while n9 is a member
    assert r["s"] == CONFLICT and "no-op" in r["e"]["msg"], r
    assert await members(node, pki) == ["n1", "n9"]

    r = await replay(node, pki, "writer", captured)  # replayed under another identity
    assert r["s"] == FORBIDDEN, r

    admin = await connect(node, pki, "admin")
    assert (await admin.request("MEMBER_REMOVE", node="n9"))["s"] == OK
    await admin.aclose()
    r = await replay(node, pki, "admin", captured)  # replayed after n9 was removed
    assert r["s"] == CONFLICT and "re-admission" in r["e"]["msg"], r
    assert await members(node, pki) == ["n1"]
