"""Reading a data directory back: hard state, newest snapshot, WAL replay, cross-checks.

Read-only: `Storage.open` applies the repairs (cutting a torn tail) afterwards, and the
offline `verify` uses it as is.

Rules:
* The newest snapshot file must verify completely (record CRCs, end record, decryption).
* Segments must be consecutive; every segment but the newest must be intact; the newest may
  end in a torn tail, which is reported (and cut by `Storage.open`).
* The replayed log must reach back to the snapshot (no missing entries after it), and the
  persisted commit index must not exceed what the log and snapshot hold: losing committed
  entries is corruption, never silently accepted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from loom.raft.types import HardState, SnapshotMeta
from loom.storage.crypto import TAG_SIZE, Keyring
from loom.storage.errors import CorruptionError
from loom.storage.fs import FileSystem
from loom.storage.hardstate import read_hard_state
from loom.storage.records import decode_state, merge_hard_states
from loom.storage.snapshot import SnapshotInfo, SnapshotReader, list_snapshots
from loom.storage.wal import LogReplay, SegmentScan, list_segments, replay_scan, scan_segment

WAL_DIR = "wal"
SNAP_DIR = "snap"


@dataclass
class RecoveryResult:
    hard_state: HardState
    file_hard_state: HardState | None
    snapshot: SnapshotMeta | None
    snapshot_path: str | None
    snapshot_info: SnapshotInfo | None
    replay: LogReplay  # the WAL alone, before the snapshot file is applied
    scans: list[SegmentScan] = field(default_factory=list)
    last_mark: tuple[int, int] | None = None

    @property
    def torn_bytes(self) -> int:
        if not self.scans:
            return 0
        s = self.scans[-1]
        return s.size - s.end if s.torn else 0


def max_payload(max_record_size: int) -> int:
    return max_record_size + TAG_SIZE


def recover_dir(
    fs: FileSystem,
    data_dir: str,
    *,
    keyring: Keyring | None,
    max_record_size: int,
    verify_snapshot: bool = True,
    decrypt: bool = True,
    keep_records: bool = True,
    keep_covered: bool = True,
) -> RecoveryResult:
    """Read and check a data directory. `keep_records=False` (a node's start) lets each
    segment's records go once replayed: the replayed entries are what is kept, and holding
    the records as well would double the log in memory while recovering. `keep_covered=False`
    (a node's start) keeps the entries the newest snapshot covers without their data
    (`LogReplay.covered`)."""
    limit = max_payload(max_record_size)
    file_hs = read_hard_state(fs, data_dir)
    snap_dir = os.path.join(data_dir, SNAP_DIR)
    snapshot = snap_path = snap_info = None
    snaps = list_snapshots(fs, snap_dir) if fs.is_dir(snap_dir) else []
    if snaps:
        snap_path = snaps[-1][2]
        reader = SnapshotReader(fs, snap_path, keyring=keyring, max_payload=limit, decrypt=decrypt)
        if (reader.meta.index, reader.meta.term) != snaps[-1][:2]:
            raise CorruptionError(snap_path, 0, "snapshot header does not match the file name")
        if verify_snapshot:
            snap_info = reader.verify()
        snapshot = reader.meta

    wal_dir = os.path.join(data_dir, WAL_DIR)
    segments = list_segments(fs, wal_dir) if fs.is_dir(wal_dir) else []
    replay = LogReplay(0 if keep_covered or snapshot is None else snapshot.index)
    states: list[bytes] = []
    scans: list[SegmentScan] = []
    marks: list[tuple[int, int]] = []
    for i, (seq, first_index, path) in enumerate(segments):
        scan = scan_segment(
            fs,
            path,
            seq,
            newest=i == len(segments) - 1,
            keyring=keyring,
            decrypt=decrypt,
            max_payload=limit,
        )
        if scan.header is not None and scan.header.first_index != first_index:
            raise CorruptionError(path, 0, "segment header does not match the file name")
        scans.append(scan)
        if scan.decrypted:
            replay_scan(replay, scan, states)
            marks.extend(replay.marks_seen)
            replay.marks_seen.clear()
            if not keep_records:
                scan.records = []

    hs = file_hs or HardState()
    if states:
        hs = merge_hard_states(hs, decode_state(states[-1]))
    result = RecoveryResult(
        hs, file_hs, snapshot, snap_path, snap_info, replay, scans, marks[-1] if marks else None
    )
    if all(s.decrypted for s in scans):
        check_log(result)
    return result


def check_log(result: RecoveryResult) -> None:
    """Cross-checks between the snapshot, the log and the hard state."""
    replay, snap = result.replay, result.snapshot
    snap_index = snap.index if snap else 0
    where = result.scans[0].path if result.scans else "<wal>"
    if replay.started and replay.base_index > snap_index:
        raise CorruptionError(
            where,
            0,
            f"the log starts after index {replay.base_index} but the newest snapshot covers "
            f"only up to {snap_index}: entries are missing",
        )
    last = max(replay.last_index if replay.started else 0, snap_index)
    if (
        snap is not None
        and snap.index > replay.base_index
        and replay.term_at(snap.index) not in (None, snap.term)
    ):
        last = snap_index  # the log conflicts with the snapshot and will be discarded
    if result.hard_state.commit > last:
        newest = result.scans[-1] if result.scans else None
        raise CorruptionError(
            newest.path if newest else where,
            newest.end if newest else 0,
            f"hard state commit index {result.hard_state.commit} is beyond the last index {last} "
            "the log and snapshot hold: committed entries are missing",
        )
