"""Passphrase-protected TLS private keys, as an operator meets them: `loomctl certs issue
--passphrase-file` writes an encrypted key, a real `loomd` serves with it (passphrase from a
file, or from a systemd credential in $CREDENTIALS_DIRECTORY), loomctl presents an encrypted
client key, SIGHUP re-reads both files, and every misconfiguration is one line and exit 2."""

from __future__ import annotations

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

from loom.node.config import TLSConfig, to_toml
from tests.conftest import PKI, make_config

LOOMD = [sys.executable, "-m", "loom.cli.loomd"]
LOOMCTL = [sys.executable, "-m", "loom.cli.loomctl"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("LOOM_") and k != "CREDENTIALS_DIRECTORY"}
    env.update(extra)
    return env


def _issue(pki: PKI, out: Path, kind: str, name: str, pw: Path) -> None:
    r = subprocess.run([*LOOMCTL, "certs", "issue", kind, name, "--ca-dir", str(pki.dir),
                        "--out", str(out), "--passphrase-file", str(pw)],
                       env=_env(), capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert "encrypted" in r.stdout
    assert b"ENCRYPTED PRIVATE KEY" in (out / f"{name}.key").read_bytes()


@pytest.fixture
def keys(pki: PKI, tmp_path: Path) -> Path:
    """n1 and admin certificates from the test CA, their keys encrypted under 'node-pass' and
    'admin-pass' (files node.pass and admin.pass, mode 0600)."""
    out = tmp_path / "keys"
    out.mkdir()
    _issue(pki, out, "node", "n1", _secret(tmp_path / "node.pass", "node-pass\n"))
    _issue(pki, out, "client", "admin", _secret(tmp_path / "admin.pass", "admin-pass\n"))
    return out


def _write_config(pki: PKI, tmp_path: Path, keys: Path, port: int, **tls: object) -> Path:
    t = TLSConfig(ca=pki.ca, cert=keys / "n1.pem", key=keys / "n1.key")
    cfg = replace(make_config(pki, tmp_path), client_listen=f"127.0.0.1:{port}",
                  tls=replace(t, **tls))
    path = tmp_path / "n1.toml"
    path.write_text(to_toml(cfg))
    return path


def _ctl(pki: PKI, keys: Path, tmp_path: Path, ep: str,
         *args: str) -> subprocess.CompletedProcess[str]:
    env = _env(LOOM_ENDPOINTS=ep, LOOM_CA=str(pki.ca), LOOM_CERT=str(keys / "admin.pem"),
               LOOM_KEY=str(keys / "admin.key"))
    return subprocess.run([*LOOMCTL, "--key-passphrase-file", str(tmp_path / "admin.pass"),
                           *args], env=env, capture_output=True, text=True, timeout=30,
                          check=False)


@pytest.fixture
def running() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        if p.stderr:
            p.stderr.close()


def _start(config: Path, env: dict[str, str], procs: list[subprocess.Popen[str]],
           port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*LOOMD, "--config", str(config)], env=env,
                            stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
    raise AssertionError("loomd did not listen within 30 s")


def _wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 20) -> str:
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if needle in line:
            return line
    raise AssertionError(f"no line with {needle!r}")


def test_encrypted_keys_from_a_passphrase_file_and_sighup(
        pki: PKI, tmp_path: Path, keys: Path, running: list[subprocess.Popen[str]]) -> None:
    port = _free_port()
    config = _write_config(pki, tmp_path, keys, port,
                           key_passphrase_file=tmp_path / "node.pass")
    proc = _start(config, _env(), running, port)
    ep = f"127.0.0.1:{port}"
    assert _ctl(pki, keys, tmp_path, ep, "put", "k", "v").returncode == 0
    r = _ctl(pki, keys, tmp_path, ep, "get", "k")
    assert (r.returncode, r.stdout.strip()) == (0, "v"), r.stderr

    # SIGHUP reads the passphrase file again: a wrong one refuses the reload, and the running
    # TLS material stays in force.
    _secret(tmp_path / "node.pass", "not-the-passphrase\n")
    proc.send_signal(signal.SIGHUP)
    line = _wait_for_line(proc, "reload refused")
    assert "wrong passphrase for private key" in line and "n1.key" in line, line
    assert _ctl(pki, keys, tmp_path, ep, "get", "k").stdout.strip() == "v"
    _secret(tmp_path / "node.pass", "node-pass\n")
    proc.send_signal(signal.SIGHUP)
    _wait_for_line(proc, "reload")
    assert _ctl(pki, keys, tmp_path, ep, "get", "k").stdout.strip() == "v"

    # loomctl: the client key's passphrase is checked the same way, before any connection.
    _secret(tmp_path / "admin.pass", "wrong\n")
    r = _ctl(pki, keys, tmp_path, ep, "get", "k")
    assert r.returncode != 0 and "wrong passphrase for private key" in r.stderr, r.stderr
    _secret(tmp_path / "admin.pass", "admin-pass\n", 0o644)
    r = _ctl(pki, keys, tmp_path, ep, "get", "k")
    assert r.returncode != 0 and "accessible by group or others" in r.stderr, r.stderr


def test_encrypted_key_from_a_systemd_credential(
        pki: PKI, tmp_path: Path, keys: Path, running: list[subprocess.Popen[str]]) -> None:
    port = _free_port()
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    _secret(creds / "loomd-key-pass", "node-pass", 0o400)  # as LoadCredential= leaves it
    config = _write_config(pki, tmp_path, keys, port,
                           key_passphrase_credential="loomd-key-pass")
    _start(config, _env(CREDENTIALS_DIRECTORY=str(creds)), running, port)
    r = _ctl(pki, keys, tmp_path, f"127.0.0.1:{port}", "put", "k", "v")
    assert r.returncode == 0, r.stderr


def _refused(config: Path, env: dict[str, str]) -> str:
    r = subprocess.run([*LOOMD, "--config", str(config)], env=env, capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("loomd: ")]
    assert len(errors) == 1, r.stderr  # (an INFO line about the ACL may precede it)
    return errors[0]


def test_misconfigured_keys_are_one_line_and_exit_2(pki: PKI, tmp_path: Path,
                                                    keys: Path) -> None:
    port = _free_port()
    pw = tmp_path / "node.pass"
    config = _write_config(pki, tmp_path, keys, port, key_passphrase_file=pw)
    _secret(pw, "nope\n")
    line = _refused(config, _env())
    assert f"wrong passphrase for private key {keys / 'n1.key'}" in line
    assert str(pw) in line

    _secret(pw, "node-pass\n", 0o640)
    line = _refused(config, _env())
    assert f"key passphrase file {pw} is accessible by group or others" in line
    assert "chmod 600" in line

    _secret(pw, "node-pass\n")
    (keys / "n1.key").chmod(0o644)
    line = _refused(config, _env())
    assert f"private key file {keys / 'n1.key'} is accessible by group or others" in line
    (keys / "n1.key").chmod(0o600)

    line = _refused(_write_config(pki, tmp_path, keys, port), _env())
    assert "n1.key is encrypted: give its passphrase" in line

    cred = _write_config(pki, tmp_path, keys, port, key_passphrase_credential="loomd-key-pass")
    line = _refused(cred, _env())
    assert "$CREDENTIALS_DIRECTORY is not set" in line and "LoadCredential=" in line

    both = _write_config(pki, tmp_path, keys, port, key_passphrase_file=pw,
                         key_passphrase_credential="loomd-key-pass")
    assert "give exactly one" in _refused(both, _env())
