"""`make run`: a local three-node Loom cluster on loopback with the development PKI.

Creates certs-dev/ when missing, writes run/<node>.toml for n1..n3 (client ports 6001-6003,
peer ports 7001-7003), starts `loomd` for each node, waits (at most 30 s) until
`loomctl cluster status` shows a leader, prints the status table and how to talk to the
cluster, and stops every node on Ctrl-C (SIGTERM, a bounded wait, then SIGKILL).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CERTS = ROOT / "certs-dev"
RUN = ROOT / "run"
BIN = ROOT / ".venv" / "bin"
NODES = ["n1", "n2", "n3"]
CLIENT_BASE_PORT = 6001
PEER_BASE_PORT = 7001
CLUSTER_NAME = "loom-dev"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0

CLIENT_ADDRS = {n: f"127.0.0.1:{CLIENT_BASE_PORT + i}" for i, n in enumerate(NODES)}
PEER_ADDRS = {n: f"127.0.0.1:{PEER_BASE_PORT + i}" for i, n in enumerate(NODES)}
ENDPOINTS = ",".join(CLIENT_ADDRS.values())


def write_configs() -> list[Path]:
    from loom.cli.loomd import EXAMPLE_ACL
    from loom.node.config import AuditConfig, NodeConfig, TLSConfig, to_toml

    paths = []
    for node in NODES:
        cfg = NodeConfig(
            node_id=node, data_dir=RUN / "data" / node,
            client_listen=CLIENT_ADDRS[node],
            peer_listen=PEER_ADDRS[node],
            peers=dict(PEER_ADDRS),
            cluster_name=CLUSTER_NAME,
            tls=TLSConfig(ca=CERTS / "ca.pem", cert=CERTS / f"{node}.pem",
                          key=CERTS / f"{node}.key"),
            audit=AuditConfig(sink="file", path=RUN / f"{node}-audit.jsonl"),
            gateway_identities=("spiffe://loom.dev/gateway/edge",),
            acl=EXAMPLE_ACL,
        )
        path = RUN / f"{node}.toml"
        path.write_text(to_toml(cfg))
        paths.append(path)
    return paths


def loomctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "loomctl"), "--timeout", "2", *args], env=env,
                          capture_output=True, text=True, check=False, timeout=30)


def has_leader(env: dict[str, str]) -> bool:
    r = loomctl(env, "-o", "json", "cluster", "status")
    if r.returncode != 0:
        return False
    try:
        answers = json.loads(r.stdout)["result"]
    except (ValueError, KeyError, TypeError):
        return False
    return any(isinstance(a, dict) and a.get("role") == "leader" for a in answers)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every node still running, wait for all within STOP_TIMEOUT, then SIGKILL."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"loomd (pid {p.pid}) did not stop in time; killing it", file=sys.stderr)
            p.kill()
            p.wait()


def main() -> int:
    from loom.security.devpki import create_dev_pki

    if not (CERTS / "ca.pem").exists():
        create_dev_pki(CERTS)
        print(f"created development certificates in {CERTS}")
    RUN.mkdir(exist_ok=True)
    paths = write_configs()
    env = {**os.environ, "LOOM_ENDPOINTS": ENDPOINTS, "LOOM_CA": str(CERTS / "ca.pem"),
           "LOOM_CERT": str(CERTS / "admin.pem"), "LOOM_KEY": str(CERTS / "admin.key")}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for node, path in zip(NODES, paths, strict=True):
            log = (RUN / f"{node}.log").open("ab")
            procs.append(subprocess.Popen([str(BIN / "loomd"), "--config", str(path)],
                                          stdout=log, stderr=log))
            log.close()
        deadline = time.monotonic() + READY_TIMEOUT
        while not has_leader(env):
            if any(p.poll() is not None for p in procs):
                print(f"a loomd exited early; see {RUN}/*.log", file=sys.stderr)
                return 1
            if time.monotonic() >= deadline:
                print(f"no leader within {READY_TIMEOUT:g} s; see {RUN}/*.log",
                      file=sys.stderr)
                return 1
            time.sleep(0.3)
        table = loomctl(env, "cluster", "status").stdout.rstrip()
        print(f"""
Loom is running: cluster {CLUSTER_NAME!r}, {len(NODES)} nodes on {ENDPOINTS}
(mutual TLS, development certificates). Logs and audit records: {RUN}/

{table}

In another shell:
  export LOOM_ENDPOINTS={ENDPOINTS} LOOM_CA={CERTS}/ca.pem
  export LOOM_CERT={CERTS}/admin.pem LOOM_KEY={CERTS}/admin.key
  .venv/bin/loomctl cluster status
  .venv/bin/loomctl put greeting hello && .venv/bin/loomctl get greeting
  .venv/bin/loomctl --cert {CERTS}/reader.pem --key {CERTS}/reader.key put greeting bye
  .venv/bin/loomctl members list
  .venv/bin/loomctl leader transfer && .venv/bin/loomctl cluster status
  tail -n 1 {RUN}/n*-audit.jsonl

Ctrl-C stops the cluster.""", flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print(f"a loomd exited; see {RUN}/*.log", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop(procs)


if __name__ == "__main__":
    sys.exit(main())
