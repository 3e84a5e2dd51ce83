"""Envelope encryption at rest with a real PKCS#11 token (SoftHSM2, from Debian's `softhsm2`),
driven as an operator would: a real loomd, `loomctl keys rewrap` (a plain keyring becomes one
wrapped by an AES key in the token), `loomctl keys rotate` in force without a restart, a
restart that reads everything back, and a wrong PIN or a missing key refused clearly.

Every PKCS#11 call runs in a child process (loomd, loomctl, the key generator below): SoftHSM2
reads SOFTHSM2_CONF once per process, and each test has its own token directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from loom.client import Client
from loom.node.config import AuditConfig, RaftSettings, StorageSettings, to_toml
from loom.storage.fs import OSFileSystem
from loom.storage.snapshot import SnapshotReader, list_snapshots
from tests.conftest import PKI, make_config

MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
PIN = "4711-loom"
pytestmark = pytest.mark.skipif(
    not MODULE.is_file() or shutil.which("softhsm2-util") is None,
    reason="SoftHSM2 is not installed (apt-get install softhsm2; scripts/test.sh does)")

GENERATE = """
import sys, pkcs11
from pkcs11 import Attribute, KeyType
token = pkcs11.lib(sys.argv[1]).get_token(token_label=sys.argv[2])
with token.open(user_pin=sys.argv[3], rw=True) as s:
    for label in sys.argv[4:]:
        s.generate_key(KeyType.AES, 256, label=label, store=True,
                       template={Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True})
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def hsm(tmp_path: Path) -> dict[str, str]:
    """A SoftHSM2 token 'loom' in a temp directory with AES keys kek-1 and kek-2; returns
    the environment that reaches it."""
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n"
                    "log.level = ERROR\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    env["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "loom", "--pin", PIN,
                    "--so-pin", "so-4711"], env=env, check=True, capture_output=True, timeout=30)
    subprocess.run([sys.executable, "-c", GENERATE, str(MODULE), "loom", PIN, "kek-1", "kek-2"],
                   env=env, check=True, capture_output=True, timeout=30)
    return env


class Node:
    def __init__(self, pki: PKI, tmp_path: Path, env: dict[str, str]) -> None:
        self.pki, self.tmp, self.env = pki, tmp_path, env
        self.port = _free_port()
        self.ring = tmp_path / "secrets" / "keyring.json"
        self.pin = tmp_path / "secrets" / "kek.pin"
        self.audit = tmp_path / "audit.jsonl"
        self.proc: subprocess.Popen[str] | None = None
        cfg = replace(
            make_config(pki, tmp_path), client_listen=f"127.0.0.1:{self.port}",
            audit=AuditConfig(sink="file", path=self.audit),
            raft=RaftSettings(snapshot_every=40, trailing_entries=10),
            storage=StorageSettings(segment_bytes=16 << 20, keyring=self.ring,
                                    kek_pin_file=self.pin, pkcs11_module=MODULE))
        self.config = tmp_path / "n1.toml"
        self.config.write_text(to_toml(cfg))

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def loomd(self) -> subprocess.CompletedProcess[str]:
        """Start and expect a refusal."""
        return subprocess.run([sys.executable, "-m", "loom.cli.loomd", "--config",
                               str(self.config)], env=self.env, capture_output=True, text=True,
                              timeout=60, check=False)

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "loom.cli.loomd", "--config",
                                      str(self.config)], env=self.env, stderr=subprocess.PIPE,
                                     text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr \
                    else ""
                time.sleep(0.05)
        raise AssertionError("loomd did not listen within 30 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            assert self.proc.wait(timeout=30) == 0
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def ctl(self, who: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, LOOM_ENDPOINTS=self.endpoint, LOOM_CA=str(self.pki.ca),
                   LOOM_CERT=str(self.pki.dir / f"{who}.pem"),
                   LOOM_KEY=str(self.pki.dir / f"{who}.key"))
        return subprocess.run([sys.executable, "-m", "loom.cli.loomctl", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    def ok(self, *args: str) -> object:
        r = self.ctl("admin", "-o", "json", *args)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout) if r.stdout.strip() else None
        return out["result"] if isinstance(out, dict) and set(out) == {"result"} else out


@pytest.fixture
def node(pki: PKI, tmp_path: Path, hsm: dict[str, str]) -> Iterator[Node]:
    n = Node(pki, tmp_path, hsm)
    n.ring.parent.mkdir(mode=0o700)
    n.pin.write_text(PIN + "\n")
    n.pin.chmod(0o600)
    yield n
    n.stop()


def _client(n: Node) -> Client:
    return Client(n.endpoint, ca=n.pki.ca, cert=n.pki.dir / "admin.pem",
                  key=n.pki.dir / "admin.key", timeout=20)


def _value(prefix: str, i: int) -> bytes:
    return f"{prefix}-{i}-".encode() + b"x" * 2000


def _fill(n: Node, prefix: str, count: int) -> None:
    with _client(n) as c:
        for i in range(count):
            c.map_put("default", f"{prefix}{i}", _value(prefix, i))


def _check(n: Node, prefix: str, count: int) -> None:
    with _client(n) as c:
        for i in range(count):
            assert c.map_get("default", f"{prefix}{i}") == _value(prefix, i)


def _segment_keys(n: Node) -> list[int]:
    out = n.ok("wal", "inspect", str(n.tmp / "data"))
    assert isinstance(out, dict)
    return [s["key_id"] for s in out["segments"]]


def _snapshot_keys(n: Node) -> list[int]:
    snap_dir = n.tmp / "data" / "raft" / "snap"
    fs = OSFileSystem()
    return [SnapshotReader(fs, path, keyring=None, max_payload=1 << 20, decrypt=False).key_id
            for _, _, path in list_snapshots(fs, str(snap_dir))]


def test_wrapped_keys_rotate_and_rewrap_online(node: Node) -> None:
    n = node
    r = n.ctl("admin", "keys", "create", str(n.ring))
    assert r.returncode == 0, r.stderr
    plain_key = json.loads(n.ring.read_text())["keys"][0]["key"]
    n.start()
    _fill(n, "a", 30)

    # A plain keyring becomes a wrapped one, online: the data keys stay, no data changes.
    out = n.ok("keys", "rewrap", "--token", "loom", "--label", "kek-1")
    assert isinstance(out, dict)
    doc = json.loads(n.ring.read_text())
    assert doc["format"] == "loom-keyring-v2"
    assert doc["kek"] == {"provider": "pkcs11", "token": "loom", "label": "kek-1"}
    assert plain_key not in n.ring.read_text()  # never written in clear again
    assert oct(n.ring.stat().st_mode & 0o777) == "0o600"

    # Rotation takes effect without a restart: new segments and snapshots use key 2.
    rot = n.ok("keys", "rotate")
    assert isinstance(rot, dict)
    assert rot["key_id"] == 2 and rot["keys"] == [1, 2] and rot["provider"] == "pkcs11"
    assert [k["id"] for k in json.loads(n.ring.read_text())["keys"]] == [1, 2]
    _fill(n, "b", 60)  # snapshots (every 40 entries) and compaction after each
    stats = n.ok("node", "stats")
    assert isinstance(stats, dict)
    keys = stats["keys"]
    assert keys["active_key"] == 2 and keys["rotations"] == 1 and keys["rewraps"] == 1

    # Rewrap under another KEK of the token; then a restart reads everything back.
    n.ok("keys", "rewrap", "--label", "kek-2")
    assert json.loads(n.ring.read_text())["kek"]["label"] == "kek-2"

    # A backup is encrypted with the keys in force; restoring it needs the module and the PIN.
    backup = n.tmp / "backup.snap"
    n.ok("snapshot", "save", str(backup))
    restore = [sys.executable, "-m", "loom.cli.loomd", "restore", str(backup), "--data-dir",
               str(n.tmp / "restored"), "--node-id", "n1", "--peers", "n1=127.0.0.1:1",
               "--cluster-name", "copy", "--keyring", str(n.ring)]
    r = subprocess.run(restore, env=n.env, capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 1 and "give the PKCS#11 module" in r.stderr, r.stderr
    r = subprocess.run([*restore, "--pkcs11-module", str(MODULE), "--kek-pin-file", str(n.pin)],
                       env=n.env, capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0 and "(encrypted)" in r.stdout, r.stderr
    n.stop()
    # Snapshots taken after the rotation, before any restart, are under key 2; the segment
    # open at the rotation keeps its key 1 (the next segment the log opens takes key 2).
    assert _snapshot_keys(n) and set(_snapshot_keys(n)) == {2}
    assert _segment_keys(n) == [1]
    n.start()
    _check(n, "a", 30)
    _check(n, "b", 60)

    # Only an admin may, and each attempt is audited.
    r = n.ctl("reader", "keys", "rotate")
    assert r.returncode == 1 and "FORBIDDEN" in r.stderr, r.stderr
    n.stop()
    assert _segment_keys(n)[-1] == 2  # the segment opened at the restart
    # The offline tools read a wrapped keyring too, and check every record's tag with it.
    r = n.ctl("admin", "-o", "json", "wal", "verify", str(n.tmp / "data"), "--keyring",
              str(n.ring), "--pkcs11-module", str(MODULE), "--kek-pin-file", str(n.pin))
    assert r.returncode == 0, r.stderr + r.stdout
    r = n.ctl("admin", "wal", "verify", str(n.tmp / "data"), "--keyring", str(n.ring))
    assert r.returncode == 1 and "give the PKCS#11 module" in r.stderr, r.stderr
    records = [json.loads(x) for x in n.audit.read_text().splitlines()]
    mine = [(x["command"], x["result"]) for x in records
            if x.get("command") in ("KEYS_ROTATE", "KEYS_REWRAP")]
    assert ("KEYS_REWRAP", "ok") in mine and ("KEYS_ROTATE", "ok") in mine
    assert ("KEYS_ROTATE", "denied") in mine


def test_wrong_pin_and_missing_key_are_refused_clearly(node: Node) -> None:
    n = node
    assert n.ctl("admin", "keys", "create", str(n.ring)).returncode == 0
    n.start()
    n.ok("keys", "rewrap", "--token", "loom", "--label", "kek-1")
    r = n.ctl("admin", "keys", "rewrap", "--label", "no-such-kek")
    assert r.returncode == 1 and "no AES key labelled 'no-such-kek'" in r.stderr, r.stderr
    assert json.loads(n.ring.read_text())["kek"]["label"] == "kek-1"  # unchanged
    n.stop()

    n.pin.write_text("0000\n")
    r = n.loomd()
    assert r.returncode != 0 and "wrong PIN for PKCS#11 key 'kek-1'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    n.pin.write_text(PIN + "\n")

    doc = json.loads(n.ring.read_text())
    doc["kek"]["label"] = "deleted-kek"
    n.ring.write_text(json.dumps(doc))
    r = n.loomd()
    assert r.returncode != 0 and "no AES key labelled 'deleted-kek'" in r.stderr, r.stderr

    doc["kek"]["label"] = "kek-2"  # exists, but did not wrap these keys
    n.ring.write_text(json.dumps(doc))
    r = n.loomd()
    assert r.returncode != 0 and "does not unwrap data key 1" in r.stderr, r.stderr


def test_a_keyring_created_wrapped_never_holds_a_key_in_clear(node: Node) -> None:
    n = node
    r = n.ctl("admin", "-o", "json", "keys", "create", str(n.ring), "--pkcs11-module",
              str(MODULE), "--token", "loom", "--label", "kek-1", "--pin-file", str(n.pin))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"] == {"key_id": 1, "wrapped": True}
    doc = json.loads(n.ring.read_text())
    assert doc["format"] == "loom-keyring-v2" and "key" not in doc["keys"][0]
    r = n.ctl("admin", "keys", "create", str(n.ring), "--pkcs11-module", str(MODULE))
    assert r.returncode == 2 and "needs --pkcs11-module, --token, --label" in r.stderr
    n.start()
    _fill(n, "c", 5)
    n.stop()
    n.start()
    _check(n, "c", 5)
