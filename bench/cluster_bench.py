"""Cluster benchmark: a 3-node Loom cluster against a 3-member etcd cluster, in one run.

    .venv/bin/python bench/cluster_bench.py [--seconds 10] [--total 50000] [--clients 1,64]
                                            [--only loom|etcd] [--loom-conns 8] [--repeat 1]

Both clusters run on this machine, on 127.0.0.1, with mutual TLS (client and peer) and fsync on,
one after the other (never at the same time). Same workload shape for both: 256-byte values;
closed-loop clients, one request in flight each, for 1 and 64 clients, spread over at most
`--loom-conns` connections (etcdload's `-conns 8` for etcd; for Loom, 64 clients = 8 TLS
connections with 8 requests in flight each). Figures: writes/s, write p50/p99, linearizable
reads/s (Loom MAP_GET, etcd range with consistency "l"), all at the leader; and leader failover:
SIGKILL the leader, then one prober per surviving node sends a write at a time over a
long-lived mutual-TLS connection (each attempt bounded by `--probe-timeout-ms`) until the first
acknowledged write; the figure is the time from the kill to that acknowledgement.

The Loom load generator (bench/loadgen.py) runs in this process and shares the machine's cores
with the cluster: its own CPU time is reported. etcd's load generator is a separate Go process
(its CPU time is reported too). Prints a table with Loom/etcd per figure and saves a chart
(bench/out/cluster_bench.png) and the raw figures (bench/out/cluster_bench.json). Targets are
reported, never asserted. Every process started here is stopped by PID, also on Ctrl-C.

A shared machine moves a figure by 15-30% from one run to the next. `--repeat N` measures both
sides N times, alternating (etcd, Loom, etcd, Loom, ...: each pair close in time, on fresh
clusters), reports the median of each figure in the table and chart, and lists the Loom/etcd
ratio of every pair under the table.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import json
import os
import platform
import resource
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import tomli_w
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import etcd_peer
from bench.cluster_plot import Bar, plot
from bench.loadgen import run_load
from bench.progress import phases
from loom.chaos.cluster import free_ports
from loom.cli.loomd import EXAMPLE_ACL
from loom.security.devpki import create_dev_pki
from loom.security.tls import client_context
from loom.security.tlsstream import TLSStream
from loom.wire import catalog
from loom.wire.codec import FrameDecoder, decode_payload, encode

VALUE = b"x" * 256
OUT_DIR = Path(__file__).resolve().parent / "out"
NODES = ("n1", "n2", "n3")
LEADER_WAIT_S = 30.0
FAILOVER_BOUND_S = 30.0
OK, UNAVAILABLE, NOT_LEADER = 0, 9, 10


def say(msg: str) -> None:
    print(msg, flush=True)


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has spent, from /proc/PID/stat (fields 14 and 15, counted
    after the parenthesised command name, which may hold spaces)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def cpu_per_request(before: dict[str, float], after: dict[str, float],
                    requests: int) -> dict[str, float]:
    """CPU µs per request of each process between two `cpu_seconds` samples."""
    n = max(1, requests)
    return {k: (after[k] - before[k]) * 1e6 / n for k in before if k in after}


# -- results ------------------------------------------------------------------------------------

@dataclass
class Figures:
    """One system's figures; None where not measured."""

    writes: dict[int, float] = field(default_factory=dict)  # clients -> acknowledged writes/s
    write_p50: dict[int, float] = field(default_factory=dict)  # clients -> ms
    write_p99: dict[int, float] = field(default_factory=dict)
    reads: dict[int, float] = field(default_factory=dict)  # clients -> linearizable reads/s
    read_p99: dict[int, float] = field(default_factory=dict)
    lease_reads: dict[int, float] = field(default_factory=dict)  # Loom, raft.lease_reads on
    errors: int = 0
    failover_ms: float | None = None
    failover_note: str = ""
    loadgen_cpu_s: float = 0.0  # the load generator's own CPU time over the load phases
    loadgen_wall_s: float = 0.0
    # "MAP_PUT 1" -> process ("client", "leader", "follower 1", ...) -> CPU µs per request
    cpu_us: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: str = ""  # why this side did not run (or stopped early)


def med(xs: list[float | None]) -> float | None:
    """The median of what was measured (None where nothing was)."""
    known = [x for x in xs if x is not None]
    return statistics.median(known) if known else None


def median_figures(runs: list[Figures]) -> Figures:
    """Each figure's median over the runs that measured it; counters and CPU are summed."""
    out = Figures()
    for name in ("writes", "write_p50", "write_p99", "reads", "read_p99", "lease_reads"):
        per_run: list[dict[int, float]] = [getattr(f, name) for f in runs]
        merged = getattr(out, name)
        for c in sorted({c for d in per_run for c in d}):
            m = med([d.get(c) for d in per_run])
            if m is not None:
                merged[c] = m
    for phase in sorted({p for f in runs for p in f.cpu_us}):
        procs = {k for f in runs for k in f.cpu_us.get(phase, {})}
        out.cpu_us[phase] = {k: v for k in sorted(procs)
                             if (v := med([f.cpu_us.get(phase, {}).get(k) for f in runs]))
                             is not None}
    out.failover_ms = med([f.failover_ms for f in runs])
    out.errors = sum(f.errors for f in runs)
    out.loadgen_cpu_s = sum(f.loadgen_cpu_s for f in runs)
    out.loadgen_wall_s = sum(f.loadgen_wall_s for f in runs)
    out.failover_note = "; ".join(f"run {i + 1}: {f.failover_note}"
                                  for i, f in enumerate(runs) if f.failover_note)
    out.skipped = "; ".join(f"run {i + 1}: {f.skipped}" for i, f in enumerate(runs) if f.skipped)
    return out


# -- a minimal Loom wire client for status and failover probes -------------------------------

# Every connection is a fresh deduplication identity: its request ids (the sequence numbers)
# start at 1 again, so reusing an identity (as `id(conn)` of a collected connection would)
# makes the node answer CONFLICT for a sequence number it already saw.
RUN_ID = uuid.uuid4().hex[:12]
_CONN_IDS = itertools.count(1)


class LoomConn:
    """One long-lived mutual-TLS connection speaking Loom frames, one request at a time."""

    def __init__(self, addr: str, stream: TLSStream) -> None:
        self.addr = addr
        self.stream = stream
        self.dec = FrameDecoder(1 << 24)
        self.next_id = 1

    @classmethod
    async def open(cls, addr: str, ctx: ssl.SSLContext, limit_s: float) -> LoomConn:
        host, _, port = addr.rpartition(":")
        with trio.fail_after(limit_s):
            tcp = await trio.open_tcp_stream(host, int(port))
            stream = TLSStream(tcp, ctx, server_hostname="localhost")
            try:
                await stream.do_handshake()
                conn = cls(addr, stream)
                hello = await conn._call_raw("HELLO", {
                    "client_name": "cluster-bench", "min_version": 1, "max_version": 1,
                    "client_id": f"cluster-bench-{RUN_ID}-{next(_CONN_IDS)}"})
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        if hello["s"] != OK:
            await trio.aclose_forcefully(stream)
            raise ConnectionError(f"HELLO refused by {addr}: {hello.get('e')}")
        return conn

    async def _call_raw(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        rid = self.next_id
        self.next_id += 1
        await self.stream.send_all(encode({"v": 1, "id": rid, "op": catalog.BY_NAME[op].opcode,
                                           "b": body, "q": rid}))
        while True:
            p = self.dec.next_payload()
            if p is not None:
                obj = decode_payload(p)
                if isinstance(obj, dict) and obj.get("id") == rid:
                    return obj
                continue  # a stale or pushed frame
            data = await self.stream.receive_some(1 << 16)
            if not data:
                raise EOFError(f"{self.addr} closed the connection")
            self.dec.feed(data)

    async def call(self, op: str, body: dict[str, Any], limit_s: float) -> dict[str, Any]:
        """One request; raises trio.TooSlowError (the connection is then unusable) or OSError."""
        with trio.fail_after(limit_s):
            return await self._call_raw(op, body)

    async def aclose(self) -> None:
        """Close with a TLS close_notify when the stream still works (bounded), else abruptly."""
        with trio.move_on_after(1.0):
            try:
                await self.stream.aclose()
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        await trio.aclose_forcefully(self.stream)


CONN_ERRORS = (OSError, EOFError, trio.BrokenResourceError, trio.ClosedResourceError,
               trio.TooSlowError, ConnectionError)


# -- the Loom cluster ----------------------------------------------------------------------------

class LoomCluster:
    """Three `loomd` processes with a dev PKI (mutual TLS for clients and peers)."""

    def __init__(self, workdir: Path, tick_ms: int, *, lease_reads: bool = False) -> None:
        self.tick_ms = tick_ms
        self.lease_reads = lease_reads
        self.dir = workdir / ("loom-lease" if lease_reads else "loom")
        self.certs = self.dir / "certs"
        ports = free_ports(6)
        self.client = {n: f"127.0.0.1:{ports[i]}" for i, n in enumerate(NODES)}
        self.peer = {n: f"127.0.0.1:{ports[3 + i]}" for i, n in enumerate(NODES)}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: set[str] = set()

    def config(self, node: str) -> dict[str, Any]:
        d = self.dir / node
        return {
            "node_id": node, "data_dir": str(d / "data"), "client_listen": self.client[node],
            "cluster_name": "loom", "peer_listen": self.peer[node], "peers": dict(self.peer),
            "trust_domain": "loom.dev", "require_client_auth": True, "log_level": "warning",
            "tls": {"ca": str(self.certs / "ca.pem"), "cert": str(self.certs / f"{node}.pem"),
                    "key": str(self.certs / f"{node}.key")},
            "audit": {"sink": "file", "path": str(d / "audit.jsonl")},
            "raft": {"tick_ms": self.tick_ms, "lease_reads": self.lease_reads},
            "acl": EXAMPLE_ACL,
        }

    @contextlib.contextmanager
    def running(self) -> Iterator[LoomCluster]:
        create_dev_pki(self.certs)
        try:
            for n in NODES:
                d = self.dir / n
                d.mkdir(parents=True, exist_ok=True)
                cfg = d / "loomd.toml"
                cfg.write_text(tomli_w.dumps(self.config(n)))
                log = (d / "loomd.log").open("wb")
                # own session: Ctrl-C reaches this process only; nodes are stopped by PID below
                self.procs[n] = subprocess.Popen(
                    [sys.executable, "-m", "loom.cli.loomd", "--config", str(cfg),
                     "--initial-cluster-state", "new"],  # founders; ignored once they have a log
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                log.close()
            yield self
        finally:
            self.stop()

    def exited(self) -> str:
        """A description of nodes that exited by themselves (not killed here), or ''."""
        out = []
        for n, p in self.procs.items():
            if n not in self.killed and p.poll() is not None:
                tail = (self.dir / n / "loomd.log").read_text(errors="replace").strip()
                out.append(f"{n} exited with code {p.returncode}: "
                           f"{tail.splitlines()[-1] if tail else '(no output)'}")
        return "; ".join(out)

    def kill(self, node: str) -> None:
        self.killed.add(node)
        self.procs[node].send_signal(signal.SIGKILL)

    def freeze(self, node: str) -> None:
        """SIGSTOP: the node stops answering but its sockets stay open, as when its machine
        hangs or drops off the network (no connection is refused: only timeouts tell)."""
        self.killed.add(node)
        self.procs[node].send_signal(signal.SIGSTOP)

    def thaw(self, node: str) -> None:
        self.procs[node].send_signal(signal.SIGCONT)
        self.killed.discard(node)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


async def find_leader(cluster: LoomCluster, ctx: ssl.SSLContext,
                      limit_s: float) -> tuple[str, str]:
    """(node id, client address) of the leader, once it has acknowledged a write."""
    deadline = trio.current_time() + limit_s
    seen: dict[str, str] = {}
    while trio.current_time() < deadline:
        if msg := cluster.exited():
            raise RuntimeError(msg)
        for n in NODES:
            if n in cluster.killed:
                continue
            try:
                conn = await LoomConn.open(cluster.client[n], ctx, 2.0)
            except CONN_ERRORS as e:
                seen[n] = f"{type(e).__name__} {e}"
                continue
            try:
                st = await conn.call("CLUSTER_STATUS", {}, 2.0)
                if st["s"] != OK:
                    seen[n] = f"CLUSTER_STATUS status {st['s']} {st.get('e')}"
                    continue
                r = st.get("r") or {}
                seen[n] = (f"role {r.get('role')}, term {r.get('term')}, "
                           f"leader {r.get('leader')}")
                if r.get("role") != "leader":
                    continue
                w = await conn.call("MAP_PUT", {"name": "bench", "key": "probe",
                                                "value": VALUE}, 5.0)
                if w["s"] == OK:
                    return n, cluster.client[n]
                seen[n] = f"leader, but a write answered {w['s']} {w.get('e')}"
            except CONN_ERRORS as e:
                seen[n] = f"{type(e).__name__} {e}"
            finally:
                await conn.aclose()
        await trio.sleep(0.2)
    last = "; ".join(f"{n}: {v}" for n, v in sorted(seen.items())) or "no answer"
    raise RuntimeError(f"no Loom leader accepting writes within {limit_s:.0f} s ({last})")


async def loom_failover(cluster: LoomCluster, ctx: ssl.SSLContext, leader: str,
                        attempt_timeout: float, backoff: float,
                        fault: Callable[[str], None] | None = None) -> tuple[float | None, str]:
    """Time from `fault(leader)` (default: SIGKILL) to the first write a survivor acks."""
    survivors = [n for n in NODES if n != leader and n not in cluster.killed]
    conns: dict[str, LoomConn | None] = {}
    for n in survivors:  # long-lived connections, opened before the kill
        conns[n] = await LoomConn.open(cluster.client[n], ctx, 5.0)
    first: dict[str, Any] = {"t": None, "who": ""}
    counts: dict[str, int] = {}

    def count(k: str) -> None:
        counts[k] = counts.get(k, 0) + 1

    (fault or cluster.kill)(leader)
    t_kill = time.perf_counter()

    async def probe(n: str, cancel: trio.CancelScope) -> None:
        i = 0
        while time.perf_counter() - t_kill < FAILOVER_BOUND_S:
            i += 1
            count("attempts")
            conn = conns[n]
            try:
                if conn is None:
                    conn = conns[n] = await LoomConn.open(cluster.client[n], ctx,
                                                          max(attempt_timeout, 1.0))
                r = await conn.call("MAP_PUT", {"name": "bench", "key": f"failover-{n}-{i}",
                                                "value": VALUE}, attempt_timeout)
            except CONN_ERRORS as e:
                count(type(e).__name__)
                if conn is not None:
                    await conn.aclose()
                conns[n] = None
                await trio.sleep(backoff)
                continue
            if r["s"] == OK:
                t = time.perf_counter()
                if first["t"] is None:
                    first["t"], first["who"] = t, n
                cancel.cancel()
                return
            # NOT_LEADER, UNAVAILABLE, BUSY, TIMEOUT: retry (every survivor has its own prober,
            # so following a NOT_LEADER redirect would only duplicate another prober)
            count({NOT_LEADER: "NOT_LEADER", UNAVAILABLE: "UNAVAILABLE"}.get(r["s"],
                                                                             f"status {r['s']}"))
            await trio.sleep(backoff)

    async with trio.open_nursery() as nursery:
        for n in survivors:
            nursery.start_soon(probe, n, nursery.cancel_scope)
    for c in conns.values():
        if c is not None:
            await c.aclose()
    ms = (first["t"] - t_kill) * 1000 if first["t"] is not None else None
    detail = ", ".join(f"{k} {v}" for k, v in counts.items())
    return ms, f"first ack from {first['who'] or '-'}; {detail}"


def conns_and_window(clients: int, max_conns: int) -> tuple[int, int]:
    conns = min(clients, max_conns)
    if clients % conns:
        return clients, 1
    return conns, clients // conns


async def loom_side(args: argparse.Namespace, cluster: LoomCluster, fig: Figures, *,
                    reads_only: bool = False) -> None:
    ctx = client_context(cluster.certs / "ca.pem", cluster.certs / "admin.pem",
                         cluster.certs / "admin.key")
    leader, addr = await find_leader(cluster, ctx, LEADER_WAIT_S)
    port = int(addr.rpartition(":")[2])
    say(f"loom: leader {leader} at {addr}")

    def put(i: int) -> dict[str, object]:
        return {"name": "bench", "key": f"k{i % 100_000}", "value": VALUE}

    def get(i: int) -> dict[str, object]:
        return {"name": "bench", "key": "get-key"}

    async def measured(op: str, body: Any, clients: int) -> tuple[float, float, float, int]:
        conns, window = conns_and_window(clients, args.loom_conns)
        followers = [n for n in NODES if n != leader and n not in cluster.killed]
        pids = {"client": os.getpid(), "leader": cluster.procs[leader].pid} | {
            f"follower {i + 1}": cluster.procs[n].pid for i, n in enumerate(followers)}
        cpu0 = {k: cpu_seconds(pid) for k, pid in pids.items()}
        before = resource.getrusage(resource.RUSAGE_SELF)
        r = await run_load(port, ctx, op, body, clients=conns, window=window,
                           total=args.total, max_seconds=args.seconds)
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = cpu_per_request(cpu0, {k: cpu_seconds(pid) for k, pid in pids.items()},
                              r.ops - r.errors)
        fig.cpu_us[f"{op} {clients}"] = cpu
        fig.loadgen_cpu_s += (after.ru_utime - before.ru_utime) + (
            after.ru_stime - before.ru_stime)
        fig.loadgen_wall_s += r.seconds
        fig.errors += r.errors
        ok_rate = (r.ops - r.errors) / r.seconds if r.seconds else 0.0
        say(f"loom: {op:7} {clients:3d} clients ({conns} conns x {window} in flight): "
            f"{ok_rate:8.0f}/s  p50 {r.pct(0.5):6.2f} ms  p99 {r.pct(0.99):6.2f} ms  "
            f"({r.ops} ops, {r.errors} errors, {r.seconds:.1f} s)")
        say(f"loom: {op:7} {clients:3d} clients CPU µs/request: "
            + "  ".join(f"{k} {v:.0f}" for k, v in cpu.items()))
        return ok_rate, r.pct(0.5), r.pct(0.99), r.errors

    conn = await LoomConn.open(addr, ctx, 5.0)
    seed = await conn.call("MAP_PUT", {"name": "bench", "key": "get-key", "value": VALUE}, 5.0)
    await conn.aclose()
    if seed["s"] != OK:
        raise RuntimeError(f"seeding the read key failed: {seed}")
    writes = [] if reads_only else args.clients
    with phases(len(writes) + len(args.clients) + (0 if reads_only else 1), "loom") as done:
        for c in writes:
            fig.writes[c], fig.write_p50[c], fig.write_p99[c], _ = await measured("MAP_PUT",
                                                                                  put, c)
            done(f"writes, {c} clients")
        for c in args.clients:
            fig.reads[c], _, fig.read_p99[c], _ = await measured("MAP_GET", get, c)
            done(f"reads, {c} clients")
        if reads_only:
            return
        leader, _ = await find_leader(cluster, ctx, LEADER_WAIT_S)
        ms, note = await loom_failover(cluster, ctx, leader, args.probe_timeout_ms / 1000,
                                       args.probe_backoff_ms / 1000)
        done("failover")
    fig.failover_ms, fig.failover_note = ms, f"killed {leader}; {note}"
    say(f"loom: failover {_fmt_ms(ms)} ({fig.failover_note})")


def run_loom_lease(args: argparse.Namespace, workdir: Path, fig: Figures) -> None:
    """Reads again on a fresh cluster with `raft.lease_reads = true` (informational)."""
    lf = Figures()
    cluster = LoomCluster(workdir, args.loom_tick_ms, lease_reads=True)
    try:
        with cluster.running():
            say("loom: lease reads: a fresh cluster with raft.lease_reads = true")
            trio.run(functools.partial(loom_side, reads_only=True), args, cluster, lf)
    except Exception as e:  # report and go on
        say(f"loom: lease reads not measured: {type(e).__name__}: {e}")
    fig.lease_reads = lf.reads
    fig.loadgen_cpu_s += lf.loadgen_cpu_s
    fig.loadgen_wall_s += lf.loadgen_wall_s


def run_loom(args: argparse.Namespace, workdir: Path) -> Figures:
    fig = Figures()
    cluster = LoomCluster(workdir, args.loom_tick_ms)
    try:
        with cluster.running():
            say(f"loom: 3 nodes, clients {', '.join(cluster.client.values())}; "
                f"logs under {cluster.dir}")
            trio.run(loom_side, args, cluster, fig)
    except ExceptionGroup as eg:
        fig.skipped = "; ".join(f"{type(x).__name__}: {x}" for x in eg.exceptions)[:500]
    except Exception as e:  # report what was measured so far; the nodes are stopped above
        fig.skipped = f"{type(e).__name__}: {e}"
    finally:
        args.out.mkdir(parents=True, exist_ok=True)
        for n in NODES:  # keep the node logs: the work directory is removed at the end
            log = cluster.dir / n / "loomd.log"
            if log.exists():
                shutil.copyfile(log, args.out / f"cluster_bench-loomd-{n}.log")
    if fig.skipped:
        say(f"loom: SKIPPED the rest: {fig.skipped}")
        for n in NODES:
            log = args.out / f"cluster_bench-loomd-{n}.log"
            lines = log.read_text(errors="replace").splitlines() if log.exists() else []
            for line in lines[-3:]:
                say(f"  {n} log: {line[:300]}")
        say(f"  full node logs: {args.out}/cluster_bench-loomd-n*.log")
    return fig


# -- etcd ------------------------------------------------------------------------------------

def run_etcd(args: argparse.Namespace, workdir: Path) -> Figures:
    fig = Figures()
    try:
        etcd_peer.ensure_installed(say)
        binary = etcd_peer.build_etcdload(args.peers_dir, say)
        with etcd_peer.EtcdCluster.started(args.peers_dir, binary, workdir, say) as cluster:
            lead = cluster.leader()
            say(f"etcd: 3 members, {etcd_peer.MODE}, leader m{lead + 1}")
            for op in ("put", "get"):
                for c in args.clients:
                    r = cluster.load(op, c, args.total, args.seconds)
                    fig.loadgen_cpu_s += r.cpu_s
                    fig.loadgen_wall_s += r.seconds
                    fig.errors += r.errors
                    if op == "put":
                        fig.writes[c], fig.write_p50[c], fig.write_p99[c] = (
                            r.ops_per_s, r.p50_ms, r.p99_ms)
                    else:
                        fig.reads[c], fig.read_p99[c] = r.ops_per_s, r.p99_ms
                    say(f"etcd: {op:7} {c:3d} clients ({min(c, 8)} conns): {r.ops_per_s:8.0f}/s"
                        f"  p50 {r.p50_ms:6.2f} ms  p99 {r.p99_ms:6.2f} ms  ({r.done} ops, "
                        f"{r.errors} errors, {r.seconds:.1f} s)")
            fo = cluster.failover(bound_s=FAILOVER_BOUND_S,
                                  attempt_timeout_s=args.probe_timeout_ms / 1000,
                                  backoff_s=args.probe_backoff_ms / 1000)
            fig.failover_ms = fo.ms
            fails = ", ".join(f"{k} {v}" for k, v in fo.failures.items())
            fig.failover_note = (f"killed m{lead + 1}; first ack from {fo.acked_by or '-'}; "
                                 f"attempts {fo.attempts}" + (f", {fails}" if fails else ""))
            say(f"etcd: failover {_fmt_ms(fo.ms)} ({fig.failover_note})")
    except Exception as e:  # report what was measured so far; the members are stopped above
        fig.skipped = str(e) if isinstance(e, etcd_peer.EtcdUnavailable) else (
            f"{type(e).__name__}: {e}")
        say(f"etcd: SKIPPED: {e}")
    return fig


# -- report ------------------------------------------------------------------------------------

def _fmt_ms(ms: float | None) -> str:
    return f"{ms:.0f} ms" if ms is not None else "no ack"


def rows(args: argparse.Namespace, loom: Figures, etcd: Figures) -> list[tuple[Bar, str, str]]:
    """(bar, target text, unit format) per figure, in table order."""
    hi = max(args.clients)
    out: list[tuple[Bar, str, str]] = []
    for c in args.clients:
        t = "goal 3x, at least 1x" if c == hi else ""
        out.append((Bar(f"writes/s, {c} client{'s' if c > 1 else ''}", loom.writes.get(c),
                        etcd.writes.get(c), True, 1.0 if c == hi else None,
                        3.0 if c == hi else None), t, "{:.0f}"))
    for c in args.clients:
        who = f"{c} client{'s' if c > 1 else ''}"
        out.append((Bar(f"write p50 ms, {who}", loom.write_p50.get(c),
                        etcd.write_p50.get(c), False, fmt="{:.2f}"), "", "{:.2f}"))
        out.append((Bar(f"write p99 ms, {who}", loom.write_p99.get(c),
                        etcd.write_p99.get(c), False, 1.0, fmt="{:.2f}"),
                    "no worse than etcd", "{:.2f}"))
    for c in args.clients:
        out.append((Bar(f"linearizable reads/s, {c} client{'s' if c > 1 else ''}",
                        loom.reads.get(c), etcd.reads.get(c), True, 1.0),
                    "at least etcd's", "{:.0f}"))
    for c in sorted(loom.lease_reads):
        out.append((Bar(f"lease reads/s, {c} client{'s' if c > 1 else ''} (lease_reads on)",
                        loom.lease_reads.get(c), etcd.reads.get(c), True), "", "{:.0f}"))
    met = None if loom.failover_ms is None else loom.failover_ms < 1000
    out.append((Bar("failover ms (kill leader -> next ack)", loom.failover_ms,
                    etcd.failover_ms, False, met=met), "Loom < 1000 ms", "{:.0f}"))
    return out


def verdict(bar: Bar) -> str:
    if bar.label.startswith("failover"):
        return "-" if bar.loom is None else ("met" if bar.loom < 1000 else "NOT met")
    if bar.target is None:
        return ""
    adv = bar.advantage
    if adv is None:
        return "-"
    goal = " (goal 3x: met)" if "writes/s" in bar.label and adv >= 3 else ""
    return ("met" if adv >= bar.target else "NOT met") + goal


def report(args: argparse.Namespace, loom: Figures, etcd: Figures, wall: float,
           pairs: list[tuple[Figures, Figures]] | None = None) -> None:
    """`loom`/`etcd` hold the figures shown (medians when repeated); `pairs` every run. When
    repeated, a figure's Loom/etcd (and its verdict) is the median of the runs' ratios."""
    table = rows(args, loom, etcd)
    repeated = pairs is not None and len(pairs) > 1
    runs = [rows(args, lf, ef) for lf, ef in pairs] if pairs and repeated else []
    per_run_ratios = [[run[i][0].ratio for run in runs] for i in range(len(table))]
    if repeated:
        table = [(replace(b, paired_ratio=med(rs)), t, f)
                 for (b, t, f), rs in zip(table, per_run_ratios, strict=True)]

    def cell(v: float | None, f: str) -> str:
        return f.format(v) if v is not None else "-"

    w = max(len(b.label) for b, _, _ in table)
    say("")
    say(f"{'figure':{w}} | {'Loom':>9} | {'etcd':>9} | {'Loom/etcd':>9} | target -> result")
    say("-" * (w + 60))
    for b, target, f in table:
        res = verdict(b)
        say(f"{b.label:{w}} | {cell(b.loom, f):>9} | {cell(b.etcd, f):>9} | "
            f"{cell(b.ratio, '{:.2f}'):>9} | {target}{' -> ' + res if target and res else ''}")
    say("")
    if pairs and repeated:
        say(f"Loom and etcd columns: medians of {len(pairs)} runs; Loom/etcd: the median of "
            "the runs' own ratios, which were (etcd, then Loom, each run):")
        for (b, _, _), ratios in zip(table, per_run_ratios, strict=True):
            say(f"  {b.label:{w}}  " + "  ".join(cell(x, "{:.2f}") for x in ratios))
        say("")
    if loom.cpu_us:
        procs = sorted({k for d in loom.cpu_us.values() for k in d},
                       key=lambda k: (k != "leader", k))
        say("Loom CPU µs per request, per process (/proc/PID/stat user+system over the "
            "phase / acknowledged requests; stable where throughput is not):")
        say(f"  {'phase':14}" + "".join(f" | {k:>10}" for k in procs))
        for phase, d in loom.cpu_us.items():
            say(f"  {phase:14}" + "".join(f" | {cell(d.get(k), '{:.0f}'):>10}" for k in procs))
        say("")
    for name, fig in (("loom", loom), ("etcd", etcd)):
        if fig.skipped:
            say(f"{name}: not (fully) measured: {fig.skipped}")
        if fig.errors:
            say(f"{name}: {fig.errors} requests answered with an error during the load phases "
                "(excluded from the rates)")
        if fig.failover_note:
            say(f"{name} failover: {fig.failover_note}")
    if loom.loadgen_wall_s:
        share = loom.loadgen_cpu_s / loom.loadgen_wall_s
        say(f"Loom load generator (this process, Python): {loom.loadgen_cpu_s:.1f} s CPU over "
            f"{loom.loadgen_wall_s:.1f} s of load = {100 * share:.0f}% of one core "
            f"({100 * share / _cores():.0f}% of the machine's {_cores()} cores, taken from "
            "the nodes)")
    if etcd.loadgen_wall_s:
        say(f"etcd load generator (etcdload, Go): {etcd.loadgen_cpu_s:.1f} s CPU over "
            f"{etcd.loadgen_wall_s:.1f} s of load = "
            f"{100 * etcd.loadgen_cpu_s / etcd.loadgen_wall_s:.0f}% of one core")
    say(f"machine: {_cores()} cores shared by the 3 nodes and the load generator; "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}; load average before the run {args.loadavg}; "
        f"each cluster runs alone; run took {wall:.0f} s")
    say(f"workload: 256-byte values; closed loop, one request in flight per client; "
        f"bounds {args.total} requests or {args.seconds:g} s per figure; failover probe "
        f"attempts time out after {args.probe_timeout_ms:g} ms (the failover resolution)")
    bars = [b for b, _, _ in table]
    png = plot(bars, args.out / "cluster_bench.png",
               f"Loom vs etcd, 3 nodes each, mTLS + fsync, {_cores()} shared cores")
    data = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "loom": asdict(loom), "etcd": asdict(etcd), "wall_s": wall,
            "runs": [{"loom": asdict(lf), "etcd": asdict(ef)} for lf, ef in pairs or []]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cluster_bench.json").write_text(json.dumps(data, indent=1, default=str))
    if png is not None:
        say(f"chart: {png}")
    else:
        say("chart: not written (matplotlib missing or nothing to compare); "
            "`make cluster-bench` installs it")
    say(f"raw figures: {args.out / 'cluster_bench.json'}")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=10.0, help="time bound per figure")
    p.add_argument("--total", type=int, default=50_000, help="request bound per figure")
    p.add_argument("--clients", default="1,64",
                   help="comma-separated concurrent client counts (default 1,64)")
    p.add_argument("--only", choices=["loom", "etcd"], help="run one side only")
    p.add_argument("--loom-conns", type=int, default=8,
                   help="Loom connections for many clients (etcdload uses -conns 8)")
    p.add_argument("--loom-tick-ms", type=int, default=50, help="Loom's raft.tick_ms")
    p.add_argument("--lease-reads", action="store_true",
                   help="also measure Loom's reads with raft.lease_reads = true on a fresh "
                        "cluster (informational: the default is ReadIndex, like etcd's)")
    p.add_argument("--probe-timeout-ms", type=float, default=100.0,
                   help="failover: bound of one write attempt")
    p.add_argument("--probe-backoff-ms", type=float, default=10.0,
                   help="failover: pause after a failed attempt")
    p.add_argument("--peers-dir", type=Path, default=etcd_peer.PEERS_DIR,
                   help="where etcd_cluster.sh, make_certs.sh and etcdload/ are")
    p.add_argument("--out", type=Path, default=OUT_DIR, help="where the chart and JSON go")
    p.add_argument("--repeat", type=int, default=1,
                   help="measure both sides this many times, alternating; report medians "
                        "(1-10)")
    args = p.parse_args(argv)
    try:
        args.clients = sorted({int(x) for x in args.clients.split(",") if x.strip()})
    except ValueError:
        p.error("--clients: expected integers like 1,64")
    if not args.clients or min(args.clients) < 1 or max(args.clients) > 1024:
        p.error("--clients: between 1 and 1024")
    if args.seconds <= 0 or args.total <= 0 or args.loom_conns < 1:
        p.error("--seconds, --total and --loom-conns must be positive")
    if not 1 <= args.repeat <= 10:
        p.error("--repeat: between 1 and 10")
    args.seconds = min(args.seconds, 120.0)
    args.loadavg = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return args


def interrupt_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, through every `finally` that stops a process."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_sigterm()
    t0 = time.perf_counter()
    pairs: list[tuple[Figures, Figures]] = []
    with tempfile.TemporaryDirectory(prefix="loom-cluster-bench-") as d:
        try:
            for i in range(args.repeat):
                if args.repeat > 1:
                    say(f"-- run {i + 1} of {args.repeat}")
                workdir = Path(d) / f"run{i + 1}"
                workdir.mkdir()
                etcd = Figures(skipped="not run (--only loom)")
                loom = Figures(skipped="not run (--only etcd)")
                if args.only in (None, "etcd"):
                    etcd = run_etcd(args, workdir)
                if args.only in (None, "loom"):
                    loom = run_loom(args, workdir)
                    if args.lease_reads:
                        run_loom_lease(args, workdir, loom)
                pairs.append((loom, etcd))
        except KeyboardInterrupt:
            say("interrupted: every process started here has been stopped")
            return 130
    if len(pairs) == 1:
        loom, etcd = pairs[0]
    else:
        loom = median_figures([lf for lf, _ in pairs])
        etcd = median_figures([ef for _, ef in pairs])
    report(args, loom, etcd, time.perf_counter() - t0, pairs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
