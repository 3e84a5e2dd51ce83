"""loomctl, as a script would use it, against a real loomd process over real TLS."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from loom.node.config import AuditConfig, to_toml
from tests.conftest import PKI, make_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def loomd(pki: PKI, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = _free_port()
    audit = tmp_path / "audit.jsonl"
    cfg = replace(make_config(pki, tmp_path), client_listen=f"127.0.0.1:{port}",
                  audit=AuditConfig(sink="file", path=audit))
    (tmp_path / "n1.toml").write_text(to_toml(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "loom.cli.loomd", "--config",
                             str(tmp_path / "n1.toml")], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
    try:
        yield f"127.0.0.1:{port}", audit
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        if proc.stderr:
            proc.stderr.close()


def ctl(pki: PKI, endpoint: str, who: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    env.update(LOOM_ENDPOINTS=endpoint, LOOM_CA=str(pki.ca))
    if who is not None:
        env.update(LOOM_CERT=str(pki.dir / f"{who}.pem"), LOOM_KEY=str(pki.dir / f"{who}.key"))
    return subprocess.run([sys.executable, "-m", "loom.cli.loomctl", *args], env=env,
                          capture_output=True, text=True, timeout=30, check=False)


def test_loomctl_put_get_denied_and_audited(pki: PKI, loomd: tuple[str, Path]) -> None:
    ep, audit = loomd
    r = ctl(pki, ep, "admin", "put", "greeting", "hello")
    assert r.returncode == 0, r.stderr
    r = ctl(pki, ep, "admin", "get", "greeting")
    assert (r.returncode, r.stdout.strip()) == (0, "hello")
    r = ctl(pki, ep, "admin", "-o", "json", "counter", "incr", "hits")
    assert r.returncode == 0 and json.loads(r.stdout)["result"] == 1

    r = ctl(pki, ep, "admin", "get", "missing")
    assert r.returncode == 1 and r.stderr.startswith("loomctl: NOT_FOUND")
    assert len(r.stderr.strip().splitlines()) == 1

    r = ctl(pki, ep, "admin", "--stale", "get", "greeting")  # any node's own replica
    assert (r.returncode, r.stdout.strip()) == (0, "hello"), r.stderr
    r = ctl(pki, ep, "admin", "--stale", "put", "greeting", "x")
    assert r.returncode == 2 and "--stale applies to reads only" in r.stderr, r.stderr
    r = ctl(pki, ep, "admin", "--stale", "acl", "get")  # an admin type that only reads
    assert r.returncode == 0, r.stderr

    r = ctl(pki, ep, "reader", "put", "greeting", "bye")  # reader may read, not write
    assert r.returncode == 1 and "FORBIDDEN" in r.stderr
    assert ctl(pki, ep, "reader", "get", "greeting").stdout.strip() == "hello"

    r = ctl(pki, ep, None, "get", "greeting")  # no client certificate: refused by TLS
    assert r.returncode == 3 and "requires a client certificate" in r.stderr
    r = ctl(pki, "127.0.0.1:1", "admin", "get", "greeting")
    assert r.returncode == 3

    deadline = time.monotonic() + 10
    denied: list[dict[str, object]] = []
    while time.monotonic() < deadline and not denied:
        lines = audit.read_text().splitlines() if audit.exists() else []
        denied = [r for r in map(json.loads, lines) if r.get("result") == "denied"]
        time.sleep(0.05)
    assert denied and denied[0]["principal"] == "spiffe://loom.dev/client/reader"
    assert denied[0]["command"] == "MAP_PUT" and denied[0]["key"] == "greeting"
    assert "bye" not in audit.read_text()  # values never reach the audit log


def test_loomctl_day_one_commands_on_a_real_node(pki: PKI, loomd: tuple[str, Path],
                                                 tmp_path: Path) -> None:
    ep, _ = loomd

    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        return ctl(pki, ep, "admin", "-o", "json", *args)

    def result(r: subprocess.CompletedProcess[str]) -> object:
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["result"]

    # Locks: the fencing token by name; a held lock is a failed `try` (exit 1).
    held = result(admin("lock", "try", "door"))
    assert isinstance(held, dict) and isinstance(held["fencing_token"], int), held
    r = admin("lock", "try", "door")
    assert r.returncode == 1 and r.stderr.startswith("loomctl: NOT_ACQUIRED"), r.stderr
    assert json.loads(r.stdout)["result"] == {"acquired": False}
    assert result(admin("semaphore", "init", "s", "1")) is True
    assert result(admin("semaphore", "acquire", "s", "--wait", "10"))["acquired"] is True
    r = admin("semaphore", "acquire", "s", "--wait", "100")
    assert r.returncode == 1 and "NOT_ACQUIRED" in r.stderr, r.stderr

    # The map operations that had only `call`, and --name before the subcommand.
    m = ["map", "--name", "m1"]
    assert result(admin(*m, "put-all", "a=1", "b=2")) == 2  # keys set
    assert result(admin(*m, "get-all", "a", "b", "c")) == {"a": {"base64": "MQ=="},
                                                           "b": {"base64": "Mg=="}}
    assert result(admin(*m, "replace", "a", "10")) is True
    assert result(admin(*m, "replace", "zz", "10")) is False
    assert result(admin(*m, "cas", "a", "11", "--expected", "10")) is True
    assert result(admin(*m, "remove-if", "a", "--expected", "10")) is False
    assert result(admin(*m, "get-and-delete", "a")) == {"base64": "MTE="}
    assert admin(*m, "get", "a").returncode == 1
    ops = tmp_path / "batch.json"
    ops.write_text(json.dumps([{"op": "MAP_PUT", "b": {"name": "m1", "key": "c", "value": "3"}},
                               {"op": "COUNTER_ADD", "b": {"name": "n", "delta": 5}}]))
    assert len(result(admin("batch", str(ops)))) == 2  # type: ignore[arg-type]
    assert result(admin("counter", "get", "n")) == 5

    r = ctl(pki, ep, "admin", "members", "remove", "n9")
    assert r.returncode == 1 and "n9 is not a member of the cluster" in r.stderr, r.stderr
