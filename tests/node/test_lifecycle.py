"""The real `loomd` process: start, serve, reload, stop (systemd protocol, config errors)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from loom.node.config import AuditConfig, Limits, to_toml
from tests.conftest import PKI, TEST_ACL, RawConn, make_config, tls_client_ctx
from tests.node.conftest import FORBIDDEN, OK, UNAUTHENTICATED, policy_with

pytestmark = pytest.mark.slow

LOOMD = [sys.executable, "-m", "loom.cli.loomd"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_config(pki: PKI, d: Path, port: int, acl: dict[str, Any] = TEST_ACL,
                 **kw: Any) -> Path:
    cfg = make_config(pki, d, client_listen=f"127.0.0.1:{port}", acl=acl,
                      audit=AuditConfig(sink="off"), limits=Limits(shutdown_grace_s=5), **kw)
    path = d / "loomd.toml"
    path.write_text(to_toml(cfg), encoding="utf-8")
    return path


class Daemon:
    def __init__(self, proc: trio.Process, port: int, pki: PKI) -> None:
        self.proc, self.port, self.pki = proc, port, pki

    async def connect(self, name: str = "admin") -> RawConn:
        tcp = await trio.open_tcp_stream("127.0.0.1", self.port)
        c = RawConn(trio.SSLStream(tcp, tls_client_ctx(self.pki, name),
                                   server_hostname="localhost"))
        assert (await c.hello())["s"] == OK
        return c


@asynccontextmanager
async def loomd(pki: PKI, config: Path, port: int, env: dict[str, str] | None = None,
                log: Path | None = None) -> AsyncIterator[Daemon]:
    """A loomd process serving `config`; its output goes to `log` if given."""
    with open(log or os.devnull, "ab") as out:  # the child keeps its own descriptor
        proc = await trio.lowlevel.open_process(
            [*LOOMD, "--config", str(config)],
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdout=out, stderr=subprocess.STDOUT)
    try:
        d = Daemon(proc, port, pki)
        for _ in range(300):  # bounded: up to ~15 s for the interpreter to start
            if proc.poll() is not None:
                raise AssertionError(f"loomd exited early with {proc.returncode}")
            try:
                c = await d.connect()
            except OSError:
                await trio.sleep(0.05)
                continue
            await c.aclose()
            break
        else:
            raise AssertionError("loomd never accepted a connection")
        yield d
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.move_on_after(10) as cs:
            cs.shield = True
            await proc.wait()


async def test_serve_notify_and_sigterm(pki: PKI, tmp_path: Path) -> None:
    port = free_port()
    config = write_config(pki, tmp_path, port)
    with tempfile.TemporaryDirectory(prefix="ln") as short:  # AF_UNIX paths are short
        sock_path = os.path.join(short, "notify")
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        await sock.bind(sock_path)
        try:
            async with loomd(pki, config, port, env={"NOTIFY_SOCKET": sock_path}) as d:
                with trio.fail_after(20):
                    assert await sock.recv(1024) == b"READY=1"
                admin = await d.connect()
                r = await admin.request("PING")
                assert r["s"] == OK and r["r"]["pong"] is True
                assert (await admin.request("MAP_PUT", name="m", key="k", value=b"v"))["s"] == OK
                # An in-flight write: QUEUE_POLL (a write) waits up to 1.5 s for an item.
                await admin.send_raw(_frame(admin, "QUEUE_POLL", name="q", timeout_ms=1500))
                poll_id = admin.next_id - 1
                assert (await admin.request("PING"))["s"] == OK  # the poll is now running
                d.proc.send_signal(signal.SIGTERM)
                with trio.fail_after(20):
                    reply = await admin.recv()
                assert reply is not None and reply["id"] == poll_id, reply
                assert reply["s"] == OK and reply["r"] is None, reply
                with trio.fail_after(20):
                    rc = await d.proc.wait()
                assert rc == 0
                with trio.fail_after(5):
                    assert await sock.recv(1024) == b"STOPPING=1"
                await admin.aclose()
        finally:
            sock.close()


def _frame(conn: RawConn, op: str, **body: Any) -> bytes:
    from loom.wire import catalog
    from loom.wire.codec import encode

    rid = conn.next_id
    conn.next_id += 1
    return encode({"v": 1, "id": rid, "op": catalog.BY_NAME[op].opcode, "b": body})


async def test_sighup_keeps_the_replicated_acl_and_reloads_gateways(pki: PKI,
                                                                     tmp_path: Path) -> None:
    """Issue #14 item 1: after `acl set` moved the policy to version 2, SIGHUP (which re-reads
    a config whose [acl] is still version 1's) keeps version 2 in force, while the gateway
    allow-list, which SIGHUP does reload, changes on the open connections."""
    port = free_port()
    config = write_config(pki, tmp_path, port)
    async with loomd(pki, config, port) as d:
        admin = await d.connect()
        writer = await d.connect("writer")
        edge = await d.connect("edge")
        v1 = (await admin.request("ACL_GET"))["r"]["version"]
        assert (await writer.request("MAP_DELETE", name="m", key="k"))["s"] == FORBIDDEN
        roles = dict(TEST_ACL["roles"])
        roles["data-writer"] = {"grants": [{"types": ["MAP_PUT", "QUEUE_PUSH",
                                                      "COUNTER_INCREMENT", "MAP_DELETE"]}]}
        r = await admin.request("ACL_SET", policy=policy_with(roles, {}), expected_version=v1)
        assert r["s"] == OK, r
        assert (await writer.request("MAP_DELETE", name="m", key="k"))["s"] == OK
        as_alice = {"X-Auth-User": "alice"}
        assert (await edge.request("WHOAMI", headers=as_alice))["s"] == OK
        # The same file's ACL (version 1's), without the gateway: then SIGHUP.
        write_config(pki, tmp_path, port, gateway_identities=())
        text = config.read_text(encoding="utf-8")
        d.proc.send_signal(signal.SIGHUP)
        for _ in range(400):  # bounded polling on the open gateway connection
            r = await edge.request("WHOAMI", headers=as_alice)
            if r["s"] == UNAUTHENTICATED:
                break
            assert r["s"] == OK, r
            await trio.sleep(0.025)
        else:
            raise AssertionError("the reloaded gateway allow-list never came into force")
        # The reload is done: the replicated policy stayed at version 2, on the open
        # connection and on a new one.
        assert (await admin.request("ACL_GET"))["r"]["version"] == v1 + 1
        assert (await writer.request("MAP_DELETE", name="m", key="k"))["s"] == OK
        writer2 = await d.connect("writer")
        assert (await writer2.request("MAP_DELETE", name="m", key="k"))["s"] == OK
        # A config that does not load is refused as a whole: the gateway stays refused.
        config.write_text(text + "\nbogus_key = 1\n", encoding="utf-8")
        d.proc.send_signal(signal.SIGHUP)
        assert (await admin.request("PING"))["s"] == OK
        for _ in range(10):
            await trio.sleep(0.02)
            r = await edge.request("WHOAMI", headers=as_alice)
            assert r["s"] == UNAUTHENTICATED, r
            assert (await admin.request("ACL_GET"))["r"]["version"] == v1 + 1
        # The explicit way to make the file's policy the cluster's: loomctl acl set CONFIG.
        write_config(pki, tmp_path, port, gateway_identities=())
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
        env.update(LOOM_ENDPOINTS=f"127.0.0.1:{port}", LOOM_CA=str(pki.ca),
                   LOOM_CERT=str(pki.dir / "admin.pem"), LOOM_KEY=str(pki.dir / "admin.key"))
        with trio.fail_after(60):
            p = await trio.run_process([sys.executable, "-m", "loom.cli.loomctl", "acl", "set",
                                        str(config)], env=env, capture_stdout=True,
                                       capture_stderr=True, check=False)
        assert p.returncode == 0, p.stderr
        assert (await admin.request("ACL_GET"))["r"]["version"] == v1 + 2
        assert (await writer.request("MAP_DELETE", name="m", key="k"))["s"] == FORBIDDEN
        for c in (admin, writer, writer2, edge):
            await c.aclose()
        d.proc.send_signal(signal.SIGTERM)
        with trio.fail_after(20):
            assert await d.proc.wait() == 0


@pytest.mark.parametrize("extra,key", [
    ("\nbogus_key = 1\n", "bogus_key"),
    ("\n[limits]\nmax_connections = \"many\"\n", "limits.max_connections"),
    ("\n[limits]\nmax_frame_bytes = 100\n", "limits.max_frame_bytes"),
    ("\n[limits]\nno_such_limit = 3\n", "limits.no_such_limit"),
], ids=["unknown-key", "wrong-type", "out-of-range", "unknown-nested"])
def test_bad_config_exits_2_with_one_line(extra: str, key: str, pki: PKI,
                                          tmp_path: Path) -> None:
    cfg = make_config(pki, tmp_path, client_listen=f"127.0.0.1:{free_port()}",
                      audit=AuditConfig(sink="off"))
    text = to_toml(replace(cfg, acl={}))
    if extra.startswith("\n[limits]"):
        # Put the override inside the existing [limits] table.
        line = extra.strip().splitlines()[1]
        text = text.replace("[limits]\n", f"[limits]\n{line}\n", 1)
        name = line.split("=")[0].strip()
        text = _drop_duplicate(text, name)
    else:
        text = extra.lstrip("\n") + text
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    p = subprocess.run([*LOOMD, "--config", str(path)], capture_output=True, text=True,
                       timeout=60, check=False)
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert key in lines[0], lines[0]


def _drop_duplicate(text: str, name: str) -> str:
    """Keep the first `name = ...` line of the [limits] table, drop the default one."""
    out, seen = [], False
    for line in text.splitlines():
        if line.split("=")[0].strip() == name:
            if seen:
                continue
            seen = True
        out.append(line)
    return "\n".join(out) + "\n"
