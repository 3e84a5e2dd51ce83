"""The real storage code over the fault-injecting file system: crashes drop unsynced bytes
and tear the last write, syncs fail or are slow, the disk fills up. After every crash the
node recovers and no acknowledged entry is missing."""

from __future__ import annotations

import random

import pytest

from loom.raft.types import Entry, EntryType, HardState, SnapshotMeta
from loom.storage import DiskFullError, FatalIOError, Storage
from loom.storage.faultfs import FaultFS

from .conftest import entries, small_options

DATA = "/node/data"


class PowerCut(Exception):
    """Raised from a sync hook: the machine loses power in the middle of an operation."""


Log = dict[int, Entry]


def apply(log: Log, batch: list[Entry]) -> Log:
    out = dict(log)
    if batch:
        for k in [k for k in out if k >= batch[0].index]:
            del out[k]
        for e in batch:
            out[e.index] = e
    return out


class Model:
    """What was acknowledged, and the saves made since (which may or may not survive)."""

    def __init__(self) -> None:
        self.acked: Log = {}
        self.acked_hs = HardState()
        self.snap: SnapshotMeta | None = None
        self.pending: list[list[Entry]] = []
        self.log: Log = {}  # what the node believes now
        self.hs = HardState()

    def candidates(self) -> list[Log]:
        """Logs recovery may legally produce: the acknowledged one plus any prefix of the
        unacknowledged saves, the last of them possibly cut after any of its entries."""
        out, cur = [self.acked], self.acked
        for batch in self.pending:
            for n in range(1, len(batch) + 1):
                out.append(apply(cur, batch[:n]))
            cur = apply(cur, batch)
        return out


def after(log: Log, index: int) -> Log:
    return {k: v for k, v in log.items() if k > index}


def check_recovery(
    model: Model, rec_entries: list[Entry], hs: HardState, snap: SnapshotMeta | None
) -> None:
    assert snap == model.snap
    snap_index = snap.index if snap else 0
    got = {e.index: e for e in rec_entries}
    assert list(got) == sorted(got), "entries out of order"
    options = [after(c, snap_index) for c in model.candidates()]
    assert got in options, (
        f"recovered {len(got)} entries (last {max(got, default=0)}), acknowledged "
        f"last {max(model.acked, default=0)}; no legal outcome matches"
    )
    assert hs.term >= model.acked_hs.term and hs.commit >= model.acked_hs.commit
    if hs.term == model.acked_hs.term and model.acked_hs.vote is not None:
        assert hs.vote == model.acked_hs.vote


def run_workload(seed: int, steps: int) -> FaultFS:
    rng = random.Random(seed)
    armed = {"n": -1}

    def hook(_path: str) -> None:
        if armed["n"] == 0:
            armed["n"] = -1
            raise PowerCut
        if armed["n"] > 0:
            armed["n"] -= 1

    fs = FaultFS(seed, sync_hook=hook)
    opts = small_options(fs=fs, segment_size=64 * 1024, trailing_entries=rng.choice([0, 10, 50]))
    model = Model()
    storage, _ = Storage.open(DATA, opts)

    def restart() -> None:
        nonlocal storage
        fs.crash()
        armed["n"] = -1
        storage, rec = Storage.open(DATA, opts)
        check_recovery(model, rec.entries, rec.hard_state, rec.snapshot)
        log = {e.index: e for e in rec.retained + rec.entries}
        model.acked = model.log = log
        model.acked_hs = model.hs = rec.hard_state
        model.pending = []

    for _ in range(steps):
        last = max(model.log, default=model.snap.index if model.snap else 0)
        commit = model.hs.commit
        roll = rng.random()
        if roll < 0.08:
            restart()
            continue
        if roll < 0.14 and commit > (model.snap.index if model.snap else 0):
            idx = rng.randint((model.snap.index if model.snap else 0) + 1, commit)
            term = model.log[idx].term if idx in model.log else model.hs.term
            meta = SnapshotMeta(idx, term)
            storage.save_snapshot(meta, [rng.randbytes(rng.randint(1, 20_000))])
            model.snap = meta
            model.acked, model.acked_hs, model.pending = dict(model.log), model.hs, []
            continue
        # A save: append, maybe overwrite an uncommitted suffix, maybe a new term or commit.
        hs = model.hs
        if rng.random() < 0.15:
            hs = HardState(hs.term + 1, rng.choice([None, "n1", "n2"]), hs.commit)
        start = last + 1
        if rng.random() < 0.2 and last > commit:
            start = rng.randint(commit + 1, last)
        term = max(hs.term, 1)
        batch = [
            Entry(term, i, EntryType.NORMAL, rng.randbytes(rng.choice([0, 10, 300, 900, 3000])))
            for i in range(start, start + rng.randint(0, 12))
        ]
        new_log = apply(model.log, batch)
        new_last = max(new_log, default=last)
        hs = HardState(hs.term, hs.vote, max(hs.commit, rng.randint(hs.commit, new_last)))
        if hs.term < max((e.term for e in new_log.values()), default=0):
            hs = HardState(term, hs.vote, hs.commit)
        must_sync = rng.random() < 0.7
        if rng.random() < 0.1:
            armed["n"] = rng.randint(0, 2)  # power cut at one of the next syncs
        model.pending.append(batch)
        try:
            storage.save(hs, batch, must_sync)
        except PowerCut:
            restart()
            continue
        armed["n"] = -1
        model.log, model.hs = new_log, hs
        if must_sync or hs.term != model.acked_hs.term or hs.vote != model.acked_hs.vote:
            if must_sync:
                model.acked, model.pending = dict(new_log), []
            model.acked_hs = HardState(
                hs.term, hs.vote, hs.commit if must_sync else model.acked_hs.commit
            )
    restart()
    storage.close()
    return fs


@pytest.mark.parametrize("seed", range(40))
def test_crash_recovery_never_loses_acknowledged_entries(seed: int) -> None:
    fs = run_workload(seed, steps=150)
    assert fs.crashes > 1


def test_failed_fsync_stops_the_storage() -> None:
    fs = FaultFS(1)
    s, _ = Storage.open(DATA, small_options(fs=fs))
    s.save(HardState(1, "n1", 0), entries(1, 10), True)
    fs.fail_next_syncs(1)
    with pytest.raises(FatalIOError, match="fdatasync"):
        s.save(None, entries(11, 10), True)
    with pytest.raises(FatalIOError, match="earlier"):  # no retry that pretends it worked
        s.save(None, entries(21, 1), True)
    fs.crash()
    s, rec = Storage.open(DATA, small_options(fs=fs))
    assert [e.index for e in rec.entries][:10] == list(range(1, 11))
    s.close()


def test_failed_hard_state_sync_stops_the_storage() -> None:
    fs = FaultFS(2)
    s, _ = Storage.open(DATA, small_options(fs=fs))
    s.save(HardState(1, "n1", 0), entries(1, 3), True)
    fs.fail_next_syncs(2)  # the WAL sync fails first
    with pytest.raises(FatalIOError):
        s.save(HardState(2, "n2", 0), [], True)
    with pytest.raises(FatalIOError):
        s.save(HardState(2, "n2", 0), [], True)


def test_disk_full_refuses_then_recovers() -> None:
    fs = FaultFS(3)
    opts = small_options(fs=fs)
    s, _ = Storage.open(DATA, opts)
    s.save(HardState(1, "n1", 0), entries(1, 50, size=500), True)
    fs.capacity = fs.used_bytes() + 2000  # room for the current segment only
    acked = 50
    with pytest.raises(DiskFullError):
        for b in range(200):  # fills the segment, then a new one cannot be created
            s.save(HardState(1, "n1", acked), entries(acked + 1, 10, size=500), True)
            acked += 10
            assert b < 199
    assert s.last_index == acked  # the refused batch left no trace
    with pytest.raises(DiskFullError):
        s.save(None, entries(acked + 1, 10, size=500), True)
    fs.capacity = None  # space returns
    s.save(HardState(1, "n1", acked), entries(acked + 1, 10, size=500), True)
    acked += 10
    fs.crash()
    s, rec = Storage.open(DATA, opts)
    assert [e.index for e in rec.entries] == list(range(1, acked + 1))
    assert rec.entries[-1] == entries(acked, 1, size=500)[0]
    s.close()


def test_disk_full_during_snapshot_keeps_the_old_state() -> None:
    fs = FaultFS(4)
    opts = small_options(fs=fs)
    s, _ = Storage.open(DATA, opts)
    s.save(HardState(1, "n1", 30), entries(1, 30), True)
    fs.capacity = fs.used_bytes() + 10_000
    with pytest.raises(DiskFullError):
        s.save_snapshot(SnapshotMeta(20, 1), [b"x" * 50_000])
    assert s.snapshot_meta is None
    fs.capacity = None
    s.save_snapshot(SnapshotMeta(20, 1), [b"y" * 50_000])
    s.close()
    s, rec = Storage.open(DATA, opts)
    assert rec.snapshot == SnapshotMeta(20, 1)
    assert [e.index for e in rec.entries] == list(range(21, 31))
    s.close()


def test_slow_fsync_is_still_one_sync_per_save() -> None:
    calls: list[str] = []
    fs = FaultFS(5, sync_hook=calls.append)
    s, _ = Storage.open(DATA, small_options(fs=fs))
    s.save(HardState(1, "n1", 0), [], True)  # a vote: the hard-state file is replaced
    before = len(calls)
    s.save(HardState(1, "n1", 40), entries(1, 40, size=200), True)  # group commit
    assert len(calls) - before == 1
    s.close()


def test_unsynced_segment_creation_is_never_relied_on() -> None:
    """A crash right after open (before anything else) leaves a usable directory."""
    fs = FaultFS(6)
    for _ in range(5):
        s, _ = Storage.open(DATA, small_options(fs=fs))
        s.save(None, entries(s.last_index + 1, 5), True)
        fs.crash()
    s, rec = Storage.open(DATA, small_options(fs=fs))
    assert [e.index for e in rec.entries] == list(range(1, 26))
    s.close()
