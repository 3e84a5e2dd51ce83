"""Helpers shared by the node-level security and robustness tests.

Every node here is a real in-process `Node` on 127.0.0.1 port 0 with real TLS and the dev PKI
(tests/conftest.py); waits are bounded by a count of short sleeps, never asserted on timing.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio

from loom.node.server import Node
from loom.wire import catalog
from loom.wire.codec import encode
from loom.wire.errors import Status
from tests.conftest import PKI, TEST_ACL, RawConn, connect

OK = int(Status.OK)
BAD_REQUEST = int(Status.BAD_REQUEST)
UNAUTHENTICATED = int(Status.UNAUTHENTICATED)
FORBIDDEN = int(Status.FORBIDDEN)
TOO_LARGE = int(Status.TOO_LARGE)

ADMIN_P = "spiffe://loom.dev/client/admin"
WRITER_P = "spiffe://loom.dev/client/writer"
READER_P = "spiffe://loom.dev/client/reader"
EDGE_GW_P = "spiffe://loom.dev/gateway/edge"


def policy_with(roles: dict[str, Any], principals: dict[str, list[str]],
                users: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """TEST_ACL plus extra roles, with some principals remapped."""
    return {
        "guest_roles": list(TEST_ACL["guest_roles"]),
        "roles": {**TEST_ACL["roles"], **roles},
        "principals": {**TEST_ACL["principals"], **principals},
        "users": {**TEST_ACL["users"], **(users or {})},
    }


def frame(op: str | int, body: Any = None, rid: int = 1, headers: Any = None,
          **extra: Any) -> bytes:
    opcode = catalog.BY_NAME[op].opcode if isinstance(op, str) else op
    obj: dict[str, Any] = {"v": 1, "id": rid, "op": opcode, "b": {} if body is None else body}
    if headers is not None:
        obj["h"] = headers
    obj.update(extra)
    return encode(obj)


async def raw_request(conn: RawConn, data: bytes) -> dict[str, Any] | None:
    """Send raw bytes and read one reply frame (None at EOF)."""
    await conn.send_raw(data)
    return await conn.recv()


async def audit_flushed(node: Node) -> None:
    """Wait (bounded) until every emitted audit record has been written or counted dropped."""
    for _ in range(1000):
        st = node.audit.statistics()
        if st.written + st.dropped >= st.emitted:
            return
        await trio.sleep(0.01)
    raise AssertionError(f"audit did not drain: {node.audit.statistics()}")


def records(node: Node) -> list[dict[str, Any]]:
    return [json.loads(x) for x in node.sink.lines]  # type: ignore[attr-defined]


async def recv_eof_or_error(conn: RawConn, timeout: float = 10) -> list[dict[str, Any]]:
    """Read frames until the server closes the connection; returns the frames received.

    Fails if the server keeps the connection open beyond `timeout`.
    """
    frames: list[dict[str, Any]] = []
    for _ in range(100):
        try:
            f = await conn.recv(timeout=timeout)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
            return frames
        if f is None:
            return frames
        frames.append(f)
    raise AssertionError(f"server kept answering: {frames[-3:]}")


async def healthy(conn: RawConn) -> None:
    """The connection (opened before some abuse) is still served."""
    r = await conn.request("PING")
    assert r["s"] == OK, r
    r = await conn.request("MAP_GET", name="health", key="k")
    assert r["s"] == OK, r


Dial = Callable[..., Awaitable[RawConn]]


@pytest.fixture
async def dial(pki: PKI, nursery: trio.Nursery) -> AsyncIterator[Dial]:
    """`conn = await dial(node, "writer", hello=True, ctx=None)`; closed at teardown."""
    opened: list[RawConn] = []

    async def _dial(node: Node, name: str | None = "admin", **kw: Any) -> RawConn:
        c = await connect(node, pki, name, **kw)
        opened.append(c)
        return c

    yield _dial
    for c in opened:
        await c.aclose()
