"""Offline tools over a data directory (for `loomctl wal inspect|verify` and `loomctl keys`).

Every function returns plain data (dicts of str/int/bool/None/lists) that prints as text or
JSON. The data directory lock is taken, so these refuse to run next to a live node, and
nothing in the directory is modified (a torn tail is reported, not cut).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from loom.raft.types import HardState
from loom.storage.codec import RecordType
from loom.storage.crypto import Keyring, write_keyring
from loom.storage.errors import CorruptionError, DataDirLockedError, StorageError
from loom.storage.fs import FileSystem, OSFileSystem
from loom.storage.hardstate import read_hard_state
from loom.storage.kms import open_keystore
from loom.storage.records import decode_entry, decode_state, merge_hard_states
from loom.storage.recovery import SNAP_DIR, WAL_DIR, max_payload, recover_dir
from loom.storage.snapshot import SnapshotReader, list_snapshots
from loom.storage.storage import LOCK_NAME
from loom.storage.wal import list_segments, scan_segment

# Offline readers accept any record size the options allow.
OFFLINE_MAX_RECORD = 512 * (1 << 20)


@contextmanager
def _locked(fs: FileSystem, data_dir: str) -> Iterator[None]:
    if not fs.is_dir(data_dir):
        raise StorageError(f"{data_dir} is not a data directory")
    try:
        lock = fs.lock(os.path.join(data_dir, LOCK_NAME))
    except BlockingIOError:
        raise DataDirLockedError(f"{data_dir} is in use by a running node") from None
    try:
        yield
    finally:
        lock.release()


def _keyring(path: str | None, pin: bytes | None, module: str | None) -> Keyring | None:
    """A plain keyring, or a wrapped one given the PKCS#11 module and PIN (storage/kms.py)."""
    return open_keystore(path, pin, module).load() if path else None


def inspect(
    data_dir: str, keyring_path: str | None = None, fs: FileSystem | None = None, *,
    kek_pin: bytes | None = None, pkcs11_module: str | None = None,
) -> dict[str, Any]:
    """Describe the directory: hard state, segments (with index ranges when readable) and
    snapshots. A damaged segment gets an `error` field instead of stopping the listing."""
    fs = fs or OSFileSystem()
    keyring = _keyring(keyring_path, kek_pin, pkcs11_module)
    limit = max_payload(OFFLINE_MAX_RECORD)
    with _locked(fs, data_dir):
        hs: HardState | None = None
        try:
            hs = read_hard_state(fs, data_dir)
            hard_state: Any = (
                None
                if hs is None
                else {
                    "term": hs.term,
                    "vote": hs.vote,
                    "commit": hs.commit,
                }
            )
        except CorruptionError as exc:
            hard_state = {"error": str(exc)}
        wal_dir = os.path.join(data_dir, WAL_DIR)
        segments: list[dict[str, Any]] = []
        found = list_segments(fs, wal_dir) if fs.is_dir(wal_dir) else []
        wal_state = None
        first_index: int | None = None
        last_index: int | None = None
        for i, (seq, first, path) in enumerate(found):
            item: dict[str, Any] = {
                "file": os.path.basename(path),
                "seq": seq,
                "first_index": first,
            }
            try:
                scan = scan_segment(
                    fs,
                    path,
                    seq,
                    newest=i == len(found) - 1,
                    keyring=keyring,
                    decrypt=keyring is not None,
                    max_payload=limit,
                )
            except StorageError as exc:
                item["error"] = str(exc)
                segments.append(item)
                continue
            item.update(size=scan.size, data_bytes=scan.end, records=len(scan.records))
            item["key_id"] = scan.header.key_id if scan.header else None
            item["torn_tail"] = scan.torn
            if scan.decrypted:
                for t, p, _ in scan.records:
                    if t == RecordType.STATE:
                        wal_state = decode_state(p)
                idx = [decode_entry(p).index for t, p, _ in scan.records if t == RecordType.ENTRY]
                item["entries"] = len(idx)
                if idx:
                    low = min(idx)
                    item["first_entry"], item["last_entry"] = low, idx[-1]
                    first_index = low if first_index is None else min(first_index, low)
                    last_index = idx[-1]
            segments.append(item)
        snap_dir = os.path.join(data_dir, SNAP_DIR)
        snapshots: list[dict[str, Any]] = []
        for index, term, path in list_snapshots(fs, snap_dir) if fs.is_dir(snap_dir) else []:
            f = fs.open(path)
            try:
                size = f.size()
            finally:
                f.close()
            snapshots.append(
                {"file": os.path.basename(path), "index": index, "term": term, "size": size}
            )
        if wal_state is not None and (hs is None or isinstance(hs, HardState)):
            merged = merge_hard_states(hs or HardState(), wal_state)
            hard_state = {"term": merged.term, "vote": merged.vote, "commit": merged.commit}
        return {
            "data_dir": data_dir,
            "hard_state": hard_state,
            "segments": segments,
            "first_index": first_index,
            "last_index": last_index,
            "wal_bytes": sum(s.get("size", 0) for s in segments),
            "snapshots": snapshots,
            "encrypted": any(s.get("key_id") for s in segments),
        }


def verify(
    data_dir: str, keyring_path: str | None = None, fs: FileSystem | None = None, *,
    kek_pin: bytes | None = None, pkcs11_module: str | None = None,
) -> dict[str, Any]:
    """Check everything a start would check, and every retained snapshot. Raises
    CorruptionError naming file and offset; returns a report otherwise. Without a keyring,
    encrypted records are checked by CRC only (`authenticated` is then False)."""
    fs = fs or OSFileSystem()
    keyring = _keyring(keyring_path, kek_pin, pkcs11_module)
    with _locked(fs, data_dir):
        res = recover_dir(
            fs,
            data_dir,
            keyring=keyring,
            max_record_size=OFFLINE_MAX_RECORD,
            verify_snapshot=True,
            decrypt=keyring is not None,
        )
        snap_dir = os.path.join(data_dir, SNAP_DIR)
        snaps = []
        for index, term, path in list_snapshots(fs, snap_dir) if fs.is_dir(snap_dir) else []:
            info = SnapshotReader(
                fs,
                path,
                keyring=keyring,
                max_payload=max_payload(OFFLINE_MAX_RECORD),
                decrypt=keyring is not None,
            ).verify()
            snaps.append(
                {
                    "file": os.path.basename(path),
                    "index": index,
                    "term": term,
                    "chunks": info.chunks,
                    "bytes": info.size,
                }
            )
        newest = res.scans[-1] if res.scans else None
        torn = None
        if newest is not None and newest.torn:
            torn = {
                "file": newest.path,
                "offset": newest.end,
                "bytes": newest.size - newest.end,
                "reason": newest.torn,
            }
        encrypted = any(s.header is not None and s.header.key_id for s in res.scans)
        replay = res.replay
        return {
            "ok": True,
            "data_dir": data_dir,
            "segments": len(res.scans),
            "records": sum(len(s.records) for s in res.scans),
            "first_index": replay.base_index + 1 if replay.entries else None,
            "last_index": replay.last_index if replay.entries else None,
            "hard_state": {
                "term": res.hard_state.term,
                "vote": res.hard_state.vote,
                "commit": res.hard_state.commit,
            },
            "snapshots": snaps,
            "torn_tail": torn,
            "encrypted": encrypted,
            "authenticated": keyring is not None or not encrypted,
        }


def create_keyring(path: str) -> int:
    """Create a new keyring file (0600) with one key; returns its id."""
    keyring = Keyring.generate()
    write_keyring(path, keyring, exclusive=True)
    return keyring.active


def rotate_key(keyring_path: str, *, kek_pin: bytes | None = None,
               pkcs11_module: str | None = None) -> int:
    """Add a new key and make it the active one; old keys stay for reading. Returns its id.
    Nodes stopped now use it from their next start (a running node: `loomctl keys rotate`).
    A wrapped keyring stays wrapped: the new key is written only wrapped."""
    store = open_keystore(keyring_path, kek_pin, pkcs11_module)
    keyring = store.load().rotated()
    store.save(keyring)
    return keyring.active
