"""Damage on disk: torn tails are cut and logged; anything else stops recovery with a
message that names the file and the offset."""

from __future__ import annotations

import logging
import os

import pytest

from loom.raft.types import HardState, SnapshotMeta
from loom.storage import CorruptionError, Storage, admin

from .conftest import entries, small_options


def build(data_dir: str, batches: int = 30) -> None:
    s, _ = Storage.open(data_dir, small_options())
    for b in range(batches):
        s.save(HardState(1, "n1", b * 20), entries(b * 20 + 1, 20, size=300), True)
    s.close()


def segments(data_dir: str) -> list[str]:
    wal = os.path.join(data_dir, "wal")
    return [os.path.join(wal, n) for n in sorted(os.listdir(wal))]


def data_end(data_dir: str, path: str) -> int:
    """Where the records of a (possibly preallocated) segment end."""
    for seg in admin.inspect(data_dir)["segments"]:
        if seg["file"] == os.path.basename(path):
            return int(seg["data_bytes"])
    raise AssertionError(path)


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x04]))


def test_bit_flip_in_the_middle_of_a_segment_is_detected(data_dir: str) -> None:
    build(data_dir)
    victim = segments(data_dir)[1]
    size = os.path.getsize(victim)
    flip(victim, size // 2)
    with pytest.raises(CorruptionError) as info:
        Storage.open(data_dir, small_options())
    assert info.value.path == victim
    assert 0 < info.value.offset <= size // 2
    assert victim in str(info.value) and f"offset {info.value.offset}" in str(info.value)
    with pytest.raises(CorruptionError):
        admin.verify(data_dir)
    report = admin.inspect(data_dir)  # still lists everything, flags the bad segment
    assert any("error" in seg for seg in report["segments"])


def test_bit_flip_in_the_newest_segment_is_not_forgiven(data_dir: str) -> None:
    build(data_dir)
    s, _ = Storage.open(data_dir, small_options())
    s.save(HardState(1, "n1", 600), entries(601, 20, size=300), True)
    s.close()
    newest = segments(data_dir)[-1]
    flip(newest, data_end(data_dir, newest) - 100)  # inside the last record
    with pytest.raises(CorruptionError) as info:
        Storage.open(data_dir, small_options())
    assert info.value.path == newest


def test_torn_tail_is_cut_and_logged(data_dir: str, caplog: pytest.LogCaptureFixture) -> None:
    build(data_dir, batches=5)
    newest = segments(data_dir)[-1]
    size = os.path.getsize(newest)
    s, _ = Storage.open(data_dir, small_options())
    s.save(HardState(1, "n1", 100), entries(101, 3, size=300), True)
    s.close()
    newest = segments(data_dir)[-1]
    end = data_end(data_dir, newest)
    with open(newest, "r+b") as f:
        f.truncate(end - 50)  # the last record loses its end
    report = admin.verify(data_dir)
    assert report["torn_tail"] is not None and report["torn_tail"]["file"] == newest
    with caplog.at_level(logging.WARNING, logger="loom.storage"):
        s, rec = Storage.open(data_dir, small_options())
    assert "torn tail" in caplog.text and newest in caplog.text
    assert [e.index for e in rec.entries][-1] == 102
    assert rec.torn_bytes > 0
    s.close()
    assert size > 0


def test_losing_committed_entries_is_detected(data_dir: str) -> None:
    build(data_dir, batches=5)
    s, _ = Storage.open(data_dir, small_options())
    s.save(HardState(1, "n1", 110), entries(101, 10, size=300), True)
    s.save(HardState(2, "n1", 110), [], True)  # a term change: the hard-state file holds 110
    s.close()
    newest = segments(data_dir)[-1]
    with open(newest, "r+b") as f:  # drop the tail, including entries below the commit index
        f.truncate(data_end(data_dir, newest) - 1500)
    with pytest.raises(CorruptionError, match="committed entries are missing"):
        Storage.open(data_dir, small_options())


def test_missing_segment_is_detected(data_dir: str) -> None:
    build(data_dir)
    os.remove(segments(data_dir)[1])
    with pytest.raises(CorruptionError, match="missing"):
        Storage.open(data_dir, small_options())


def test_bit_flip_in_a_snapshot_is_detected(data_dir: str) -> None:
    build(data_dir, batches=5)
    s, _ = Storage.open(data_dir, small_options())
    s.save_snapshot(SnapshotMeta(100, 1), [os.urandom(50_000)])
    s.close()
    snap_dir = os.path.join(data_dir, "snap")
    path = os.path.join(snap_dir, os.listdir(snap_dir)[0])
    flip(path, os.path.getsize(path) // 2)
    with pytest.raises(CorruptionError) as info:
        Storage.open(data_dir, small_options())
    assert info.value.path == path and info.value.offset > 0
    with pytest.raises(CorruptionError):
        admin.verify(data_dir)


def test_truncated_snapshot_is_detected(data_dir: str) -> None:
    build(data_dir, batches=5)
    s, _ = Storage.open(data_dir, small_options())
    s.save_snapshot(SnapshotMeta(100, 1), [os.urandom(50_000)])
    s.close()
    snap_dir = os.path.join(data_dir, "snap")
    path = os.path.join(snap_dir, os.listdir(snap_dir)[0])
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 30)  # loses the end record
    with pytest.raises(CorruptionError, match=r"snapshot|past the end"):
        Storage.open(data_dir, small_options())


def test_corrupt_hard_state_is_detected(data_dir: str) -> None:
    build(data_dir, batches=2)
    flip(os.path.join(data_dir, "hardstate"), 20)
    with pytest.raises(CorruptionError, match="hardstate"):
        Storage.open(data_dir, small_options())


def test_inspect_and_verify_report_plain_data(data_dir: str) -> None:
    build(data_dir, batches=10)
    s, _ = Storage.open(data_dir, small_options())
    s.save_snapshot(SnapshotMeta(150, 1), [b"abc"])
    s.close()
    info = admin.inspect(data_dir)
    assert info["hard_state"] == {"term": 1, "vote": "n1", "commit": 180}
    assert info["last_index"] == 200
    assert info["snapshots"][0]["index"] == 150
    assert all(seg["key_id"] == 0 for seg in info["segments"])
    report = admin.verify(data_dir)
    assert report["ok"] and report["last_index"] == 200 and report["torn_tail"] is None
    assert report["snapshots"][0]["bytes"] == 3
