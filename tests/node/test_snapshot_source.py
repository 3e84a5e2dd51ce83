"""The core reads a stored snapshot from its file (`FileSource`): any offset, forwards, backwards
(a follower restarting its stream) and across storage chunks, gives the bytes that were stored."""

from __future__ import annotations

import os
import random
from pathlib import Path

from loom.node.snapshots import chunks, stored_source
from loom.raft.types import ConfState, SnapshotMeta
from loom.storage import Storage, StorageOptions


def test_reads_at_any_offset_match_the_stored_bytes(tmp_path: Path) -> None:
    opts = StorageOptions(snapshot_chunk_size=4096, max_record_size=8192,
                          segment_size=1 << 20)
    storage, _ = Storage.open(str(tmp_path / "data"), opts)
    try:
        blob = os.urandom(50_000)  # 13 storage chunks, the last one short
        storage.save_snapshot(SnapshotMeta(7, 2, ConfState(voters=("a",))),
                              [blob[i:i + 4096] for i in range(0, len(blob), 4096)])
        src = stored_source(storage, len(blob))
        assert src.size == len(blob)
        # a stream as the core sends it: forward in 3,000-byte pieces (spanning chunks)
        got = b"".join(src.read(off, 3000) for off in range(0, len(blob), 3000))
        assert got == blob
        assert src.read(len(blob), 3000) == b""  # at the end
        rng = random.Random(1)
        for _ in range(200):  # retransmissions: any offset, backwards too
            off, n = rng.randrange(len(blob)), rng.randrange(1, 10_000)
            assert src.read(off, n) == blob[off:off + n]
    finally:
        storage.close()


def test_an_empty_snapshot_reads_empty(tmp_path: Path) -> None:
    storage, _ = Storage.open(str(tmp_path / "data"))
    try:
        storage.save_snapshot(SnapshotMeta(1, 1, ConfState(voters=("a",))), chunks(b""))
        src = stored_source(storage, 0)
        assert src.size == 0 and src.read(0, 100) == b""
    finally:
        storage.close()
