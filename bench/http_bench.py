"""HTTP against the binary protocol, on the same nodes, in one run.

    .venv/bin/python bench/http_bench.py [--seconds 6] [--clients 1 64] [--topology 1 3]

Real `loomd` processes (TLS 1.3, client certificates, audit to a file) serving both the client
listener and the HTTP listener: one node, then the 3-node cluster. Against the leader, MAP_PUT
and MAP_GET with 1 and 64 clients, each client one request at a time on one long-lived
connection: over HTTP/1.1 (`PUT /v1/maps/bench/{key}` with the raw 256-byte value, `GET` with
`Accept: application/octet-stream`), and over the binary protocol (bench/loadgen.py, window 1).
Both load generators are lean keep-alive loops on `TLSStream` (the general-purpose
loom/http/client.py costs about three times the binary loop's CPU per request, which on a
shared machine is taken from the nodes).

Reported per row: requests/s, p50/p99 latency, and CPU per request of every loomd process
(utime + stime from /proc/PID/stat, before and after) and of this load generator. Both
protocols' runs include making their connections (64 mutual-TLS handshakes at 64 clients).
The target of the HTTP door: HTTP at >= 70% of the binary protocol's throughput at 64 clients.
The load generator shares the machine's cores with the nodes: on a shared machine, figures move
between runs; compare the two protocols of one run, and the leader's CPU per request, which is
the steadier figure (the summary gives both).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import CONNECT_CONCURRENCY, Result, open_connection, run_load
from loom.cli.loomd import EXAMPLE_ACL
from loom.http import HTTPClient
from loom.security.devpki import create_dev_pki
from loom.security.tls import client_context
from loom.security.tlsstream import TLSStream

VALUE = b"x" * 256
KEYS = 10_000
TICK = os.sysconf("SC_CLK_TCK")


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/PID/stat (fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / TICK


class Nodes:
    """One node or a 3-node cluster of `loomd` processes, each with both listeners."""

    def __init__(self, workdir: Path, size: int) -> None:
        self.ids = [f"n{i + 1}" for i in range(size)]
        self.dir = workdir / f"nodes{size}"
        self.certs = self.dir / "certs"
        ports = free_ports(3 * size)
        self.client = {n: f"127.0.0.1:{ports[i]}" for i, n in enumerate(self.ids)}
        self.http = {n: f"127.0.0.1:{ports[size + i]}" for i, n in enumerate(self.ids)}
        self.peer = {n: f"127.0.0.1:{ports[2 * size + i]}" for i, n in enumerate(self.ids)}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def config(self, node: str) -> dict[str, Any]:
        d = self.dir / node
        cfg: dict[str, Any] = {
            "node_id": node, "data_dir": str(d / "data"), "client_listen": self.client[node],
            "trust_domain": "loom.dev", "require_client_auth": True, "log_level": "warning",
            "tls": {"ca": str(self.certs / "ca.pem"), "cert": str(self.certs / f"{node}.pem"),
                    "key": str(self.certs / f"{node}.key")},
            "audit": {"sink": "file", "path": str(d / "audit.jsonl")},
            "http": {"listen": self.http[node]},
            "acl": EXAMPLE_ACL,
        }
        if len(self.ids) > 1:
            cfg.update(cluster_name="loom", peer_listen=self.peer[node], peers=dict(self.peer))
        return cfg

    @contextlib.contextmanager
    def running(self) -> Iterator[Nodes]:
        create_dev_pki(self.certs)
        try:
            for n in self.ids:
                d = self.dir / n
                d.mkdir(parents=True, exist_ok=True)
                (d / "loomd.toml").write_text(tomli_w.dumps(self.config(n)))
                with (d / "loomd.log").open("wb") as log:
                    self.procs[n] = subprocess.Popen(
                        [sys.executable, "-m", "loom.cli.loomd", "--config",
                         str(d / "loomd.toml"), "--initial-cluster-state", "new"],
                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            yield self
        finally:
            for p in self.procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in self.procs.values():
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=10)

    def cpu(self) -> dict[str, float]:
        return {n: cpu_seconds(p.pid) for n, p in self.procs.items()}

    def check_alive(self) -> None:
        for n, p in self.procs.items():
            if p.poll() is not None:
                tail = (self.dir / n / "loomd.log").read_text(errors="replace")[-500:]
                raise SystemExit(f"{n} exited with code {p.returncode}: {tail}")


async def find_leader(nodes: Nodes, ctx: ssl.SSLContext, limit_s: float = 30) -> str:
    """The node that leads, once it has acknowledged a write over HTTP."""
    async with HTTPClient(ctx) as c:
        with trio.fail_after(limit_s):
            while True:
                nodes.check_alive()
                for n in nodes.ids:
                    try:
                        r = await c.request("GET", f"https://{nodes.http[n]}/v1/cluster")
                    except (OSError, trio.BrokenResourceError, ssl.SSLError):
                        continue
                    if r.status != 200 or b'"role":"leader"' not in r.body.replace(b" ", b""):
                        continue
                    w = await c.request("PUT", f"https://{nodes.http[n]}/v1/maps/bench/probe",
                                        body=VALUE)
                    if w.status == 200:
                        return n
                await trio.sleep(0.2)


async def _http_client(stream: TLSStream, addr: str, op: str, first: int, step: int,
                       deadline: float, out: Result) -> None:
    """One keep-alive connection, one request at a time: the HTTP twin of bench/loadgen.py's
    lean loop (requests written from a template; the answer read up to its Content-Length,
    which loomd's door always sends for these routes). Not a general client: anything but a
    Content-Length answer is an error of the benchmark."""
    if op == "MAP_PUT":
        template = (b"PUT /v1/maps/bench/k%d HTTP/1.1\r\nhost: " + addr.encode() +
                    b"\r\ncontent-type: application/octet-stream\r\ncontent-length: %d"
                    b"\r\n\r\n")
    else:
        template = (b"GET /v1/maps/bench/k%d HTTP/1.1\r\nhost: " + addr.encode() +
                    b"\r\naccept: application/octet-stream\r\n\r\n")
    buf = bytearray()
    i = first
    async with stream:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            if op == "MAP_PUT":
                await stream.send_all(template % (i % KEYS, len(VALUE)) + VALUE)
            else:
                await stream.send_all(template % (i % KEYS))
            while (end := buf.find(b"\r\n\r\n")) < 0:
                buf += await _receive(stream)
            head = bytes(buf[:end]).lower()
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                raise RuntimeError(f"an answer without Content-Length: {head[:200]!r}")
            stop = head.find(b"\r\n", at + 2)
            size = end + 4 + int(head[at + 17:stop if stop >= 0 else len(head)])
            while len(buf) < size:
                buf += await _receive(stream)
            out.latencies_ms.append((time.perf_counter() - t0) * 1000)
            out.ops += 1
            out.errors += head[9:12] != b"200"
            del buf[:size]
            i += step


async def _receive(stream: TLSStream) -> bytes:
    data = await stream.receive_some(1 << 16)
    if not data:
        raise EOFError("loomd closed the connection")
    return data


async def http_load(addr: str, ctx: ssl.SSLContext, op: str, clients: int,
                    seconds: float) -> Result:
    out = Result(0, 0, 0.0, [])
    streams: list[TLSStream] = []
    limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)
    async with trio.open_nursery() as n:
        for _ in range(clients):
            n.start_soon(open_connection, int(addr.rsplit(":", 1)[1]), ctx, limiter, streams)
    start = time.perf_counter()
    async with trio.open_nursery() as n:
        for k, stream in enumerate(streams):
            n.start_soon(_http_client, stream, addr, op, k, clients, start + seconds, out)
    out.seconds = time.perf_counter() - start
    return out


@dataclass(frozen=True)
class Row:
    nodes: int
    op: str
    clients: int
    proto: str
    result: Result
    cpu_us: dict[str, float]  # per request, per loomd process ("leader", "follower n2", ...)
    loadgen_us: float

    def line(self) -> str:
        r = self.result
        cpu = "  ".join(f"{k} {v:5.0f}" for k, v in self.cpu_us.items())
        return (f"{self.nodes:5d} {self.op:8} {self.clients:7d} {self.proto:6} "
                f"{r.rate:9.0f} {r.pct(0.5):8.2f} {r.pct(0.99):8.2f}  {r.errors:6d}  "
                f"{self.loadgen_us:5.0f}  {cpu}")


HEADER = (f"{'nodes':>5} {'op':8} {'clients':>7} {'proto':6} {'req/s':>9} {'p50 ms':>8} "
          f"{'p99 ms':>8}  {'errors':>6}  {'gen':>5}  loomd CPU µs/request")


async def measure(nodes: Nodes, leader: str, ctx: ssl.SSLContext, proto: str, op: str,
                  clients: int, seconds: float) -> Row:
    before, gen0 = nodes.cpu(), time.process_time()
    if proto == "binary":
        def body(i: int) -> dict[str, object]:
            b: dict[str, object] = {"name": "bench", "key": f"k{i % KEYS}"}
            if op == "MAP_PUT":
                b["value"] = VALUE
            return b

        port = int(nodes.client[leader].rsplit(":", 1)[1])
        result = await run_load(port, ctx, op, body, clients=clients, window=1,
                                total=1 << 40, max_seconds=seconds)
    else:
        result = await http_load(nodes.http[leader], ctx, op, clients, seconds)
    after, gen = nodes.cpu(), time.process_time() - gen0
    nodes.check_alive()
    ops = max(1, result.ops)
    cpu = {("leader" if n == leader else n): (after[n] - before[n]) / ops * 1e6
           for n in nodes.ids}
    return Row(len(nodes.ids), op, clients, proto, result, cpu, gen / ops * 1e6)


async def run_topology(nodes: Nodes, args: argparse.Namespace) -> list[Row]:
    ctx = client_context(nodes.certs / "ca.pem", nodes.certs / "admin.pem",
                         nodes.certs / "admin.key")
    leader = await find_leader(nodes, ctx)
    port = int(nodes.client[leader].rsplit(":", 1)[1])
    await run_load(port, ctx, "MAP_PUT", lambda i: {"name": "bench", "key": f"k{i % KEYS}",
                                                     "value": VALUE},
                   clients=1, window=64, total=KEYS, max_seconds=60)  # every GET hits
    rows = []
    for op in ("MAP_PUT", "MAP_GET"):
        for clients in args.clients:
            for proto in ("binary", "http"):
                row = await measure(nodes, leader, ctx, proto, op, clients, args.seconds)
                print(row.line(), flush=True)
                rows.append(row)
    return rows


def summary(rows: list[Row]) -> list[str]:
    out = []
    for r in rows:
        if r.proto != "http":
            continue
        [b] = [x for x in rows if (x.nodes, x.op, x.clients, x.proto) ==
               (r.nodes, r.op, r.clients, "binary")]
        ratio = r.result.rate / b.result.rate if b.result.rate else 0.0
        target = ("  (target >= 70%: " + ("met)" if ratio >= 0.7 else "NOT met)")
                  if r.clients >= 64 else "")
        h, bb = r.cpu_us["leader"], b.cpu_us["leader"]
        cpu = f"; leader CPU {h:.0f} µs/request against {bb:.0f} ({h / max(1e-9, bb):.1f}x)"
        out.append(f"{r.nodes} node{'s' if r.nodes > 1 else ''} {r.op} {r.clients:2d} clients: "
                   f"HTTP at {ratio:4.0%} of binary{target}{cpu}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0, help="per measurement")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--topology", type=int, nargs="+", default=[1, 3], choices=[1, 3],
                    help="node counts to run")
    args = ap.parse_args(argv)
    print(f"{os.cpu_count()} cores; load generator in this process; {args.seconds:.0f} s "
          "per row\n" + HEADER, flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="loom-httpbench-") as tmp:
        for size in args.topology:
            with Nodes(Path(tmp), size).running() as nodes:
                rows += trio.run(run_topology, nodes, args)
    print("\n" + "\n".join(summary(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
