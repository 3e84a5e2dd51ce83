"""Storage benchmarks: group commit against the disk's raw fsync rate, and recovery time.

    .venv/bin/python bench/storage_bench.py                      # default, a few minutes at most
    .venv/bin/python bench/storage_bench.py --entries 1000000 --snapshot-mb 1024   # full size

Figures only; nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import trio

from loom.raft.types import Entry, HardState, SnapshotMeta
from loom.storage import Storage, StorageOptions
from loom.storage.admin import create_keyring
from loom.storage.aio import AsyncStorage, WorkerThread

ENTRY = 256


def raw_fsync_rate(directory: str, seconds: float) -> float:
    """The physical limit: append 256 bytes + fdatasync, back to back, on a preallocated file."""
    path = os.path.join(directory, "raw")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, 64 << 20)
        os.fsync(fd)
        n, off, payload = 0, 0, os.urandom(ENTRY)
        start = time.perf_counter()
        while time.perf_counter() - start < seconds and off < (64 << 20) - ENTRY:
            os.pwrite(fd, payload, off)
            os.fdatasync(fd)
            off += ENTRY
            n += 1
        return n / (time.perf_counter() - start)
    finally:
        os.close(fd)
        os.remove(path)


async def group_commit(
    directory: str, clients: int, seconds: float, keyring: str | None
) -> dict[str, float]:
    """`clients` tasks each append one 256-byte entry and wait for its sync; a driver task
    takes everything ready at that moment into one `save` (one fdatasync), off the loop."""
    storage, _ = Storage.open(directory, StorageOptions(keyring_path=keyring))
    astore = AsyncStorage(storage)
    send, recv = trio.open_memory_channel[tuple[bytes, trio.Event]](clients * 2)
    stats = {"entries": 0.0, "syncs": 0.0}
    next_index = 1
    stop = trio.Event()

    async def driver() -> None:
        nonlocal next_index
        while not stop.is_set():
            with trio.move_on_after(0.05):
                first = await recv.receive()
                batch = [first]
                while True:
                    try:
                        batch.append(recv.receive_nowait())
                    except trio.WouldBlock:
                        break
                entries = [Entry(1, next_index + i, data=d) for i, (d, _) in enumerate(batch)]
                next_index += len(batch)
                await astore.save(HardState(1, "n1", next_index - 1), entries, True)
                stats["entries"] += len(batch)
                stats["syncs"] += 1
                for _, ev in batch:
                    ev.set()

    async def client() -> None:
        payload = os.urandom(ENTRY)
        while not stop.is_set():
            ev = trio.Event()
            await send.send((payload, ev))
            await ev.wait()

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(driver)
        for _ in range(clients):
            nursery.start_soon(client)
        await trio.sleep(seconds)
        stop.set()
        nursery.cancel_scope.cancel()
    elapsed = time.perf_counter() - start
    await astore.close()
    return {
        "appends_per_s": stats["entries"] / elapsed,
        "mb_per_s": stats["entries"] * ENTRY / elapsed / 1e6,
        "entries_per_fsync": stats["entries"] / max(stats["syncs"], 1),
        "fsyncs_per_s": stats["syncs"] / elapsed,
    }


def recovery_log(directory: str, n: int, keyring: str | None) -> tuple[float, float]:
    opts = StorageOptions(keyring_path=keyring)
    storage, _ = Storage.open(directory, opts)
    payload = os.urandom(ENTRY)
    t0 = time.perf_counter()
    for first in range(1, n + 1, 1000):
        batch = [Entry(1, i, data=payload) for i in range(first, min(n, first + 999) + 1)]
        storage.save(HardState(1, "n1", batch[-1].index), batch, True)
    write = time.perf_counter() - t0
    storage.close()
    t0 = time.perf_counter()
    storage, rec = Storage.open(directory, opts)
    took = time.perf_counter() - t0
    assert len(rec.entries) == n
    storage.close()
    return write, took


def recovery_snapshot(directory: str, mb: int, keyring: str | None) -> tuple[float, float, float]:
    opts = StorageOptions(keyring_path=keyring)
    storage, _ = Storage.open(directory, opts)
    storage.save(HardState(1, "n1", 1), [Entry(1, 1)], True)
    chunk = os.urandom(1 << 20)
    t0 = time.perf_counter()
    storage.save_snapshot(SnapshotMeta(1, 1), (chunk for _ in range(mb)))
    write = time.perf_counter() - t0
    storage.close()
    t0 = time.perf_counter()
    storage, _ = Storage.open(directory, opts)  # verifies the whole snapshot
    opened = time.perf_counter() - t0
    reader = storage.load_snapshot()
    assert reader is not None
    t0 = time.perf_counter()
    total = sum(len(c) for c in reader.chunks())
    read = time.perf_counter() - t0
    assert total == mb << 20
    storage.close()
    return write, opened, read


async def thread_hops(n: int) -> tuple[float, float]:
    """CPU per empty call handed to a worker thread: trio.to_thread against WorkerThread."""
    limiter = trio.CapacityLimiter(1)
    worker = WorkerThread("bench-hop")
    async def to_thread() -> int:
        return await trio.to_thread.run_sync(int, limiter=limiter)

    out = []
    for hop in (to_thread, lambda: worker.run_sync(int)):
        c0 = time.process_time()
        for _ in range(n):
            await hop()
        out.append((time.process_time() - c0) / n * 1e6)
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput run")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16, 256])
    ap.add_argument("--entries", type=int, default=200_000, help="log size for the recovery run")
    ap.add_argument("--snapshot-mb", type=int, default=256, help="snapshot size for recovery")
    ap.add_argument("--encrypt", action="store_true", help="enable encryption at rest")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="loom-bench-", dir=args.dir)
    try:
        keyring = None
        if args.encrypt:
            keyring = os.path.join(base, "keyring.json")
            create_keyring(keyring)
        raw = raw_fsync_rate(base, min(args.seconds, 3.0))
        print(f"raw fdatasync rate (256 B append + fdatasync): {raw:,.0f}/s  (the physical limit)")
        via_trio, via_worker = trio.run(thread_hops, 3000)
        print(f"CPU per worker-thread hop (empty call): trio.to_thread {via_trio:.0f} µs, "
              f"WorkerThread {via_worker:.0f} µs")
        for c in args.clients:
            d = os.path.join(base, f"gc{c}")
            r = trio.run(group_commit, d, c, args.seconds, keyring)
            print(
                f"group commit, {c:4d} clients: {r['appends_per_s']:>10,.0f} appends/s "
                f"{r['mb_per_s']:6.1f} MB/s  {r['entries_per_fsync']:7.1f} entries/fsync  "
                f"{r['fsyncs_per_s']:7,.0f} fsyncs/s  "
                f"ratio to raw limit {r['appends_per_s'] / raw:5.2f}x"
            )
            shutil.rmtree(d)
        d = os.path.join(base, "log")
        write, took = recovery_log(d, args.entries, keyring)
        print(
            f"recovery of a {args.entries:,}-entry log ({ENTRY} B entries): {took:.2f} s "
            f"(written in {write:.1f} s)"
        )
        shutil.rmtree(d)
        d = os.path.join(base, "snap")
        write, opened, read = recovery_snapshot(d, args.snapshot_mb, keyring)
        print(
            f"recovery of a {args.snapshot_mb} MiB snapshot: open+verify {opened:.2f} s, "
            f"streaming read {read:.2f} s (written in {write:.1f} s)"
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
