"""Gateway-asserted identity on a real node (SECURITY-CATALOGUE C1-C7)."""

from __future__ import annotations

from typing import Any

import pytest

from loom.node.server import Node
from tests.conftest import NodeFactory, RawConn
from tests.node.conftest import (
    ADMIN_P,
    BAD_REQUEST,
    EDGE_GW_P,
    FORBIDDEN,
    OK,
    TOO_LARGE,
    UNAUTHENTICATED,
    Dial,
    audit_flushed,
    policy_with,
    records,
)


def H(user: str | None = "alice", roles: str | None = None, **extra: str) -> dict[str, str]:
    h = {} if user is None else {"X-Auth-User": user}
    if roles is not None:
        h["X-Auth-Roles"] = roles
    h.update(extra)
    return h


async def whoami(c: RawConn, headers: dict[str, str]) -> dict[str, Any]:
    return await c.request("WHOAMI", headers=headers)


async def test_gateway_asserted_reader(node: Node, dial: Dial) -> None:
    gw = await dial(node, "edge")
    admin = await dial(node, "admin")
    await admin.request("MAP_PUT", name="m", key="k", value=b"v")
    h = H("alice", "reader")
    r = await whoami(gw, h)
    assert r["s"] == OK, r
    assert r["r"]["principal"] == "user:alice"
    assert r["r"]["roles"] == ["reader"]
    assert r["r"]["via_gateway"] == EDGE_GW_P
    r = await gw.request("MAP_GET", headers=h, name="m", key="k")
    assert r["s"] == OK and r["r"] == b"v", r
    before = node.state.snapshot()
    r = await gw.request("MAP_PUT", headers=h, name="m", key="k", value=b"w")
    assert r["s"] == FORBIDDEN, r
    assert node.state.snapshot() == before
    # A user known only by the asserted roles: "bob" has no policy entry.
    r = await whoami(gw, H("bob", "reader"))
    assert r["r"]["principal"] == "user:bob" and r["r"]["roles"] == ["reader"]
    # No roles header: only the policy's users table counts (alice -> reader; bob -> none).
    assert (await whoami(gw, H("alice")))["r"]["roles"] == ["reader"]
    r = await whoami(gw, H("bob"))
    assert r["r"]["roles"] == []
    r = await gw.request("MAP_GET", headers=H("bob"), name="m", key="k")
    assert r["s"] == FORBIDDEN
    await audit_flushed(node)
    put = [x for x in records(node) if x.get("command") == "MAP_PUT"
           and x.get("principal") == "user:alice"]
    assert len(put) == 1 and put[0]["result"] == "denied"
    assert put[0]["via_gateway"] == EDGE_GW_P


async def test_gateway_without_user_is_never_the_gateway(node: Node, dial: Dial) -> None:
    gw = await dial(node, "edge")
    before = node.state.snapshot()
    for headers in (None, {"X-Auth-Roles": "admin"}):
        for op, body in [("WHOAMI", {}), ("MAP_PUT", {"name": "m", "key": "k", "value": b"v"}),
                         ("MAP_GET", {"name": "m", "key": "k"})]:
            r = await gw.request(op, headers=headers, **body)
            assert r["s"] == UNAUTHENTICATED, (op, headers, r)
    assert node.state.snapshot() == before
    # Even PING carries the rule: a gateway connection always speaks for someone.
    r = await gw.request("PING")
    assert r["s"] in (OK, UNAUTHENTICATED)


async def test_headers_from_admin_client_refused_and_audited(node: Node, dial: Dial) -> None:
    admin = await dial(node, "admin")
    before = node.state.snapshot()
    r = await admin.request("MAP_PUT", headers=H("root", "admin"), name="m", key="k",
                            value=b"v")
    assert r["s"] == UNAUTHENTICATED, r
    r = await admin.request("WHOAMI", headers=H("alice"))
    assert r["s"] == UNAUTHENTICATED, r
    assert node.state.snapshot() == before
    # The connection is still the admin without headers.
    r = await admin.request("WHOAMI")
    assert r["r"]["principal"] == ADMIN_P
    await audit_flushed(node)
    ev = [x for x in records(node) if x.get("event") == "identity_assertion_refused"]
    assert len(ev) == 2, ev
    assert ev[0]["command"] == "MAP_PUT"
    assert ev[0]["result"] in ("denied", "unauthenticated"), ev[0]
    assert ev[0]["principal"] == ADMIN_P
    assert "root" not in " ".join(node.sink.lines)  # type: ignore[attr-defined]


AMBIGUOUS: list[dict[str, str]] = [
    {"x-auth-user": "alice"},
    {"X-AUTH-USER": "alice"},
    {"X-Auth_User": "alice"},
    {"X_Auth_User": "alice"},
    {" X-Auth-User": "alice"},
    {"X-Auth-User ": "alice"},
    {"X-Auth-User": "alice", "x-auth-user": "admin"},
    {"X-Auth-User": "alice", "X-Auth_User": "admin"},
    {"X-Auth-User": "alice", "x-auth-roles": "admin"},
    {"X-Auth-User": "alice", "X-Forwarded-For": "10.0.0.1"},
    {"X-Auth-User": "alice", "X-Request-Id": "abc"},
    {"X-Auth-User": "alice\r\nX-Auth-Roles: admin"},
    {"X-Auth-User": "alice\n"},
    {"X-Auth-User": "ali\x00ce"},
    {"X-Auth-User": "alice\x1b[31m"},
    {"X-Auth-User": "alice\u200b"},
    {"X-Auth-User": " alice"},
    {"X-Auth-User": "alice "},
    {"X-Auth-User": ""},
    {"X-Auth-User": "alice", "X-Auth-Roles": "reader\r\n"},
    {"X-Auth-User": "alice", "X-Auth-Roles": "reader,,admin"},
    {"X-Auth-User": "alice", "X-Auth-Roles": ""},
    {"X-Auth-User": "alice", "X-Auth-Roles": "reader,"},
]


@pytest.mark.parametrize("headers", AMBIGUOUS, ids=repr)
async def test_ambiguous_or_dirty_headers_refused(headers: dict[str, str], node: Node,
                                                  dial: Dial) -> None:
    gw = await dial(node, "edge")
    before = node.state.snapshot()
    r = await gw.request("MAP_PUT", headers=headers, name="m", key="k", value=b"v")
    assert r["s"] in (BAD_REQUEST, UNAUTHENTICATED, TOO_LARGE), r
    r = await whoami(gw, headers)
    assert r["s"] in (BAD_REQUEST, UNAUTHENTICATED, TOO_LARGE), r
    assert node.state.snapshot() == before
    assert (await whoami(gw, H("alice", "reader")))["s"] == OK  # the connection goes on


@pytest.mark.parametrize("headers", [
    H("a" * 129, "reader"),
    H("a" * 600, "reader"),
    H("a" * 5000, "reader"),
    H("alice", "reader," * 400 + "reader"),
    H("alice", ",".join(["reader"] * 17)),
    H("alice", ",".join(f"r{i}" for i in range(17))),
    {f"X-Pad-{i}": "x" for i in range(20)},
], ids=["user-129", "user-600", "user-5000", "roles-long", "roles-17", "unknown-17", "many"])
async def test_oversized_headers_refused(headers: dict[str, str], node: Node,
                                         dial: Dial) -> None:
    gw = await dial(node, "edge")
    r = await whoami(gw, headers)
    assert r["s"] in (BAD_REQUEST, TOO_LARGE), r
    assert (await whoami(gw, H("alice", "reader")))["s"] == OK


async def test_sixteen_roles_accepted(node: Node, dial: Dial) -> None:
    gw = await dial(node, "edge")
    r = await whoami(gw, H("bob", ",".join(["reader"] + [f"r{i}" for i in range(15)])))
    assert r["s"] == OK and r["r"]["roles"] == ["reader"], r


@pytest.mark.parametrize("roles,expected", [
    ("Admin", []),
    ("ADMIN", []),
    ("admin ", None),  # surrounding whitespace of the whole value: refused
    ("superuser", []),
    ("admin*", []),
    ("reader, Admin", ["reader"]),
    ("data-writer, admin", ["data-writer", "admin"]),
    ("reader , reader", ["reader"]),
])
async def test_roles_matched_exactly(roles: str, expected: list[str] | None, node: Node,
                                     dial: Dial) -> None:
    gw = await dial(node, "edge")
    r = await whoami(gw, H("bob", roles))
    if expected is None:
        assert r["s"] in (BAD_REQUEST, UNAUTHENTICATED), r
        return
    assert r["s"] == OK, r
    assert r["r"]["roles"] == expected
    before = node.state.snapshot()
    r = await gw.request("ACL_GET", headers=H("bob", roles))
    assert (r["s"] == OK) == ("admin" in expected), r
    if "admin" not in expected:
        assert node.state.snapshot() == before


async def test_asserted_admin_honoured_only_when_policy_knows_the_role(
        start_node: NodeFactory, dial: Dial) -> None:
    """An asserted role means something only because the policy defines it."""
    acl = policy_with({}, {})
    acl["roles"] = {k: v for k, v in acl["roles"].items() if k != "admin"}
    acl["principals"] = {p: [r for r in rs if r != "admin"]
                         for p, rs in acl["principals"].items()}
    node = await start_node(acl=acl)
    gw = await dial(node, "edge")
    r = await whoami(gw, H("bob", "admin"))
    assert r["s"] == OK and r["r"]["roles"] == [], r
    r = await gw.request("ACL_GET", headers=H("bob", "admin"))
    assert r["s"] == FORBIDDEN, r


async def test_gateway_not_on_allow_list_is_a_plain_client(start_node: NodeFactory,
                                                          dial: Dial) -> None:
    """C3: a gateway-role certificate that is not configured is not trusted for headers."""
    node = await start_node(gateway_identities=())
    gw = await dial(node, "edge")
    r = await whoami(gw, H("alice", "admin"))
    assert r["s"] == UNAUTHENTICATED, r
    r = await gw.request("WHOAMI")
    assert r["s"] == OK and r["r"]["principal"] == EDGE_GW_P and r["r"]["roles"] == []
