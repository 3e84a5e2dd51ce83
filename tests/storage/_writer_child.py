"""Child process for the kill -9 test: writes through Storage as fast as it can and reports
each acknowledged (synced) last index on stdout, one line per save."""

from __future__ import annotations

import sys

from loom.raft.types import Entry, HardState
from loom.storage import Storage, StorageOptions


def data_for(index: int, size: int) -> bytes:
    tag = f"{index}:".encode()
    return (tag * (size // len(tag) + 1))[:size]


def main() -> None:
    data_dir, keyring = sys.argv[1], (sys.argv[2] or None)
    opts = StorageOptions(
        segment_size=256 * 1024,
        max_record_size=64 * 1024,
        snapshot_chunk_size=16 * 1024,
        keyring_path=keyring,
    )
    storage, rec = Storage.open(data_dir, opts)
    last = rec.entries[-1].index if rec.entries else 0
    print(f"start {last}", flush=True)
    for batch in range(1_000_000):  # bounded; the parent kills us long before
        es = [
            Entry(1, last + i, data=data_for(last + i, 256)) for i in range(1, 1 + batch % 50 + 1)
        ]
        storage.save(HardState(1, "n1", last), es, must_sync=True)
        last = es[-1].index
        print(f"ack {last}", flush=True)


if __name__ == "__main__":
    main()
