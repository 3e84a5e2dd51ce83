"""loom-gateway with an encrypted TLS key: the listener's and the loom upstream's key, its
passphrase from a file or a systemd credential, checked by the real `loom-gateway check`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from loom.security.devpki import issue_leaf, load_ca
from loom.security.identity import Role
from tests.conftest import PKI


def _config(pki: PKI, d: Path, **passphrase: str) -> Path:
    tls: dict[str, Any] = {"cert_file": str(d / "edge.pem"), "key_file": str(d / "edge.key"),
                           **passphrase}
    doc = {
        "listeners": [{"name": "https", "address": "127.0.0.1:0", "tls": tls}],
        "middleware": {"auth": {"type": "noop", "guest_roles": ["reader"]}},
        "routes": [{"id": "all", "path": "/*", "upstream": "loom"}],
        "upstreams": [{"name": "loom", "kind": "loom", "endpoints": ["https://127.0.0.1:1"],
                       "tls": {**tls, "ca_file": str(pki.ca)}}],
    }
    path = d / "gw.yaml"
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return path


def _check(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    e.update(env)
    return subprocess.run([sys.executable, "-m", "loom.gateway", "check", str(path)], env=e,
                          capture_output=True, text=True, timeout=60, check=False)


def test_gateway_loads_an_encrypted_key(pki: PKI, tmp_path: Path) -> None:
    ca, ca_key = load_ca(pki.dir)
    issue_leaf(ca, ca_key, tmp_path, Role.GATEWAY, "edge", passphrase=b"edge-pass")
    pw = tmp_path / "edge.pass"
    pw.write_text("edge-pass\n")
    pw.chmod(0o600)
    r = _check(_config(pki, tmp_path, key_passphrase_file=str(pw)))
    assert r.returncode == 0, r.stderr

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "gateway-key-pass").write_text("edge-pass")
    (creds / "gateway-key-pass").chmod(0o400)
    cfg = _config(pki, tmp_path, key_passphrase_credential="gateway-key-pass")
    r = _check(cfg, CREDENTIALS_DIRECTORY=str(creds))
    assert r.returncode == 0, r.stderr
    r = _check(cfg)
    assert r.returncode == 2 and "$CREDENTIALS_DIRECTORY is not set" in r.stderr, r.stderr

    pw.write_text("wrong\n")
    r = _check(_config(pki, tmp_path, key_passphrase_file=str(pw)))
    assert r.returncode == 2 and "wrong passphrase for private key" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    r = _check(_config(pki, tmp_path))
    assert r.returncode == 2 and "edge.key is encrypted" in r.stderr, r.stderr
    r = _check(_config(pki, tmp_path, key_passphrase_file=str(pw),
                       key_passphrase_credential="x"))
    assert r.returncode == 2 and "give exactly one" in r.stderr, r.stderr
