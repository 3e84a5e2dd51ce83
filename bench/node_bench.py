"""Single-node request-path benchmark: a real `loomd` process, TLS 1.3 with client
certificates, audit on (file sink), driven by bench/loadgen.py from this process.

    .venv/bin/python bench/node_bench.py [--total 20000] [--seconds 10]

Prints MAP_PUT and MAP_GET throughput and p50/p99 latency for 1 and 64 clients, one request at
a time and pipelined (64 in flight per connection), and p50/p99 at a paced 1,000 ops/s.
The load generator shares the machine's cores with the node; its own CPU time is reported.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import run_load
from loom.cli.loomd import EXAMPLE_ACL
from loom.node.config import AuditConfig, NodeConfig, TLSConfig, to_toml
from loom.security.devpki import create_dev_pki
from loom.security.tls import client_context

VALUE = b"x" * 256


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_node(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    certs = tmp / "certs"
    create_dev_pki(certs)
    cfg = NodeConfig(
        node_id="n1", data_dir=tmp / "data", client_listen=f"127.0.0.1:{port}",
        tls=TLSConfig(ca=certs / "ca.pem", cert=certs / "n1.pem", key=certs / "n1.key"),
        audit=AuditConfig(sink="file", path=tmp / "audit.jsonl"), acl=EXAMPLE_ACL,
        log_level="warning",
    )
    (tmp / "n1.toml").write_text(to_toml(cfg))
    proc = subprocess.Popen([sys.executable, "-m", "loom.cli.loomd", "--config",
                             str(tmp / "n1.toml")])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("loomd did not start")


async def main_async(args: argparse.Namespace, port: int, certs: Path) -> None:
    ctx = client_context(certs / "ca.pem", certs / "admin.pem", certs / "admin.key")

    def put(i: int) -> dict[str, object]:
        return {"name": "bench", "key": f"k{i % 10000}", "value": VALUE}

    def get(i: int) -> dict[str, object]:
        return {"name": "bench", "key": f"k{i % 10000}"}

    # Preload keys so gets hit.
    await run_load(port, ctx, "MAP_PUT", put, clients=4, window=64, total=10000,
                   max_seconds=30)
    print(f"{'operation':10} {'clients':>7} {'in flight':>9}  result")
    for op, body in (("MAP_PUT", put), ("MAP_GET", get)):
        for clients in (1, 64):
            for window in (1, 64):
                total = args.total if window > 1 or clients > 1 else args.total // 4
                r = await run_load(port, ctx, op, body, clients=clients, window=window,
                                   total=total, max_seconds=args.seconds)
                print(f"{op:10} {clients:7d} {window:9d}  {r.row()}", flush=True)
    for op, body in (("MAP_PUT", put), ("MAP_GET", get)):
        r = await run_load(port, ctx, op, body, clients=4, window=1, total=args.paced_total,
                           max_seconds=args.seconds, rate_per_s=1000)
        print(f"{op:10} paced at 1,000 ops/s (4 clients)  {r.row()}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--total", type=int, default=20000, help="requests per scenario (bound)")
    p.add_argument("--seconds", type=float, default=10.0, help="time bound per scenario")
    p.add_argument("--paced-total", type=int, default=5000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        port = free_port()
        proc = start_node(tmp, port)
        try:
            before = resource.getrusage(resource.RUSAGE_SELF)
            t0 = time.perf_counter()
            trio.run(main_async, args, port, tmp / "certs")
            after = resource.getrusage(resource.RUSAGE_SELF)
            wall = time.perf_counter() - t0
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            print(f"load generator CPU: {cpu:.1f} s over {wall:.1f} s wall "
                  f"({100 * cpu / wall:.0f}% of one core)")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = -9
            lines = sum(1 for _ in (tmp / "audit.jsonl").open()) if (
                tmp / "audit.jsonl").exists() else 0
            print(f"loomd exit code {rc}; audit lines written: {lines}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
