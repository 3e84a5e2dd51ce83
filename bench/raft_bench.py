"""Micro-benchmark of the Raft core: proposals/s through a 3-node in-memory cluster.

No network, no disk: messages are handed over directly and persistence is a no-op, so the
figures are the cost of the core itself (what it would add to a real node). Prints figures;
asserts nothing.

    python bench/raft_bench.py [--proposals N] [--batch B] [--size BYTES]
"""

from __future__ import annotations

import argparse
import random
import time

from loom.raft import RaftConfig, RaftCore, Role
from loom.raft.confchange import bootstrap
from loom.raft.messages import Message


def run(proposals: int, batch: int, size: int) -> tuple[float, int, int]:
    voters = ("n1", "n2", "n3")
    hs, ents = bootstrap(voters)
    cores = {
        v: RaftCore(RaftConfig(v, max_entries_per_append=max(64, batch), max_inflight=64,
                               max_uncommitted_bytes=1 << 30),
                    random.Random(i), hs, None, ents)
        for i, v in enumerate(voters)
    }
    inbox: list[Message] = []
    applied = 0

    def pump() -> None:
        nonlocal applied
        while True:
            moved = False
            for v, core in cores.items():
                while (rd := core.ready()) is not None:
                    inbox.extend(rd.messages)
                    if v == "n1":
                        applied += len(rd.committed_entries)
                    core.advance(rd)
                    moved = True
            msgs = inbox[:]
            inbox.clear()
            for msg in msgs:
                cores[msg.to].step(msg)
                moved = True
            if not moved:
                return

    leader = cores["n1"]
    while leader.role is not Role.LEADER:
        leader.tick()
        pump()
    applied = 0
    payload = b"x" * size
    start = time.perf_counter()
    sent = 0
    while sent < proposals:
        for _ in range(batch):
            leader.propose(payload)
        sent += batch
        pump()
    elapsed = time.perf_counter() - start
    return elapsed, sent, applied


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--proposals", type=int, default=100_000)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    print(f"3-node in-memory cluster, {args.proposals} proposals of {args.size} bytes")
    for batch in (1, 16, 256):
        elapsed, sent, applied = run(args.proposals, batch, args.size)
        print(f"  batch {batch:4}: {sent / elapsed:10,.0f} proposals/s  "
              f"{elapsed / sent * 1e6:7.2f} us/entry (all 3 cores)  "
              f"applied on leader {applied}/{sent}")


if __name__ == "__main__":
    main()
