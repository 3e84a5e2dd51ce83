"""What `loomd` says and refuses at start, as an operator meets it: its own help per command,
a node id that its certificate does not carry, and which ACL policy will be in force."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import PKI

LOOMD = [sys.executable, "-m", "loom.cli.loomd"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _flags(pki: PKI, tmp_path: Path, node_id: str, cert: str) -> list[str]:
    return ["--node-id", node_id, "--data-dir", str(tmp_path / "data"),
            "--client-listen", f"127.0.0.1:{_free_port()}", "--tls-ca", str(pki.ca),
            "--tls-cert", str(pki.dir / f"{cert}.pem"), "--tls-key", str(pki.dir / f"{cert}.key"),
            "--audit-sink", "off"]


def test_init_has_its_own_help() -> None:
    r = subprocess.run([*LOOMD, "init", "--help"], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0
    assert r.stdout.startswith("usage: loomd init")
    assert "Print a complete config file" in r.stdout
    top = subprocess.run([*LOOMD, "--help"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert top.stdout.startswith("usage: loomd ") and "loomd init --help" in top.stdout


def test_a_node_id_its_certificate_does_not_carry_exits_2(pki: PKI, tmp_path: Path) -> None:
    r = subprocess.run([*LOOMD, *_flags(pki, tmp_path, "g1", "n1")], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "node_id: 'g1' does not match the certificate" in lines[0]
    assert "names node 'n1'" in lines[0]
    assert not (tmp_path / "data").exists()  # refused before anything was opened
    # A cluster member must carry its node id; a client certificate does not.
    r = subprocess.run([*LOOMD, *_flags(pki, tmp_path, "n1", "admin"), "--join"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2, r.stderr
    assert "does not name node 'n1': it is a client certificate" in r.stderr, r.stderr


def test_flags_only_says_that_no_policy_denies_everything(pki: PKI, tmp_path: Path) -> None:
    flags = _flags(pki, tmp_path, "n1", "n1")
    port = int(flags[flags.index("--client-listen") + 1].rsplit(":", 1)[1])
    proc = subprocess.Popen([*LOOMD, *flags], stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        line = ""
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "ACL:" in line or not line:
                break
        assert "WARNING" in line and "no [acl] policy" in line, line
        assert "denies every request" in line and "loomd init" in line, line
        assert "admin certificate's included" in line, line
        while time.monotonic() < deadline:  # serving: SIGTERM now means a clean shutdown
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        if proc.stderr:
            proc.stderr.close()


def test_which_policy_is_in_force_is_said_for_each_case() -> None:
    from loom.cli.startcheck import acl_notice
    from loom.node.config import NodeConfig

    policy = {"roles": {"admin": {"grants": [{"types": ["*"]}]}},
              "principals": {"spiffe://loom.dev/client/admin": ["admin"]}}
    warn, line = acl_notice(NodeConfig(acl=policy), has_log=False)
    assert not warn and "(1 roles, 1 principals) seeds this new cluster" in line
    warn, line = acl_notice(NodeConfig(acl=policy), has_log=True)
    assert not warn and "replicated policy is in force" in line
    warn, line = acl_notice(NodeConfig(join=True), has_log=False)  # joins: the cluster's
    assert warn and "replicated policy is in force" in line and "denies" not in line
    warn, line = acl_notice(NodeConfig(), has_log=False)
    assert warn and "denies every request" in line


def test_a_single_node_may_serve_with_a_certificate_that_names_no_node(pki: PKI) -> None:
    from loom.cli.startcheck import check_node_certificate
    from loom.node.config import ConfigError, NodeConfig, TLSConfig

    plain = NodeConfig(node_id="n1", tls=TLSConfig(ca=pki.ca, cert=pki.dir / "admin.pem",
                                                   key=pki.dir / "admin.key"))
    check_node_certificate(plain)  # no peers: nothing to prove to anyone
    check_node_certificate(NodeConfig(node_id="n2", tls=TLSConfig(
        ca=pki.ca, cert=pki.dir / "n2.pem", key=pki.dir / "n2.key")))
    try:
        check_node_certificate(NodeConfig(node_id="n2", tls=TLSConfig(
            ca=pki.ca, cert=pki.dir / "n3.pem", key=pki.dir / "n3.key")))
    except ConfigError as e:
        assert "names node 'n3'" in str(e)
    else:
        raise AssertionError("n2 started with n3's certificate")
