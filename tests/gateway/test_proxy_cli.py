"""`loom-gateway` as users run it: `check` validates without starting (exit 2 on problems),
`run` refuses guest mode on a public address, and SIGHUP reloads routes in place."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from loom.gateway.app import Gateway
from loom.gateway.config import ConfigError, load
from loom.http import HTTPClient
from loom.security.tls import client_context
from tests.cluster.conftest import free_ports
from tests.conftest import PKI
from tests.gateway.proxy_support import API_KEYS, EchoUpstream, gateway_config, write_config

GATEWAY = Path(sys.executable).parent / "loom-gateway"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "AUTH_TYPE"}
    return subprocess.run([str(GATEWAY), *args], capture_output=True, text=True, timeout=60,
                          env={**base, **(env or {})}, check=False)


def test_check_and_refusals(pki: PKI, tmp_path: Path) -> None:
    up = {"kind": "http", "endpoints": ["https://127.0.0.1:9"], "tls": {"ca_file": str(pki.ca)}}
    good = write_config(tmp_path, gateway_config(pki, tmp_path, upstream=up))
    r = run("check", str(good))
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr

    raw = gateway_config(pki, tmp_path / "bad", upstream=up)
    raw["routes"][0]["upstrem"] = "up"
    r = run("check", str(write_config(tmp_path / "bad", raw)))
    assert r.returncode == 2 and "routes[0].upstrem: unknown key" in r.stderr

    raw = gateway_config(pki, tmp_path / "tls", upstream=up)
    raw["listeners"][0]["tls"]["cert_file"] = str(tmp_path / "missing.pem")
    r = run("check", str(write_config(tmp_path / "tls", raw)))
    assert r.returncode == 2 and "missing.pem" in r.stderr

    public = gateway_config(pki, tmp_path / "pub", upstream=up, address="0.0.0.0:0")
    path = write_config(tmp_path / "pub", public)
    for cmd in ("check", "run"):
        r = run(cmd, str(path), env={"AUTH_TYPE": "noop"})
        assert r.returncode == 2 and "loopback" in r.stderr, (cmd, r.stderr)
    r = run("check", str(path), "--allow-insecure-guest", env={"AUTH_TYPE": "noop"})
    assert r.returncode == 0, r.stderr
    r = run("check", str(good), env={"AUTH_TYPE": "okta"})
    assert r.returncode == 2 and "AUTH_TYPE" in r.stderr


async def test_reload_replaces_routes_and_refuses_what_needs_a_restart(
        pki: PKI, tmp_path: Path, nursery: trio.Nursery) -> None:
    echo = EchoUpstream(pki)
    await echo.start(nursery)
    up = {"kind": "http", "endpoints": [echo.url], "tls": {"ca_file": str(pki.ca)}}
    raw = gateway_config(pki, tmp_path, upstream=up)
    gw = Gateway(load(write_config(tmp_path, raw), env={}))
    await nursery.start(gw.run)
    url = f"https://127.0.0.1:{gw.ports['https']}/open/x"
    async with HTTPClient(client_context(pki.ca)) as http:
        with trio.fail_after(10):
            assert (await http.request("GET", url)).status == 401
            raw["routes"].insert(0, {"id": "open", "path": "/open/*", "upstream": "up"})
            gw.reload(load(write_config(tmp_path, raw), env={}))
            assert (await http.request("GET", url)).status == 200
            moved = {**raw, "listeners": [{**raw["listeners"][0], "address": "127.0.0.1:1"}]}
            with pytest.raises(ConfigError, match="restart"):
                gw.reload(load(write_config(tmp_path, moved), env={}))
            assert (await http.request("GET", url, headers=[
                ("x-api-key", API_KEYS["bob"])])).status == 200
    assert gw.statistics().reloads == 1
    gw.shutdown()
    echo.server.shutdown()


async def test_sighup_reloads_a_running_process(pki: PKI, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    # Nothing is forwarded: only the gateway's own answers (404, then 401) are looked at.
    up = {"kind": "http", "endpoints": ["https://127.0.0.1:9"],
          "tls": {"ca_file": str(pki.ca)}}
    raw = gateway_config(pki, tmp_path, upstream=up, address=f"127.0.0.1:{port}")
    raw["routes"] = [r for r in raw["routes"] if r["id"] != "api"]
    path = write_config(tmp_path, raw)
    log = tmp_path / "gw.log"
    with log.open("wb") as out:
        proc = await trio.lowlevel.open_process([str(GATEWAY), str(path)], stdout=out,
                                                stderr=subprocess.STDOUT)
    try:
        async with HTTPClient(client_context(pki.ca)) as http:
            url = f"https://127.0.0.1:{port}/api/x"
            with trio.fail_after(20):
                while True:
                    try:
                        r = await http.request("GET", url)
                        break
                    except OSError:
                        await trio.sleep(0.05)
                assert r.status == 404
                raw["routes"].append({"id": "api", "path": "/api/*", "upstream": "up",
                                      "auth": {"require": True}})
                write_config(tmp_path, raw)
                proc.send_signal(signal.SIGHUP)
                while (await http.request("GET", url)).status == 404:
                    await trio.sleep(0.05)
                assert (await http.request("GET", url)).status == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await proc.wait() == 0, log.read_text()


def test_the_deploy_example_is_a_valid_configuration() -> None:
    import yaml

    from loom.gateway.config import parse

    example = Path(__file__).resolve().parents[2] / "deploy" / "loom-gateway.yaml"
    config = parse(yaml.safe_load(example.read_text()), base=example.parent, env={})
    assert config.upstreams[0].kind == "loom" and config.routes[-1].auth.require
