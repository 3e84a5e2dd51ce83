"""How long taking a snapshot stops the Raft driver, with the state serialised in a forked
child (the default) and on the driver task (`raft.snapshot_in_child = false`).

A single-node log on a real data directory is filled with `--entries` map entries of 256-byte
values (MAP_PUT_ALL, 1,000 per command); the next commands cross `snapshot_every`, and a probe
task that wakes every 5 ms records the longest the event loop went without running it until
the snapshot is stored. The election timeout is 500-1,000 ms with the default ticks: a stall
longer than that on a leader lets the followers elect another one.

    .venv/bin/python bench/snapshot_bench.py --entries 300000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import trio

from loom.node.config import RaftSettings
from loom.node.raftdriver import RaftDriver, prepare_storage
from loom.state.command import Command
from loom.storage.storage import Storage, StorageOptions

PER_COMMAND = 1000


async def run(entries: int, in_child: bool, data_dir: Path) -> tuple[float, float, int]:
    commands = entries // PER_COMMAND
    storage, rec = Storage.open(str(data_dir), StorageOptions())
    rec = prepare_storage(storage, rec, ["n1"])
    log = RaftDriver(RaftSettings(snapshot_every=commands + 2, snapshot_in_child=in_child),
                     storage, rec, node_id="n1", client_addr="127.0.0.1:1", inbox=4096,
                     member_addrs={})
    worst = 0.0
    probing = False

    async def probe() -> None:
        nonlocal worst
        while True:
            t = time.perf_counter()
            await trio.sleep(0.005)
            if probing:
                worst = max(worst, time.perf_counter() - t - 0.005)

    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        t0 = 0.0
        for c in range(commands + 10):
            batch = {f"k{c * PER_COMMAND + i:09d}": bytes(256) for i in range(PER_COMMAND)}
            out = await log.propose(Command("MAP_PUT_ALL", {"name": "m", "entries": batch},
                                            int(time.time() * 1000)))
            out.raise_for_status()
            if c == commands - 10:  # probe from a little before snapshot_every is crossed
                nursery.start_soon(probe)
                probing = True
                t0 = time.perf_counter()
        for _ in range(60_000):  # at most 600 s
            if log.snapshots.taken:
                break
            await trio.sleep(0.01)
        took = time.perf_counter() - t0
        probing = False
        size = log.core.snapshot_meta.index
        log.stop()
        nursery.cancel_scope.cancel()
    storage.close()
    return worst, took, size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=300_000)
    args = ap.parse_args()
    print(f"state: {args.entries:,} map entries of 256-byte values")
    for in_child in (True, False):
        with tempfile.TemporaryDirectory() as d:
            worst, took, index = trio.run(run, args.entries, in_child, Path(d) / "raft")
        how = "forked child " if in_child else "driver task  "
        print(f"serialised in {how}: longest event-loop stall {worst * 1000:7.1f} ms; "
              f"snapshot at index {index} stored {took:.2f} s after probing began")
    return 0


if __name__ == "__main__":
    sys.exit(main())
