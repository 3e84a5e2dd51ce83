"""A follower's driver receiving a snapshot: the chunks go to a temp file as they arrive, the
state is rebuilt from that file, and only a whole transfer whose bytes make a state is
installed (real storage on the real file system)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loom.node.config import RaftSettings
from loom.node.raftdriver import RaftDriver, prepare_storage
from loom.node.snapshots import SnapshotReceiver
from loom.raft import messages as m
from loom.raft.ready import SnapshotChunk
from loom.raft.types import ConfState, Entry, EntryType, HardState, SnapshotMeta
from loom.state.command import Command
from loom.state.machine import StateMachine
from loom.storage.aio import AsyncStorage
from loom.storage.errors import CorruptionError, FatalIOError
from loom.storage.storage import Storage, StorageOptions

OPTS = StorageOptions(segment_size=64 * 1024, max_record_size=16 * 1024,
                      snapshot_chunk_size=4096, preallocate=False)
CHUNK = 1000


def state_bytes(n: int) -> bytes:
    sm = StateMachine()
    for i in range(n):
        sm.apply(Command("MAP_PUT", {"name": "m", "key": f"k{i}", "value": b"v" * 100}, 1), i + 1)
    return sm.snapshot()


def follower(data_dir: Path) -> RaftDriver:
    storage, rec = Storage.open(str(data_dir), OPTS, keep_retained=False)
    return RaftDriver(RaftSettings(), storage, prepare_storage(storage, rec, None),
                      node_id="n2", client_addr="127.0.0.1:1", inbox=64, member_addrs={})


def transfer(data: bytes, index: int = 40) -> list[m.InstallSnapshot]:
    return [m.InstallSnapshot("n2", "n1", 1, index, 1, ("n1", "n2", "n3"), (), off,
                              data[off:off + CHUNK], len(data), off + CHUNK >= len(data))
            for off in range(0, len(data), CHUNK)]


def snap_files(data_dir: Path) -> list[str]:
    return sorted(os.listdir(data_dir / "snap"))


async def test_a_received_snapshot_is_written_as_it_arrives_and_restored_from_its_file(
        tmp_path: Path) -> None:
    data = state_bytes(300)
    drv = follower(tmp_path)
    msgs = transfer(data)
    assert len(msgs) > 4
    for msg in msgs[:-1]:
        drv.core.step(msg)
        await drv._process_ready()
    # the bytes so far are in the temp file, not in the core
    assert snap_files(tmp_path) == [f"{40:016x}-{1:016x}.snap.rx.tmp"]
    drv.core.step(msgs[-1])
    await drv._process_ready()
    assert snap_files(tmp_path) == [f"{40:016x}-{1:016x}.snap"]
    assert drv.state().snapshot() == data
    assert drv.core.snapshot_meta.index == 40 and drv.core.log.committed == 40
    # the core reads it back from the installed file for a follower of its own
    assert drv.core._snap_src.read(0, len(data)) == data
    drv._storage.storage.close()
    storage, rec = Storage.open(str(tmp_path), OPTS)
    assert rec.snapshot == SnapshotMeta(40, 1, ConfState(("n1", "n2", "n3")))
    storage.close()


async def test_bytes_that_make_no_state_are_never_installed(tmp_path: Path) -> None:
    drv = follower(tmp_path)
    msgs = transfer(b"\xff" * 5000)  # not CBOR
    for msg in msgs[:-1]:
        drv.core.step(msg)
        await drv._process_ready()
    drv.core.step(msgs[-1])
    with pytest.raises(FatalIOError, match="does not make a state"):
        await drv._process_ready()
    assert snap_files(tmp_path) == []  # discarded; the node stops and starts from its log
    drv._storage.storage.close()
    storage, rec = Storage.open(str(tmp_path), OPTS)
    assert rec.snapshot is None
    storage.close()


async def test_a_whole_transfer_the_log_already_covers_is_not_kept(tmp_path: Path) -> None:
    storage, _ = Storage.open(str(tmp_path), OPTS)
    ents = [Entry(1, i, EntryType.NORMAL,
                  Command("MAP_PUT", {"name": "m", "key": f"k{i}", "value": b"v"}, 1).encode())
            for i in range(1, 46)]
    storage.save(HardState(1, None, 0), ents, must_sync=True)
    storage.close()
    drv = follower(tmp_path)
    for msg in transfer(b"\xff" * 5000):  # never decoded: the log holds index 40, term 1
        drv.core.step(msg)
        await drv._process_ready()
    assert snap_files(tmp_path) == []
    assert drv.core.log.committed == 40 and drv.core.snapshot_meta.index == 0
    assert drv.state().applied_index == 40


async def test_a_restarted_transfer_replaces_the_file_and_a_torn_one_goes_at_start(
        tmp_path: Path) -> None:
    storage, _ = Storage.open(str(tmp_path), OPTS)
    rx = SnapshotReceiver(AsyncStorage(storage))
    old, new = SnapshotMeta(30, 1), SnapshotMeta(40, 2)
    await rx.write([SnapshotChunk(old, 0, b"a" * 5000, 9000)])
    assert snap_files(tmp_path) == [f"{30:016x}-{1:016x}.snap.rx.tmp"]
    # a new transfer (another leader, term or index) starts at offset 0: the old file goes
    await rx.write([SnapshotChunk(new, 0, b"b" * 3000, 6000)])
    assert snap_files(tmp_path) == [f"{40:016x}-{2:016x}.snap.rx.tmp"]
    with pytest.raises(AssertionError):  # a gap is a bug of the caller, never written
        await rx.write([SnapshotChunk(new, 4000, b"c", 6000)])
    await rx.write([SnapshotChunk(new, 3000, b"c" * 3000, 6000)])
    tmp, size = await rx.finish(new)
    assert size == 6000
    assert b"".join(storage.read_snapshot_tmp(tmp).chunks()) == b"b" * 3000 + b"c" * 3000
    # a transfer cut short by a stop is never installed: a start removes its file
    await rx.write([SnapshotChunk(SnapshotMeta(50, 2), 0, b"d" * 100, 6000)])
    storage.close()
    storage, rec = Storage.open(str(tmp_path), OPTS)
    assert snap_files(tmp_path) == [] and rec.snapshot is None
    storage.close()


async def test_a_corrupted_received_file_is_refused_when_read_back(tmp_path: Path) -> None:
    storage, _ = Storage.open(str(tmp_path), OPTS)
    rx = SnapshotReceiver(AsyncStorage(storage))
    meta = SnapshotMeta(30, 1)
    await rx.write([SnapshotChunk(meta, 0, b"a" * 9000, 9000)])
    tmp, _ = await rx.finish(meta)
    with open(tmp, "r+b") as f:  # a bit flipped on the disk between writing and reading
        f.seek(6000)
        byte = f.read(1)
        f.seek(6000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(CorruptionError, match="CRC"):
        b"".join(storage.read_snapshot_tmp(tmp).chunks())
    storage.close()
