"""`claims_to_attributes`: a token claim becomes a policy attribute on a loom upstream. The
gateway in process in front of a real node's HTTP door, real TLS both sides: a `region` claim
limits a role to its region's maps, and a client's own X-Auth-Attrs never gets through."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
import trio

from loom.gateway.app import Gateway
from loom.gateway.config import ConfigError, load, parse
from loom.http import HTTPClient
from loom.security.tls import client_context
from tests.conftest import PKI, NodeFactory
from tests.gateway.proxy_support import (
    AUDIENCE,
    ISSUER,
    JWT_SECRET,
    gateway_config,
    write_config,
)
from tests.http_door.conftest import start_http_node
from tests.node.conftest import audit_flushed, policy_with, records

pytestmark = pytest.mark.timeout(60)

ACL = policy_with({"eu-reader": {"grants": [
    {"types": ["MAP_GET", "MAP_PUT"], "structures": ["eu.*"],
     "when": {"attr.region": ["eu"], "attr.tier": ["gold", "silver"]}}]}}, {})


def token(**claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "ada", "roles": ["eu-reader"],
            "iat": now, "exp": now + 300, **claims}
    return pyjwt.encode(body, JWT_SECRET, algorithm="HS256")


async def test_a_region_claim_limits_a_role_to_its_maps(
        start_node: NodeFactory, pki: PKI, tmp_path: Path, nursery: trio.Nursery) -> None:
    node = await start_http_node(start_node, acl=ACL)
    assert node.http is not None
    raw = gateway_config(pki, tmp_path / "gw", upstream={
        "kind": "loom", "endpoints": [f"https://127.0.0.1:{node.http.port}"], "tls": {
            "ca_file": str(pki.ca), "cert_file": str(pki.dir / "edge.pem"),
            "key_file": str(pki.dir / "edge.key")}})
    raw["middleware"]["auth"]["jwt"]["claims_to_attributes"] = {
        "region": "region", "plan.tier": "tier"}
    gw = Gateway(load(write_config(tmp_path / "gw", raw), env={}))
    await nursery.start(gw.run)
    base = f"https://127.0.0.1:{gw.ports['https']}"
    async with HTTPClient(client_context(pki.ca)) as http:
        async def put(tok: str, *extra: tuple[str, str]) -> tuple[int, Any]:
            with trio.fail_after(10):
                r = await http.request("PUT", base + "/v1/maps/eu.m/k", body=b"v",
                                       headers=[("authorization", f"Bearer {tok}"), *extra])
            return r.status, json.loads(r.body) if r.body else None

        status, body = await put(token(region="eu", plan={"tier": "gold"}))
        assert status == 200, body
        status, body = await put(token(region="us", plan={"tier": "gold"}))
        assert status == 403 and "attr.region: 'us' matches none" in body["detail"], body
        # A claim that cannot be an attribute value is left out: the condition fails.
        status, body = await put(token(region="eu", plan={"tier": "gold,admin"}))
        assert status == 403 and "attr.tier: the caller has no such attribute" \
            in body["detail"], body
        # The caller's own X-Auth-Attrs is dropped by the gateway, never forwarded.
        status, body = await put(token(region="us", plan={"tier": "gold"}),
                                 ("X-Auth-Attrs", "region=eu,tier=gold"))
        assert status == 403, body
    gw.shutdown()
    await audit_flushed(node)
    denied = [x for x in records(node) if x.get("command") == "MAP_PUT"
              and x.get("result") == "denied"]
    assert len(denied) == 3 and all(x["principal"] == "user:dev:ada" for x in denied)
    assert "roles.eu-reader.grants[0] applies but its condition failed" in denied[0]["reason"]


@pytest.mark.parametrize("mapping,message", [
    ({"region": "Region"}, "attribute names are"),
    ({"region": "region", "zone": "region"}, "each named once"),
])
def test_claims_to_attributes_validated(pki: PKI, tmp_path: Path, mapping: dict[str, str],
                                        message: str) -> None:
    raw = gateway_config(pki, tmp_path / "gw", upstream={
        "kind": "loom", "endpoints": ["https://127.0.0.1:1"], "tls": {
            "ca_file": str(pki.ca), "cert_file": str(pki.dir / "edge.pem"),
            "key_file": str(pki.dir / "edge.key")}})
    raw["middleware"]["auth"]["jwt"]["claims_to_attributes"] = mapping
    with pytest.raises(ConfigError, match=message):
        parse(raw, env={})
