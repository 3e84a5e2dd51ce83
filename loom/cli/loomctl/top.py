"""`loomctl top`: live request rates and latencies per node, refreshed in the terminal.

Every `--interval` seconds each endpoint is asked for its own metrics (METRICS_GET, the same
text Prometheus scrapes; grant it to the operator's certificate) and two successive samples
become one row per node: role, term, applied index, requests per second, refusals and errors
per second, mean latency and the bound of the latency bucket holding the 99th percentile, all
over the last interval. On a terminal the table is redrawn in place (rich); otherwise, and
with `-o json`, one table or one JSON line per interval is printed, so it can be piped.
`--count N` stops after N refreshes (0, the default: until Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from loom.cli.loomctl.base import NOTHING, Ctx, UsageError
from loom.client.errors import ClientError
from loom.client.protocol import RetryPolicy, format_endpoint, parse_endpoints
from loom.wire.errors import LoomError

REQUESTS = "loom_requests"
LATENCY = "loom_request_duration_seconds"
COLUMNS = ("NODE", "ROLE", "TERM", "APPLIED", "REQ/S", "REFUSED/S", "ERR/S", "MEAN", "P99<=")


@dataclass(frozen=True, slots=True)
class Sample:
    """One node's cumulative counters at one moment (from its metrics text)."""

    at: float
    role: str
    term: int
    applied: int
    requests: float
    refused: float  # denied + unauthenticated
    errors: float  # every other result but ok
    latency_sum: float
    latency_count: float
    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), ascending


def parse(text: str, at: float) -> Sample:
    """A Sample from the Prometheus text format that METRICS_GET returns."""
    role, term, applied = "?", 0, 0
    requests = refused = errors = lsum = lcount = 0.0
    buckets: dict[float, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == REQUESTS + "_total":
                requests += s.value
                result = s.labels.get("result", "")
                if result in ("denied", "unauthenticated"):
                    refused += s.value
                elif result != "ok":
                    errors += s.value
            elif s.name == LATENCY + "_bucket":
                le = float(s.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif s.name == LATENCY + "_sum":
                lsum += s.value
            elif s.name == LATENCY + "_count":
                lcount += s.value
            elif s.name == "loom_raft_role" and s.value == 1:
                role = s.labels.get("role", "?")
            elif s.name == "loom_raft_term":
                term = int(s.value)
            elif s.name == "loom_raft_applied_index":
                applied = int(s.value)
    return Sample(at, role, term, applied, requests, refused, errors, lsum, lcount,
                  tuple(sorted(buckets.items())))


def p99_bound(now: Sample, before: Sample) -> float | None:
    """The upper bound of the bucket holding the 99th percentile between two samples."""
    prev = dict(before.buckets)
    deltas = [(le, n - prev.get(le, 0.0)) for le, n in now.buckets]
    total = deltas[-1][1] if deltas else 0.0
    if total <= 0:
        return None
    for le, n in deltas:
        if n >= 0.99 * total:
            return le
    return None


def row(node: str, now: Sample, before: Sample | None) -> dict[str, Any]:
    """One node's line: rates over the interval between `before` and `now`."""
    out: dict[str, Any] = {"node": node, "role": now.role, "term": now.term,
                           "applied": now.applied, "requests_per_s": None,
                           "refused_per_s": None, "errors_per_s": None,
                           "mean_latency_s": None, "p99_latency_le_s": None}
    if before is None or now.at <= before.at:
        return out
    dt = now.at - before.at
    dn = now.latency_count - before.latency_count
    out.update(
        requests_per_s=max(0.0, now.requests - before.requests) / dt,
        refused_per_s=max(0.0, now.refused - before.refused) / dt,
        errors_per_s=max(0.0, now.errors - before.errors) / dt,
        mean_latency_s=(now.latency_sum - before.latency_sum) / dn if dn > 0 else None,
        p99_latency_le_s=p99_bound(now, before))
    return out


def _seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if math.isinf(s):
        return "inf"
    return f"{s * 1000:.2f} ms" if s < 1 else f"{s:.2f} s"


def _rate(r: float | None) -> str:
    return "-" if r is None else f"{r:.1f}"


def cells(r: dict[str, Any]) -> list[str]:
    if "error" in r:
        return [r["node"], "unreachable", "-", "-", "-", "-", "-", "-", r["error"][:40]]
    return [r["node"], r["role"], str(r["term"]), str(r["applied"]), _rate(r["requests_per_s"]),
            _rate(r["refused_per_s"]), _rate(r["errors_per_s"]), _seconds(r["mean_latency_s"]),
            _seconds(r["p99_latency_le_s"])]


def _table(rows: Iterable[dict[str, Any]]) -> Any:
    from rich.table import Table

    t = Table(title="loomctl top", title_justify="left")
    for col in COLUMNS:
        t.add_column(col, justify="right" if col not in ("NODE", "ROLE") else "left")
    for r in rows:
        t.add_row(*cells(r))
    return t


def top(c: Ctx, a: argparse.Namespace) -> Any:
    if a.interval <= 0:
        raise UsageError("--interval must be positive")
    if a.count < 0:
        raise UsageError("--count must be 0 (until interrupted) or more")
    endpoints = list(dict.fromkeys(format_endpoint(e) for e in parse_endpoints(c.args.endpoints)))
    clients = [c.make_client(e, retry=RetryPolicy(attempts=1)) for e in endpoints]
    last: dict[str, Sample] = {}

    def ask(i: int) -> dict[str, Any]:
        try:
            text = clients[i].call("METRICS_GET")
        except (LoomError, ClientError) as e:
            return {"node": endpoints[i], "error": str(e)}
        now = parse(text.decode() if isinstance(text, bytes) else str(text), time.monotonic())
        r = row(endpoints[i], now, last.get(endpoints[i]))
        last[endpoints[i]] = now
        return r

    from rich.console import Console
    from rich.live import Live

    console = Console(file=c.out)
    live_view = a.output == "text" and console.is_terminal
    if not console.is_terminal:  # a pipe or a file: wide enough that no address wraps
        console = Console(file=c.out, width=160)
    pool = ThreadPoolExecutor(max_workers=min(16, len(endpoints)))
    refreshes = 0
    try:
        # The first sample only primes the counters: rates need two.
        list(pool.map(ask, range(len(endpoints))))
        with Live(console=console, auto_refresh=False) if live_view else _NoLive() as live:
            while a.count == 0 or refreshes < a.count:
                time.sleep(a.interval)
                rows = list(pool.map(ask, range(len(endpoints))))
                refreshes += 1
                if live_view:
                    live.update(_table(rows), refresh=True)
                elif a.output == "json":
                    c.out.write(json.dumps({"time": time.time(), "nodes": rows}) + "\n")
                    c.out.flush()
                else:
                    console.print(_table(rows))
    finally:
        pool.shutdown()
        for cl in clients:
            cl.close()
    return NOTHING


class _NoLive:
    def __enter__(self) -> _NoLive:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, *a: Any, **kw: Any) -> None:
        return None
