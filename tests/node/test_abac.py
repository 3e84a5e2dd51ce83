"""Attribute conditions on a real node, over the binary protocol and the HTTP door: gateway
attributes honoured, spoofed X-Auth-Attrs refused and audited, denials explained in the error
and the audit record, time conditions read from the deciding node's clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tests.conftest import NodeFactory
from tests.http_door.conftest import doc, http_as, start_http_node
from tests.node.conftest import (
    ADMIN_P,
    EDGE_GW_P,
    FORBIDDEN,
    OK,
    UNAUTHENTICATED,
    Dial,
    audit_flushed,
    policy_with,
    records,
)
from tests.security.conftest import PKI

ACL = policy_with({
    "eu-reader": {"grants": [{"types": ["MAP_GET"], "structures": ["eu.*"],
                              "when": {"attr.region": ["eu"]}}]},
    "office": {"grants": [{"types": ["MAP_GET"], "structures": ["o"],
                           "when": {"time": "08:00-18:00", "days": ["mon", "tue", "wed",
                                                                    "thu", "fri"],
                                    "source": ["127.0.0.0/8"]}}]},
    "lan": {"grants": [{"types": ["MAP_GET"], "structures": ["lan"],
                        "when": {"source": ["10.0.0.0/8"]}}]},
}, {}, {"bob": ["office", "lan"]})
ACL["timezone"] = "Europe/Paris"


def H(**extra: str) -> dict[str, str]:
    return {"X-Auth-User": "carol", "X-Auth-Roles": "eu-reader", **extra}


async def test_gateway_attributes_decide_over_the_binary_protocol(
        start_node: NodeFactory, dial: Dial) -> None:
    node = await start_node(acl=ACL)
    admin, gw = await dial(node, "admin"), await dial(node, "edge")
    await admin.request("MAP_PUT", name="eu.m", key="k", value=b"v")
    r = await gw.request("MAP_GET", headers=H(**{"X-Auth-Attrs": "region=eu"}),
                         name="eu.m", key="k")
    assert r["s"] == OK and r["r"] == b"v", r
    for attrs in ("region=us", None):
        headers = H(**{"X-Auth-Attrs": attrs}) if attrs else H()
        r = await gw.request("MAP_GET", headers=headers, name="eu.m", key="k")
        assert r["s"] == FORBIDDEN, r
        assert "roles.eu-reader.grants[0] applies but its condition failed: attr.region" \
            in r["e"]["reason"], r
    await audit_flushed(node)
    denied = [x for x in records(node) if x.get("command") == "MAP_GET"
              and x.get("result") == "denied"]
    assert len(denied) == 2
    assert "'us' matches none" in denied[0]["reason"]
    assert "no such attribute" in denied[1]["reason"]


async def test_spoofed_attrs_from_a_client_refused_and_audited_binary(
        start_node: NodeFactory, dial: Dial) -> None:
    node = await start_node(acl=ACL)
    admin = await dial(node, "admin")
    r = await admin.request("MAP_GET", headers={"X-Auth-Attrs": "region=eu"},
                            name="eu.m", key="k")
    assert r["s"] == UNAUTHENTICATED, r
    assert (await admin.request("WHOAMI"))["r"]["principal"] == ADMIN_P
    await audit_flushed(node)
    ev = [x for x in records(node) if x.get("event") == "identity_assertion_refused"]
    assert len(ev) == 1 and ev[0]["principal"] == ADMIN_P and ev[0]["command"] == "MAP_GET"


async def test_spoofed_attrs_refused_and_audited_over_http(start_node: NodeFactory,
                                                           pki: PKI) -> None:
    node = await start_http_node(start_node, acl=ACL)
    async with http_as(pki, node, "admin") as admin, http_as(pki, node, "edge") as gw:
        # Spoofed (401) and ambiguously spelled (400): both refused, both audited.
        for name, status in (("X-Auth-Attrs", 401), ("x-auth_attrs", 400)):
            r = await admin.call("GET", "/v1/maps/eu.m/k", headers=[(name, "region=eu")])
            assert r.status == status, r.body
        ok = [("X-Auth-User", "carol"), ("X-Auth-Roles", "eu-reader")]
        r = await gw.call("GET", "/v1/maps/eu.m/k", headers=[*ok, ("X-Auth-Attrs", "region=us")])
        assert r.status == 403 and "attr.region" in doc(r)["detail"], r.body
        r = await gw.call("GET", "/v1/maps/eu.m/k", headers=[*ok, ("X-Auth-Attrs", "region=eu")])
        assert r.status == 200 and doc(r)["result"] is None, r.body  # allowed; no such key
        r = await gw.call("GET", "/v1/maps/eu.m/k",
                          headers=[*ok, ("X-Auth-Attrs", "region=eu,region=us")])
        assert r.status == 400, r.body
    await audit_flushed(node)
    ev = [x for x in records(node) if x.get("event") == "identity_assertion_refused"]
    # The two spoofs, and the gateway's malformed assertion (a name given twice).
    assert [e["principal"] for e in ev] == [ADMIN_P, ADMIN_P, EDGE_GW_P], ev


async def test_time_and_source_conditions_use_the_deciding_nodes_clock(
        start_node: NodeFactory, dial: Dial) -> None:
    node = await start_node(acl=ACL)
    gw = await dial(node, "edge")
    now = {"ms": 0}
    node.dispatcher.clock_ms = lambda: now["ms"]

    async def get(structure: str) -> dict[str, Any]:
        r: dict[str, Any] = await gw.request("MAP_GET", headers={"X-Auth-User": "bob"},
                                             name=structure, key="k")
        return r

    # Monday 7 December 2026: 07:30 UTC is 08:30 in Paris (inside), 17:30 UTC is 18:30.
    now["ms"] = int(datetime(2026, 12, 7, 7, 30, tzinfo=UTC).timestamp() * 1000)
    assert (await get("o"))["s"] == OK
    now["ms"] = int(datetime(2026, 12, 7, 17, 30, tzinfo=UTC).timestamp() * 1000)
    r = await get("o")
    assert r["s"] == FORBIDDEN and "time: 18:30 is outside 08:00-18:00 (Europe/Paris)" \
        in r["e"]["reason"], r
    now["ms"] = int(datetime(2026, 12, 5, 9, 0, tzinfo=UTC).timestamp() * 1000)  # Saturday
    r = await get("o")
    assert r["s"] == FORBIDDEN and "days: sat is not allowed" in r["e"]["reason"], r
    # The connection comes from 127.0.0.1: never inside 10.0.0.0/8.
    r = await get("lan")
    assert r["s"] == FORBIDDEN and "source: 127.0.0.1 is in none" in r["e"]["reason"], r
