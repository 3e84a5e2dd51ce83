"""Leader failover under load, and leader stability under load, on a real 3-node Loom cluster.

    .venv/bin/python bench/failover_bench.py [--kills 20] [--clients 8]
    .venv/bin/python bench/failover_bench.py --watch-seconds 600 [--clients 64]

Three `loomd` processes on 127.0.0.1 (mutual TLS for clients and peers, fsync on; the cluster
of bench/cluster_bench.py).

Kill mode (the default): `--clients` closed-loop writers (one 256-byte MAP_PUT in flight each,
on long-lived connections, following the leader) keep the cluster loaded. `--kills` times:
find the leader, open one prober connection to each survivor, SIGKILL the leader, and measure
the time from the kill to the first acknowledged write through any survivor (probers retry
every `--probe-backoff-ms`, each attempt bounded by `--probe-timeout-ms`, all bounded by
30 s); then restart the killed node and wait until it follows the new leader before the next
kill. Reports every figure, the median and the maximum (target: median <= 500 ms).
A killed process's port refuses the survivors' dials, which lets them campaign at once
(`raft.fast_failover`). `--fault freeze` SIGSTOPs the leader instead (then SIGCONTs it): its
sockets stay open and nothing is refused, as when its machine hangs or drops off the network,
so only the election timeout notices.

Watch mode (`--watch-seconds S`): no kills; `--clients` writers (8 connections with
clients/8 requests in flight each) load the leader for S seconds, while each node is asked
for its term and leader every 250 ms. Reports the leader changes and term increments seen
(target: none), with the load's throughput. Nothing is asserted. Every process started here
is stopped by PID, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cluster_bench import (
    CONN_ERRORS,
    FAILOVER_BOUND_S,
    LEADER_WAIT_S,
    NODES,
    OK,
    VALUE,
    LoomCluster,
    LoomConn,
    conns_and_window,
    find_leader,
    interrupt_on_sigterm,
    loom_failover,
    say,
)
from bench.loadgen import run_load
from loom.security.tls import client_context

TARGET_MS = 500.0
REJOIN_WAIT_S = 60.0
POLL_S = 0.25


def restart(cluster: LoomCluster, node: str) -> None:
    """Start a killed node again from its data directory."""
    d = cluster.dir / node
    with (d / "loomd.log").open("ab") as log:
        cluster.procs[node] = subprocess.Popen(
            [sys.executable, "-m", "loom.cli.loomd", "--config", str(d / "loomd.toml")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cluster.killed.discard(node)


async def status(conn: LoomConn) -> dict[str, Any]:
    st = await conn.call("CLUSTER_STATUS", {}, 2.0)
    return dict(st.get("r") or {}) if st["s"] == OK else {}


async def wait_following(cluster: LoomCluster, ctx: ssl.SSLContext, node: str,
                         leader: str) -> float:
    """Seconds until `node` answers as a follower of `leader` with its log caught up."""
    t0 = time.perf_counter()
    deadline = t0 + REJOIN_WAIT_S
    while time.perf_counter() < deadline:
        if msg := cluster.exited():
            raise RuntimeError(msg)
        try:
            conn = await LoomConn.open(cluster.client[node], ctx, 2.0)
            try:
                st = await status(conn)
            finally:
                await conn.aclose()
            lconn = await LoomConn.open(cluster.client[leader], ctx, 2.0)
            try:
                lst = await status(lconn)
            finally:
                await lconn.aclose()
            if (st.get("role") == "follower" and st.get("leader") == leader
                    and st.get("applied_index", 0) >= lst.get("commit_index", 0) - 1000):
                return time.perf_counter() - t0
        except CONN_ERRORS:
            pass
        await trio.sleep(0.2)
    raise RuntimeError(f"{node} did not rejoin {leader} within {REJOIN_WAIT_S:.0f} s")


class Writers:
    """Closed-loop writers following the leader: a writer whose node fails or refuses goes to
    the leader the main task last found (`self.leader`)."""

    def __init__(self, cluster: LoomCluster, ctx: ssl.SSLContext, leader: str) -> None:
        self.cluster, self.ctx, self.leader = cluster, ctx, leader
        self.acked = self.failed = 0

    async def writer(self, w: int) -> None:
        conn: LoomConn | None = None
        i = 0
        while True:
            i += 1
            try:
                if conn is None:
                    conn = await LoomConn.open(self.cluster.client[self.leader], self.ctx, 2.0)
                r = await conn.call("MAP_PUT", {"name": "load", "key": f"w{w}-{i % 1000}",
                                                "value": VALUE}, 2.0)
                if r["s"] == OK:
                    self.acked += 1
                    continue
                self.failed += 1
            except CONN_ERRORS:
                self.failed += 1
            if conn is not None:
                await conn.aclose()
                conn = None
            await trio.sleep(0.05)


async def kill_mode(args: argparse.Namespace, cluster: LoomCluster) -> list[float | None]:
    ctx = client_context(cluster.certs / "ca.pem", cluster.certs / "admin.pem",
                         cluster.certs / "admin.key")
    leader, _ = await find_leader(cluster, ctx, LEADER_WAIT_S)
    figures: list[float | None] = []
    load = Writers(cluster, ctx, leader)
    async with trio.open_nursery() as nursery:
        for w in range(args.clients):
            nursery.start_soon(load.writer, w)
        await trio.sleep(2.0)  # the load settles
        for k in range(args.kills):
            leader, _ = await find_leader(cluster, ctx, LEADER_WAIT_S)
            acked0 = load.acked
            freeze = args.fault == "freeze"
            ms, note = await loom_failover(cluster, ctx, leader, args.probe_timeout_ms / 1000,
                                           args.probe_backoff_ms / 1000,
                                           cluster.freeze if freeze else None)
            figures.append(ms)
            new, _ = await find_leader(cluster, ctx, LEADER_WAIT_S)
            load.leader = new
            if freeze:
                cluster.thaw(leader)
            else:
                restart(cluster, leader)
            rejoin = await wait_following(cluster, ctx, leader, new)
            say(f"{args.fault} {k + 1:2d}: {leader}, first ack "
                f"{'-' if ms is None else f'{ms:.0f} ms'} ({note}); new leader {new}; "
                f"{leader} rejoined in {rejoin:.1f} s; load acked {load.acked - acked0} "
                f"meanwhile")
            await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    say(f"load: {load.acked} writes acknowledged, {load.failed} failed or refused attempts "
        f"({args.clients} writers)")
    return figures


async def watch_mode(args: argparse.Namespace, cluster: LoomCluster) -> dict[str, Any]:
    ctx = client_context(cluster.certs / "ca.pem", cluster.certs / "admin.pem",
                         cluster.certs / "admin.key")
    leader, addr = await find_leader(cluster, ctx, LEADER_WAIT_S)
    seen: list[tuple[float, str, int, str]] = []  # (t, node, term, leader) when they change
    last: dict[str, tuple[int, str]] = {}
    t0 = time.perf_counter()
    errors = {"polls": 0}

    async def poll(node: str) -> None:
        conn: LoomConn | None = None
        while True:
            try:
                if conn is None:
                    conn = await LoomConn.open(cluster.client[node], ctx, 2.0)
                st = await status(conn)
                now = (int(st.get("term", 0)), str(st.get("leader") or ""))
                if last.get(node) != now:
                    last[node] = now
                    seen.append((time.perf_counter() - t0, node, *now))
            except CONN_ERRORS:
                errors["polls"] += 1
                if conn is not None:
                    await conn.aclose()
                conn = None
            await trio.sleep(POLL_S)

    conns, window = conns_and_window(args.clients, 8)
    port = int(addr.rpartition(":")[2])

    def put(i: int) -> dict[str, object]:
        return {"name": "bench", "key": f"k{i % 100_000}", "value": VALUE}

    async with trio.open_nursery() as nursery:
        for n in NODES:
            nursery.start_soon(poll, n)
        await trio.sleep(1.0)
        try:
            r = await run_load(port, ctx, "MAP_PUT", put, clients=conns, window=window,
                               total=10**12, max_seconds=args.watch_seconds)
            load = (f"{(r.ops - r.errors) / r.seconds:.0f} writes/s, p50 {r.pct(0.5):.1f} ms, "
                    f"p99 {r.pct(0.99):.1f} ms, {r.ops} ops, {r.errors} errors, "
                    f"{r.seconds:.0f} s")
        except CONN_ERRORS as e:  # the leader closed a load connection (it stepped down?)
            load = f"the load stopped: {type(e).__name__} {e}"
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    terms = sorted({t for _, _, t, _ in seen})
    leaders = sorted({(t, ld) for _, _, t, ld in seen if ld})
    for t, node, term, ld in seen[len(NODES):]:
        say(f"  at {t:6.1f} s {node} saw term {term}, leader {ld or '-'}")
    return {"leader": leader, "load": load, "terms": terms, "leaders": leaders,
            "poll_errors": errors["polls"], "exited": cluster.exited()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--kills", type=int, default=20, help="leader kills (1-100)")
    p.add_argument("--clients", type=int, default=None,
                   help="concurrent writers (default 8 when killing, 64 when watching)")
    p.add_argument("--watch-seconds", type=float, default=0.0,
                   help="watch mode: load this long without kills and count leader changes")
    p.add_argument("--tick-ms", type=int, default=50, help="raft.tick_ms")
    p.add_argument("--fault", choices=("kill", "freeze"), default="kill",
                   help="kill: SIGKILL the leader (default); freeze: SIGSTOP it, then SIGCONT")
    p.add_argument("--probe-timeout-ms", type=float, default=100.0)
    p.add_argument("--probe-backoff-ms", type=float, default=10.0)
    args = p.parse_args(argv)
    if args.clients is None:
        args.clients = 64 if args.watch_seconds else 8
    if not 1 <= args.kills <= 100 or not 1 <= args.clients <= 1024:
        p.error("--kills: 1-100; --clients: 1-1024")
    if not 0 <= args.watch_seconds <= 3600:
        p.error("--watch-seconds: 0-3600")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="loom-failover-bench-") as d:
        cluster = LoomCluster(Path(d), args.tick_ms)
        try:
            with cluster.running():
                if args.watch_seconds:
                    w = trio.run(watch_mode, args, cluster)
                else:
                    figures = trio.run(kill_mode, args, cluster)
        except KeyboardInterrupt:
            say("interrupted: every process started here has been stopped")
            return 130
    say("")
    if args.watch_seconds:
        changes = max(0, len(w["leaders"]) - 1)
        say(f"watch: {args.watch_seconds:g} s of {args.clients}-client write load on leader "
            f"{w['leader']}: {w['load']}")
        say(f"leader changes: {changes}; terms seen {w['terms']}; (term, leader) seen "
            f"{w['leaders']}; failed status polls {w['poll_errors']}"
            + (f"; {w['exited']}" if w["exited"] else ""))
        say(f"target: no leader change ({'met' if changes == 0 else 'NOT met'})")
    else:
        got = [f for f in figures if f is not None]
        say(f"failover, {args.fault} leader -> next acknowledged write, {len(figures)} times under "
            f"{args.clients}-writer load (tick {args.tick_ms} ms):")
        say("  ms: " + ", ".join("-" if f is None else f"{f:.0f}" for f in figures))
        if got:
            med = statistics.median(got)
            say(f"  median {med:.0f} ms, max {max(got):.0f} ms, min {min(got):.0f} ms; "
                f"{len(figures) - len(got)} without an ack within {FAILOVER_BOUND_S:.0f} s")
            say(f"target: median <= {TARGET_MS:.0f} ms "
                f"({'met' if med <= TARGET_MS and len(got) == len(figures) else 'NOT met'})")
    say(f"machine load average: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
