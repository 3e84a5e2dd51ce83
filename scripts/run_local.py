"""`make run`: a local three-node Loom cluster on loopback with the development PKI.

Creates certs-dev/ when missing, writes run/<node>.toml for n1..n3 (client ports 6001-6003,
peer ports 7001-7003, HTTP doors 8001-8003), starts `loomd` for each node, waits (at most 30 s)
until `loomctl cluster status` shows a leader, then starts `loom-gateway` on 127.0.0.1:8443 in
front of the doors (run/gateway.yaml: an API key and a static-HS256 JWT issuer whose secrets
are generated under run/, and a dev token minted into run/dev-token.jwt), prints the status
table and how to talk to the cluster, and stops every process when it stops itself.

The runner owns its nodes:
- Only one runner per run directory: it holds an exclusive lock on run/run_local.pid (which
  names its pid) for as long as it lives; a second `make run` finds it and says so.
- The nodes run in a session of their own, so the SIGHUP a closing terminal sends to its
  foreground process group reaches the runner but not the nodes (for which SIGHUP means
  "reload"). SIGINT (Ctrl-C), SIGTERM and SIGHUP all make the runner stop the nodes (SIGTERM,
  a bounded wait, then SIGKILL) and exit.
- On Linux each node also gets SIGTERM from the kernel when the runner dies without cleaning
  up (kill -9), through PR_SET_PDEATHSIG.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
CERTS = ROOT / "certs-dev"
BIN = ROOT / ".venv" / "bin"
NODES = ["n1", "n2", "n3"]
CLUSTER_NAME = "loom-dev"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
PID_FILE = "run_local.pid"
GATEWAY_ID = "spiffe://loom.dev/gateway/edge"
DEV_ISSUER = "https://dev.loom.local"
TOKEN_HOURS = 12
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Stopped(Exception):
    """A stop signal arrived (SIGINT, SIGTERM, or SIGHUP from a closing terminal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _say(text: str, stream: IO[str] = sys.stdout) -> None:
    """Print, unless the terminal is gone (a hangup leaves stdout unwritable)."""
    try:
        stream.write(text + "\n")
        stream.flush()
    except OSError:
        pass


def write_configs(run: Path, client_base: int, peer_base: int, http_base: int) -> list[Path]:
    from loom.cli.loomd import EXAMPLE_ACL
    from loom.node.config import AuditConfig, HttpConfig, NodeConfig, TLSConfig, to_toml

    peers = {n: f"127.0.0.1:{peer_base + i}" for i, n in enumerate(NODES)}
    paths = []
    for i, node in enumerate(NODES):
        cfg = NodeConfig(
            node_id=node, data_dir=run / "data" / node,
            client_listen=f"127.0.0.1:{client_base + i}",
            peer_listen=peers[node],
            peers=dict(peers),
            cluster_name=CLUSTER_NAME,
            tls=TLSConfig(ca=CERTS / "ca.pem", cert=CERTS / f"{node}.pem",
                          key=CERTS / f"{node}.key"),
            audit=AuditConfig(sink="file", path=run / f"{node}-audit.jsonl"),
            gateway_identities=(GATEWAY_ID,),
            acl=EXAMPLE_ACL,
            http=HttpConfig(listen=f"127.0.0.1:{http_base + i}"),
        )
        path = run / f"{node}.toml"
        path.write_text(to_toml(cfg))
        paths.append(path)
    return paths


def _private(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def dev_token(run: Path, sub: str = "ada", roles: tuple[str, ...] = ("data-writer", "reader")
              ) -> str:
    """A token of the dev issuer (HS256 with run/gateway-jwt.secret), as an identity provider
    would issue it: the gateway forwards it as X-Auth-User dev:<sub>."""
    import jwt

    now = int(time.time())
    claims = {"iss": DEV_ISSUER, "aud": "loom", "sub": sub, "roles": list(roles), "iat": now,
              "exp": now + TOKEN_HOURS * 3600}
    return jwt.encode(claims, (run / "gateway-jwt.secret").read_bytes(), algorithm="HS256")


def write_gateway_config(run: Path, port: int, http_base: int) -> Path:
    """run/gateway.yaml with fresh secrets: an API key (run/gateway-api-key, its digest in the
    file) and an HS256 issuer (run/gateway-jwt.secret); a public /healthz, everything else
    authenticated."""
    import hashlib
    import secrets

    import yaml

    api_key = secrets.token_urlsafe(24)
    _private(run / "gateway-api-key", api_key.encode())
    secret = _private(run / "gateway-jwt.secret", secrets.token_bytes(32).hex().encode())
    edge = {"ca_file": str(CERTS / "ca.pem"), "cert_file": str(CERTS / "edge.pem"),
            "key_file": str(CERTS / "edge.key")}
    config = {
        "listeners": [{"name": "https", "address": f"127.0.0.1:{port}", "tls": {
            "cert_file": edge["cert_file"], "key_file": edge["key_file"]}}],
        "middleware": {"auth": {
            "jwt": {"enabled": True, "issuers": [{
                "name": "dev", "issuer": DEV_ISSUER, "algorithms": ["HS256"],
                "secret_file": str(secret)}], "audience": ["loom"], "roles_claim": "roles",
                "claims_to_headers": {"sub": "X-User-ID"}},
            "api_key": {"enabled": True, "header": "X-API-Key", "keys": [{
                "name": "dev", "key_sha256": hashlib.sha256(api_key.encode()).hexdigest(),
                "roles": ["data-writer", "reader"]}]},
            "chain": ["jwt", "api_key"], "guest_roles": ["guest"]}},
        "routes": [{"id": "health", "path": "/healthz", "upstream": "loom"},
                   {"id": "api", "path": "/*", "upstream": "loom", "auth": {"require": True}}],
        "upstreams": [{"name": "loom", "kind": "loom", "tls": edge, "endpoints": [
            f"https://127.0.0.1:{http_base + i}" for i in range(len(NODES))]}],
        "rate_limit": {"enabled": True, "key": "identity", "rate": 100, "burst": 200},
    }
    path = _private(run / "gateway.yaml", yaml.safe_dump(config, sort_keys=False).encode())
    _private(run / "dev-token.jwt", dev_token(run).encode())
    return path


def serves_tls(cert: Path) -> bool:
    """Whether a certificate may serve TLS (certs-dev/ made before gateways did cannot)."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    c = x509.load_pem_x509_certificate(cert.read_bytes())
    eku = c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    return ExtendedKeyUsageOID.SERVER_AUTH in eku


@contextmanager
def sole_runner(run: Path) -> Iterator[None]:
    """Hold run/run_local.pid locked (the kernel drops the lock when the process dies, so a
    stale file never blocks); exit 1 naming the holder when another runner has it."""
    path = run / PID_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            _say(f"Loom is already running from {run} (make run, pid {holder}): stop it "
                 f"with Ctrl-C in its terminal or 'kill {holder}'", sys.stderr)
            raise SystemExit(1) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the runner dies (Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def start_node(config: Path, log: Path, found: bool = False) -> subprocess.Popen[bytes]:
    new = ["--initial-cluster-state", "new"] if found else []
    return _start([str(BIN / "loomd"), "--config", str(config), *new], log)


def start_gateway(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return _start([str(BIN / "loom-gateway"), "run", str(config)], log,
                  {k: v for k, v in os.environ.items() if k != "AUTH_TYPE"})


def _start(argv: list[str], log: Path, env: dict[str, str] | None = None
           ) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        # A session of its own: the terminal's SIGHUP (and Ctrl-C's SIGINT) go to the runner
        # only, which then stops the process with SIGTERM.
        return subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env,
                                preexec_fn=_die_with_parent)  # noqa: PLW1509 - no threads here


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
            _say(f"pid {p.pid} did not stop in time; killing it", sys.stderr)
            p.kill()
            p.wait()


def _on_stop_signal(signum: int, frame: object) -> None:
    raise Stopped(signum)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Run a local three-node Loom cluster.")
    p.add_argument("--run-dir", type=Path, default=ROOT / "run",
                   help="configs, data, logs and the pid file (default: run/)")
    p.add_argument("--client-port", type=int, default=6001,
                   help="n1's client port; n2 and n3 take the next two (default 6001)")
    p.add_argument("--peer-port", type=int, default=7001,
                   help="n1's peer port; n2 and n3 take the next two (default 7001)")
    p.add_argument("--http-port", type=int, default=8001,
                   help="n1's HTTP door; n2 and n3 take the next two (default 8001)")
    p.add_argument("--gateway-port", type=int, default=8443,
                   help="loom-gateway's port (default 8443)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from loom.security.devpki import create_dev_pki

    args = _parse(argv)
    run: Path = args.run_dir.resolve()
    run.mkdir(parents=True, exist_ok=True)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_stop_signal)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with sole_runner(run):
            if not (CERTS / "ca.pem").exists():
                create_dev_pki(CERTS)
                _say(f"created development certificates in {CERTS}")
            elif (CERTS / "edge.pem").exists() and not serves_tls(CERTS / "edge.pem"):
                create_dev_pki(CERTS, force=True)
                _say(f"recreated the development certificates in {CERTS}: the gateway's "
                     "could not serve TLS")
            paths = write_configs(run, args.client_port, args.peer_port, args.http_port)
            gateway = write_gateway_config(run, args.gateway_port, args.http_port)
            endpoints = ",".join(f"127.0.0.1:{args.client_port + i}" for i in range(len(NODES)))
            env = {**os.environ, "LOOM_ENDPOINTS": endpoints, "LOOM_CA": str(CERTS / "ca.pem"),
                   "LOOM_CERT": str(CERTS / "admin.pem"), "LOOM_KEY": str(CERTS / "admin.key")}
            try:
                for node, path in zip(NODES, paths, strict=True):
                    # a founder's first start founds the cluster; later ones resume their logs
                    first = not (run / "data" / node).exists()
                    procs.append(start_node(path, run / f"{node}.log", found=first))
                return serve(procs, env, endpoints, run, gateway, args.gateway_port)
            finally:
                # Further signals must not interrupt the stop; it is bounded by itself.
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_IGN)
                stop(procs)
    except Stopped as e:
        _say(f"stopped by {e}; the nodes are stopped", sys.stderr)
        return 0


def gateway_ready(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def serve(procs: list[subprocess.Popen[bytes]], env: dict[str, str], endpoints: str,
          run: Path, gateway: Path, gateway_port: int) -> int:
    deadline = time.monotonic() + READY_TIMEOUT
    while not has_leader(env):
        if any(p.poll() is not None for p in procs):
            _say(f"a loomd exited early; see {run}/*.log", sys.stderr)
            return 1
        if time.monotonic() >= deadline:
            _say(f"no leader within {READY_TIMEOUT:g} s; see {run}/*.log", sys.stderr)
            return 1
        time.sleep(0.3)
    procs.append(start_gateway(gateway, run / "gateway.log"))
    while not gateway_ready(gateway_port):
        if procs[-1].poll() is not None or time.monotonic() >= deadline + 15:
            _say(f"loom-gateway did not start; see {run}/gateway.log", sys.stderr)
            return 1
        time.sleep(0.1)
    table = loomctl(env, "cluster", "status").stdout.rstrip()
    gw = f"https://127.0.0.1:{gateway_port}"
    _say(f"""
Loom is running: cluster {CLUSTER_NAME!r}, {len(NODES)} nodes on {endpoints}
(mutual TLS, development certificates). Logs and audit records: {run}/

{table}

In another shell:
  export LOOM_ENDPOINTS={endpoints} LOOM_CA={CERTS}/ca.pem
  export LOOM_CERT={CERTS}/admin.pem LOOM_KEY={CERTS}/admin.key
  {BIN}/loomctl cluster status
  {BIN}/loomctl put greeting hello && {BIN}/loomctl get greeting
  {BIN}/loomctl --cert {CERTS}/reader.pem --key {CERTS}/reader.key put greeting bye
  {BIN}/loomctl members list
  {BIN}/loomctl leader transfer && {BIN}/loomctl cluster status
  tail -n 1 {run}/n*-audit.jsonl

Through loom-gateway ({gw}; a dev JWT for 'ada', valid {TOKEN_HOURS} h, is in
{run}/dev-token.jwt; the API key in {run}/gateway-api-key):
  curl --cacert {CERTS}/ca.pem -X POST -H "Authorization: Bearer $(cat {run}/dev-token.jwt)" \\
       {gw}/v1/counters/visits/increment
  curl --cacert {CERTS}/ca.pem -H "X-API-Key: $(cat {run}/gateway-api-key)" \\
       {gw}/v1/counters/visits
  tail -n 1 {run}/n*-audit.jsonl   # "principal":"user:dev:ada", "via_gateway":"{GATEWAY_ID}"

Ctrl-C (or closing this terminal) stops the cluster and the gateway.""")
    while all(p.poll() is None for p in procs):
        time.sleep(0.5)
    _say(f"a process exited; see {run}/*.log", sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
