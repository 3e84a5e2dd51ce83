"""State machine figures: RSS bytes per map entry, and apply() throughput per structure.

    .venv/bin/python bench/state_bench.py            # N = 1,000,000 map entries
    .venv/bin/python bench/state_bench.py -n 100000  # smaller

Prints figures; asserts nothing. Reference: Redis needs about 90 bytes of overhead per small
string entry beyond key and value; the target is at most twice that.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from typing import Any

from loom.state import Command, StateMachine

T0 = 1_800_000_000_000


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def memory(n: int) -> None:
    sm = StateMachine()
    gc.collect()
    before = rss_bytes()
    key_bytes = 0
    for i in range(1, n + 1):
        key = f"key:{i:010d}"
        key_bytes += len(key)
        value = i.to_bytes(8, "big") * 32  # 256 bytes, a distinct object per entry
        sm.apply(Command("MAP_PUT", {"name": "m", "key": key, "value": value}, T0 + i), i)
    gc.collect()
    after = rss_bytes()
    per = (after - before) / n
    payload = key_bytes / n + 256
    print(f"map entries:          {n:,} (keys of {key_bytes // n} bytes, values of 256 bytes)")
    print(f"RSS growth:           {(after - before) / 2**20:,.1f} MiB")
    print(f"RSS per entry:        {per:,.1f} bytes")
    print(f"overhead per entry:   {per - payload:,.1f} bytes beyond key and value "
          f"(Redis ~90; target <= 180)")
    print(f"estimated bytes:      {sm.core.total_bytes / n:,.1f} per entry (StateLimits view)")
    t = time.perf_counter()
    snap = sm.snapshot()
    print(f"snapshot:             {len(snap) / 2**20:,.1f} MiB in {time.perf_counter() - t:.2f} s")


def throughput(n: int) -> None:
    workloads: list[tuple[str, Callable[[int], tuple[str, dict[str, Any]]]]] = [
        ("MAP_PUT", lambda i: ("MAP_PUT", {"name": "m", "key": f"k{i % 50_000}",
                                           "value": b"v" * 64})),
        ("MAP_PUT ttl", lambda i: ("MAP_PUT", {"name": "t", "key": f"k{i % 50_000}",
                                               "value": b"v" * 64, "ttl_ms": 1000})),
        ("MAP_DELETE", lambda i: ("MAP_DELETE", {"name": "m", "key": f"k{i % 50_000}"})),
        ("QUEUE_PUSH", lambda i: ("QUEUE_PUSH", {"name": "q", "value": b"v" * 64})),
        ("QUEUE_POLL", lambda i: ("QUEUE_POLL", {"name": "q"})),
        ("SET_ADD", lambda i: ("SET_ADD", {"name": "s", "member": f"m{i}"})),
        ("LIST_PUSH_RIGHT", lambda i: ("LIST_PUSH_RIGHT", {"name": "l", "value": b"v"})),
        ("TOPIC_PUBLISH", lambda i: ("TOPIC_PUBLISH", {"name": "tp", "value": b"v" * 64})),
        ("COUNTER_INCREMENT", lambda i: ("COUNTER_INCREMENT", {"name": "c"})),
        ("ATOMIC_REF_SET", lambda i: ("ATOMIC_REF_SET", {"name": "r", "value": b"v"})),
        ("ID_GEN_NEXT", lambda i: ("ID_GEN_NEXT", {"name": "g", "count": 1})),
        ("LOCK_TRY_LOCK+UNLOCK", lambda i: (
            ("LOCK_TRY_LOCK" if i % 2 else "LOCK_UNLOCK"), {"name": "lk", "session_id": 1})),
        ("SEMAPHORE acquire/rel", lambda i: (
            ("SEMAPHORE_TRY_ACQUIRE" if i % 2 else "SEMAPHORE_RELEASE"),
            {"name": "sem", "session_id": 1, "permits": 1})),
        ("BATCH_EXECUTE x10", lambda i: ("BATCH_EXECUTE", {"ops": [
            {"op": "MAP_PUT", "b": {"name": "b", "key": f"k{j}", "value": b"v"}}
            for j in range(10)]})),
    ]
    sm = StateMachine()
    index = 1
    sm.apply(Command("SESSION_OPEN", {"ttl_ms": 3_600_000}, T0), index)
    index += 1
    sm.apply(Command("SEMAPHORE_INIT", {"name": "sem", "permits": 1}, T0), index)
    print(f"\napply() throughput, {n:,} commands each (deduplicated: every 2nd command)")
    for label, make in workloads:
        cmds = []
        for i in range(1, n + 1):
            op, body = make(i)
            cmds.append(Command(op, body, T0 + i, "bench" if i % 2 else "", i))
        t = time.perf_counter()
        for c in cmds:
            index += 1
            sm.apply(c, index)
        dt = time.perf_counter() - t
        print(f"  {label:<24} {n / dt:>12,.0f} ops/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=1_000_000, help="map entries for the memory figure")
    ap.add_argument("--ops", type=int, default=50_000, help="commands per throughput workload")
    args = ap.parse_args()
    memory(args.n)
    throughput(args.ops)


if __name__ == "__main__":
    main()
