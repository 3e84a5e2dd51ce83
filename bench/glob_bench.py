"""What the worst glob patterns cost a MAP_SCAN (SECURITY-CATALOGUE F4).

    .venv/bin/python bench/glob_bench.py [--repeat 3] [--scan-match-work N]

A state machine holds `scan_budget` (1,024) keys of 1 KiB; each pattern below (at most 256
characters, the dialect's limit) is scanned page by page to the end. It prints, per pattern,
the number of calls, the slowest call and the whole scan in ms (best of `--repeat`). The
slowest call is what matters: a read runs on the leader's event loop and delays its
heartbeats. `--scan-match-work` overrides the per-call bound (a huge value shows the cost
without it). Nothing is asserted; tests/security/test_sec_glob.py checks the results.
"""

from __future__ import annotations

import argparse
import time

from loom.state.command import Command
from loom.state.limits import StateLimits
from loom.state.machine import StateMachine

PATTERNS = [
    "*",
    "*a" * 127 + "b",  # exponential for a recursive matcher (Redis CVE-2022-36021)
    "*" + "a" * 254 + "b",
    "*" + "a" * 253 + "b*",
    "*" + "[ab]" * 62 + "c*",
    "*a" + "?" * 200 + "b*",
    "*" + "?a*" * 80 + "c*",
]


def scan(sm: StateMachine, pattern: str) -> tuple[int, float, float]:
    calls, slowest, cursor = 0, 0.0, None
    t00 = time.perf_counter()
    while True:
        body = {"name": "m", "match": pattern, "limit": 1000, "cursor": cursor}
        t0 = time.perf_counter()
        out = sm.read(Command("MAP_SCAN", {k: v for k, v in body.items() if v is not None}, 0))
        slowest = max(slowest, time.perf_counter() - t0)
        calls += 1
        cursor = out.raise_for_status()["cursor"]
        if cursor is None:
            return calls, slowest, time.perf_counter() - t00


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scan-match-work", type=int, default=StateLimits().scan_match_work)
    a = ap.parse_args()
    limits = StateLimits(scan_match_work=a.scan_match_work)
    sm = StateMachine(limits)
    keys = [f"{i:04d}" + "a" * 1020 for i in range(limits.scan_budget)]
    for i in range(0, len(keys), 256):
        entries = {k: b"" for k in keys[i:i + 256]}
        sm.apply(Command("MAP_PUT_ALL", {"name": "m", "entries": entries}, 0), i // 256 + 1)
    print(f"{'pattern':24s} {'len':>4s} {'calls':>6s} {'slowest ms':>11s} {'all ms':>8s}")
    for p in PATTERNS:
        runs = [scan(sm, p) for _ in range(a.repeat)]
        calls = runs[0][0]
        slowest = min(r[1] for r in runs)
        whole = min(r[2] for r in runs)
        print(f"{p[:24]:24s} {len(p):4d} {calls:6d} {slowest * 1e3:11.1f} {whole * 1e3:8.1f}")


if __name__ == "__main__":
    main()
