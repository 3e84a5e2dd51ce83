"""The whole path with real processes: `loom-gateway` -> a 3-node loomd cluster's HTTP door ->
the audit record names the end user and the gateway. The gateway is given only a follower's
door, so NOT_LEADER is followed inside it; it stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from loom.http import ClientResponse, HTTPClient
from loom.security.tls import client_context
from tests.cluster.conftest import free_ports
from tests.conftest import PKI
from tests.doorcluster import AuditedCluster
from tests.gateway.proxy_support import API_KEYS, dev_token, gateway_config, write_config

pytestmark = pytest.mark.slow

GATEWAY = Path(sys.executable).parent / "loom-gateway"


async def start_gateway(config: Path, log: Path, port: int, *args: str
                        ) -> trio.Process:
    with log.open("wb") as out:  # the child keeps its own descriptor
        proc = await trio.lowlevel.open_process(
            [str(GATEWAY), "run", str(config), *args], stdout=out, stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k != "AUTH_TYPE"})
    with trio.fail_after(15):
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                s = await trio.open_tcp_stream("127.0.0.1", port)
                await s.aclose()
                return proc
            except OSError:
                await trio.sleep(0.05)


async def test_gateway_to_cluster_audit_not_leader_and_sigterm(
        audited_hcluster: AuditedCluster, pki: PKI, tmp_path: Path) -> None:
    c = audited_hcluster
    leader = await c.wait_leader()
    follower = next(n for n in c.ids if n != leader)
    (port,) = free_ports(1)
    raw = gateway_config(pki, tmp_path / "gw", address=f"127.0.0.1:{port}", rate=2.0, burst=3.0,
                         upstream={"kind": "loom", "endpoints": [c.url(follower, "")], "tls": {
                             "ca_file": str(pki.ca), "cert_file": str(pki.dir / "edge.pem"),
                             "key_file": str(pki.dir / "edge.key")}})
    log = tmp_path / "gateway.log"
    proc = await start_gateway(write_config(tmp_path / "gw", raw), log, port)
    base = f"https://127.0.0.1:{port}"
    try:
        async with HTTPClient(client_context(pki.ca)) as http:
            async def call(method: str, path: str, headers: list[tuple[str, str]]
                           ) -> ClientResponse:
                with trio.fail_after(10):
                    return await http.request(method, base + path, headers=headers)

            token = dev_token("ada", ["data-writer", "reader"])
            bearer = [("authorization", f"Bearer {token}")]
            # The follower learns the leader's HTTP address shortly after start: until then
            # NOT_LEADER is a 503 naming the leader, and the gateway has no other endpoint.
            with trio.fail_after(15):
                while True:
                    r = await call("POST", "/v1/counters/hits/increment",
                                   [*bearer, ("X-Auth-User", "spiffe://loom.dev/client/admin"),
                                    ("idempotency-key", "one")])
                    if r.status != 503:
                        break
                    await trio.sleep(0.2)
            # Only a follower's door is configured: the write was applied by the leader, so
            # the gateway followed NOT_LEADER.
            assert r.status == 200, r.body
            assert json.loads(r.body) == {"result": 1}

            # Private routes need credentials; the answer comes from the gateway itself.
            r = await call("GET", "/v1/counters/hits", [])
            assert r.status == 401
            r = await call("GET", "/v1/counters/hits", [("x-api-key", API_KEYS["bob"])])
            assert r.status == 200 and json.loads(r.body) == {"result": 1}

            # One noisy identity is limited while another is served.
            noisy = [(await call("GET", "/v1/counters/hits", bearer)).status for _ in range(8)]
            assert 429 in noisy
            r = await call("GET", "/v1/counters/hits", [("x-api-key", API_KEYS["alice"])])
            assert r.status == 200

        # The audit names the end user and the gateway, never what the client claimed.
        with trio.fail_after(10):
            while True:
                writes = [x for x in c.records() if x.get("command") == "COUNTER_INCREMENT"]
                if any(x["result"] == "ok" for x in writes):
                    break
                await trio.sleep(0.1)
        # Every attempt (the follower's not_leader ones too) names the end user and the gateway.
        assert {x["result"] for x in writes} <= {"ok", "not_leader"}
        for x in writes:
            assert x["principal"].endswith("dev:ada"), x
            assert x["via_gateway"] == "spiffe://loom.dev/gateway/edge"
        assert not any("client/admin" in x["principal"] for x in c.records()
                       if x.get("via_gateway"))
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            code = await proc.wait()
    assert code == 0, log.read_text()
    assert "stopped" in log.read_text()
