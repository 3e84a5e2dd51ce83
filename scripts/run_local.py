"""`make run`: a local Loom on loopback with the development PKI.

Creates certs-dev/ when missing, writes run/<node>.toml, starts `loomd` for each node, waits
until each one answers, prints how to talk to it, and stops everything on Ctrl-C (SIGTERM, then
waits for a clean exit).
"""

from __future__ import annotations

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
NODES = ["n1"]
BASE_PORT = 6001


def main() -> int:
    from loom.cli.loomd import EXAMPLE_ACL
    from loom.node.config import AuditConfig, NodeConfig, TLSConfig, to_toml
    from loom.security.devpki import create_dev_pki

    if not (CERTS / "ca.pem").exists():
        create_dev_pki(CERTS)
        print(f"created development certificates in {CERTS}")
    RUN.mkdir(exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    for i, node in enumerate(NODES):
        cfg = NodeConfig(
            node_id=node, data_dir=RUN / "data" / node,
            client_listen=f"127.0.0.1:{BASE_PORT + i}",
            tls=TLSConfig(ca=CERTS / "ca.pem", cert=CERTS / f"{node}.pem",
                          key=CERTS / f"{node}.key"),
            audit=AuditConfig(sink="file", path=RUN / f"{node}-audit.jsonl"),
            gateway_identities=("spiffe://loom.dev/gateway/edge",),
            acl=EXAMPLE_ACL,
        )
        path = RUN / f"{node}.toml"
        path.write_text(to_toml(cfg))
        log = (RUN / f"{node}.log").open("ab")
        procs.append(subprocess.Popen([str(BIN / "loomd"), "--config", str(path)],
                                      stdout=log, stderr=log))
    endpoints = ",".join(f"127.0.0.1:{BASE_PORT + i}" for i in range(len(NODES)))
    env = {**os.environ, "LOOM_ENDPOINTS": endpoints, "LOOM_CA": str(CERTS / "ca.pem"),
           "LOOM_CERT": str(CERTS / "admin.pem"), "LOOM_KEY": str(CERTS / "admin.key")}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            print(f"loomd exited early; see {RUN}/*.log", file=sys.stderr)
            return 1
        r = subprocess.run([str(BIN / "loomctl"), "ping"], env=env, capture_output=True,
                           check=False)
        if r.returncode == 0:
            break
        time.sleep(0.2)
    else:
        print("loomd did not become ready within 30 s", file=sys.stderr)
        for p in procs:
            p.terminate()
        return 1
    print(f"""
Loom is running: {len(NODES)} node(s) on {endpoints} (mutual TLS, development certificates).
Logs and audit records: {RUN}/

In another shell:
  export LOOM_ENDPOINTS={endpoints} LOOM_CA={CERTS}/ca.pem
  export LOOM_CERT={CERTS}/admin.pem LOOM_KEY={CERTS}/admin.key
  .venv/bin/loomctl put greeting hello && .venv/bin/loomctl get greeting
  .venv/bin/loomctl --cert {CERTS}/reader.pem --key {CERTS}/reader.key put greeting bye
  tail -n 1 {RUN}/n1-audit.jsonl

Ctrl-C stops the cluster.""", flush=True)
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
