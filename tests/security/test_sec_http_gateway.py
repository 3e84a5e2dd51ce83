"""SECURITY-CATALOGUE C1-C7 over HTTP: identity headers on the HTTP door of a real node.

The same rules as the binary protocol (security/gateway.py, through the one dispatcher), plus
what only HTTP has: header names spelled with '_' or mixed separators, repeated header lines,
obsolete line folding and raw control bytes. Every refusal is a 4xx with nothing executed, and
leaves one `identity_assertion_refused` audit record.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from loom.node.server import Node
from loom.security.identity import Role
from loom.security.tls import client_context
from tests.conftest import NodeFactory
from tests.http_door.conftest import Http, doc, http_as, start_http_node
from tests.node.conftest import ADMIN_P, EDGE_GW_P, audit_flushed, records
from tests.security.conftest import PKI


@pytest.fixture
def npki(pki: PKI) -> PKI:
    """The security PKI plus a client certificate named like the gateway ("client-edge")."""
    if not (pki.dir / "client-edge.pem").exists():
        pki.issue(pki.dir, "client-edge", role=Role.CLIENT, name="edge")
    return pki


@pytest.fixture
async def gnode(start_node: NodeFactory, npki: PKI) -> Node:
    return await start_http_node(start_node)


@pytest.fixture
async def clients(npki: PKI, gnode: Node) -> AsyncIterator[dict[str, Http]]:
    async with (http_as(npki, gnode, "edge") as gw, http_as(npki, gnode, "admin") as admin,
                http_as(npki, gnode, "client-edge") as lookalike):
        yield {"gw": gw, "admin": admin, "client-edge": lookalike}


def put(value: bytes = b"v") -> tuple[str, str, bytes]:
    return "PUT", "/v1/maps/m/k", value


async def refused_events(node: Node) -> list[dict[str, Any]]:
    await audit_flushed(node)
    return [x for x in records(node) if x.get("event") == "identity_assertion_refused"]


async def test_c1_c3_headers_from_a_client_certificate_are_refused_and_audited(
        gnode: Node, clients: dict[str, Http]) -> None:
    before = gnode.state.snapshot()
    for who in ("admin", "client-edge"):  # C1: a client; C3: same CA, named like the gateway
        for method, path, body in [put(), ("GET", "/v1/maps/m/k", b""),
                                   ("POST", "/v1/call/WHOAMI", b"{}")]:
            ctype = [("content-type", "application/json")] if path.startswith("/v1/call") \
                else []
            r = await clients[who].call(method, path, body=body,
                                        headers=[("X-Auth-User", "root"),
                                                 ("X-Auth-Roles", "admin"), *ctype])
            assert r.status == 401, (who, path, r.body)
            assert doc(r)["code"] == "UNAUTHENTICATED"
    assert gnode.state.snapshot() == before
    ev = await refused_events(gnode)
    assert len(ev) == 6
    assert {e["principal"] for e in ev} == {ADMIN_P, "spiffe://loom.dev/client/edge"}
    # Without the headers the connection is just itself (never silently the asserted user).
    r = await clients["admin"].op("WHOAMI")
    assert doc(r)["result"]["principal"] == ADMIN_P


async def test_c2_headers_without_a_certificate(start_node: NodeFactory, npki: PKI) -> None:
    strict = await start_http_node(start_node)
    async with http_as(npki, strict, None) as anon:
        r = await anon.op("WHOAMI", headers=[("X-Auth-User", "alice")])
        assert r.status == 401
    guests = await start_http_node(start_node, require_client_auth=False,
                                   data_dir=strict.cfg.data_dir.parent / "guests")
    async with http_as(npki, guests, None) as anon:
        r = await anon.op("MAP_GET", {"name": "m", "key": "k"},
                          headers=[("X-Auth-User", "alice"), ("X-Auth-Roles", "admin")])
        assert r.status == 401
    ev = await refused_events(guests)
    assert len(ev) == 1 and ev[0]["principal"] == "guest" and ev[0]["command"] == "MAP_GET"


async def test_c4_gateway_without_user_is_never_the_gateway(
        gnode: Node, clients: dict[str, Http]) -> None:
    gw = clients["gw"]
    for headers in ([], [("X-Auth-Roles", "admin")]):
        r = await gw.call(*put()[:2], body=b"v", headers=headers)
        assert r.status == 401, r.body
        r = await gw.op("WHOAMI", headers=headers)
        assert r.status == 401
    r = await gw.op("WHOAMI", headers=[("X-Auth-User", "alice")])
    res = doc(r)["result"]
    assert res["principal"] == "user:alice" and res["via_gateway"] == EDGE_GW_P


async def test_gateway_asserted_user_is_authorized_and_audited_as_that_user(
        gnode: Node, clients: dict[str, Http]) -> None:
    gw = clients["gw"]
    h = [("X-Auth-User", "alice"), ("X-Auth-Roles", "reader")]
    r = await gw.call(*put()[:2], body=b"v", headers=h)
    assert r.status == 403
    r = await gw.call("GET", "/v1/maps/m/k", headers=h)
    assert r.status == 200
    await audit_flushed(gnode)
    denied = [x for x in records(gnode) if x.get("command") == "MAP_PUT"]
    assert len(denied) == 1
    assert denied[0]["principal"] == "user:alice" and denied[0]["via_gateway"] == EDGE_GW_P


AMBIGUOUS: list[list[tuple[str, str]]] = [
    [("X-Auth-User", "alice"), ("X-Auth-User", "admin")],  # repeated
    [("X-Auth-User", "alice"), ("X-Auth-Roles", "reader"), ("X-Auth-Roles", "admin")],
    [("X-Auth_User", "admin")],  # underscore lookalike
    [("X_Auth_User", "admin")],
    [("X-Auth-User", "alice"), ("x_auth-roles", "admin")],  # mixed separators
    [("X-Auth-User", "alice"), ("X-Auth-Roles", "reader,,admin")],  # empty role item
    [("X-Auth-User", "a" * 600)],  # oversize value
    [("X-Auth-User", "alice"), ("X-Auth-Roles", ",".join(["reader"] * 17))],  # too many roles
    [("X-Auth-User", "al\u200bice".encode().decode("latin-1"))],  # invisible format character
]


@pytest.mark.parametrize("headers", AMBIGUOUS)
async def test_c5_c7_ambiguous_or_oversize_identity_headers_are_400_and_audited(
        headers: list[tuple[str, str]], gnode: Node, clients: dict[str, Http]) -> None:
    before = gnode.state.snapshot()
    r = await clients["gw"].call(*put()[:2], body=b"v", headers=headers)
    assert r.status == 400, r.body
    assert gnode.state.snapshot() == before
    r = await clients["gw"].call("GET", "/v1/maps/m/k", headers=headers)  # a read too
    assert r.status == 400
    ev = await refused_events(gnode)
    assert len(ev) == 2 and {e["command"] for e in ev} == {"MAP_PUT", "MAP_GET"}
    assert all(e["result"] == "bad_request" or e["result"] == "too_large" for e in ev)


async def test_c6_roles_match_exactly(gnode: Node, clients: dict[str, Http]) -> None:
    for roles, expected in [("reader, data-writer", ["reader", "data-writer"]),
                            ("Admin,READER", []), ("reader,nosuchrole", ["reader"])]:
        r = await clients["gw"].op("WHOAMI", headers=[("X-Auth-User", "bob"),
                                                       ("X-Auth-Roles", roles)])
        assert doc(r)["result"]["roles"] == expected, roles


async def raw_exchange(npki: PKI, node: Node, cert: str, head: bytes) -> bytes:
    """Bytes no well-behaved client sends: one request, the whole answer until close."""
    ctx = client_context(npki.ca, *npki.pair(cert))
    assert node.http is not None
    with trio.fail_after(10):
        stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", node.http.port,
                                                     ssl_context=ctx)
        try:
            await stream.send_all(head)
            out = b""
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return out
                out += data
        finally:
            await trio.aclose_forcefully(stream)


@pytest.mark.parametrize("line", [
    b"X-Auth-User: alice\r\n admin\r\n",  # obs-fold
    b"X-Auth-User: al\x01ice\r\n",  # a control character
    b"X-Auth-User: alice\x1b[2J\r\n",  # an escape sequence
])
async def test_c5_c7_raw_header_bytes_are_400_closed_and_audited(
        line: bytes, npki: PKI, gnode: Node) -> None:
    before = gnode.state.snapshot()
    req = (b"PUT /v1/maps/m/k HTTP/1.1\r\nHost: x\r\n" + line
           + b"Content-Length: 1\r\n\r\nv")
    answer = await raw_exchange(npki, gnode, "edge", req)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:80]
    assert gnode.state.snapshot() == before
    ev = await refused_events(gnode)
    assert len(ev) == 1 and ev[0]["principal"] == EDGE_GW_P and ev[0]["result"] == "bad_request"
    assert "\x1b" not in json.dumps(ev)
