"""Encryption at rest: AES-256-GCM records and snapshot chunks, keyring with rotation."""

from __future__ import annotations

import json
import os

import pytest

from loom.raft.types import HardState, SnapshotMeta
from loom.storage import CorruptionError, EncryptionKeyError, Storage, admin

from .conftest import entries, small_options

SECRET = b"very-secret-payload-"


def secret_entries(first: int, count: int):  # type: ignore[no-untyped-def]
    return [e.__class__(e.term, e.index, e.type, SECRET * 10) for e in entries(first, count)]


def all_bytes(data_dir: str) -> bytes:
    out = b""
    for root, _, files in os.walk(data_dir):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                out += fh.read()
    return out


def test_encrypted_roundtrip_and_rotation(tmp_path: object, data_dir: str) -> None:
    ring = os.path.join(str(tmp_path), "keyring.json")
    assert admin.create_keyring(ring) == 1
    assert oct(os.stat(ring).st_mode & 0o777) == "0o600"
    opts = small_options(keyring_path=ring)
    s, _ = Storage.open(data_dir, opts)
    s.save(HardState(1, "n1", 0), secret_entries(1, 50), True)
    s.save_snapshot(SnapshotMeta(10, 1), [SECRET * 500])
    s.close()
    assert SECRET not in all_bytes(data_dir)
    assert admin.rotate_key(ring) == 2
    s, rec = Storage.open(data_dir, opts)  # old segments (key 1) still readable
    assert [e.data for e in rec.entries] == [SECRET * 10] * 40
    s.save(None, secret_entries(51, 5), True)
    s.close()
    info = admin.inspect(data_dir, ring)
    assert {seg["key_id"] for seg in info["segments"]} == {1, 2}
    report = admin.verify(data_dir, ring)
    assert report["authenticated"] and report["last_index"] == 55
    offline = admin.verify(data_dir)  # CRC only without the keyring
    assert offline["encrypted"] and not offline["authenticated"]


def test_missing_or_wrong_key_is_a_clear_startup_error(tmp_path: object, data_dir: str) -> None:
    ring = os.path.join(str(tmp_path), "keyring.json")
    admin.create_keyring(ring)
    s, _ = Storage.open(data_dir, small_options(keyring_path=ring))
    s.save(HardState(1, "n1", 0), secret_entries(1, 5), True)
    s.close()
    with pytest.raises(EncryptionKeyError, match="no keyring is configured"):
        Storage.open(data_dir, small_options())
    other = os.path.join(str(tmp_path), "other.json")
    admin.create_keyring(other)  # same key id 1, different key
    with pytest.raises(EncryptionKeyError, match="wrong key"):
        Storage.open(data_dir, small_options(keyring_path=other))
    with open(ring) as fh:
        doc = json.load(fh)
    doc["keys"][0]["id"] = 7
    doc["active"] = 7
    with open(other, "w") as f:
        json.dump(doc, f)
    with pytest.raises(EncryptionKeyError, match="key id 1"):
        Storage.open(data_dir, small_options(keyring_path=other))
    with pytest.raises(EncryptionKeyError, match="cannot read keyring"):
        Storage.open(data_dir, small_options(keyring_path=ring + ".missing"))
    os.chmod(ring, 0o644)
    with pytest.raises(EncryptionKeyError, match="chmod 600"):
        Storage.open(data_dir, small_options(keyring_path=ring))


def test_swapped_records_fail_authentication(tmp_path: object, data_dir: str) -> None:
    """Two records of equal size swapped, with the CRC chain recomputed by an attacker."""
    from loom.storage import codec

    ring = os.path.join(str(tmp_path), "keyring.json")
    admin.create_keyring(ring)
    s, _ = Storage.open(data_dir, small_options(keyring_path=ring))
    s.save(None, secret_entries(1, 4), True)
    s.close()
    wal = os.path.join(data_dir, "wal")
    path = os.path.join(wal, sorted(os.listdir(wal))[-1])
    with open(path, "rb") as fh:
        data = fh.read()
    recs, off, crc = [], 0, 0
    while True:
        r = codec.decode_at(data, off, crc, 1 << 20)
        if r.status != codec.Status.OK:
            break
        recs.append(r)
        off, crc = r.next_offset, r.crc
    entries_recs = [r for r in recs if r.rtype == codec.RecordType.ENTRY]
    order = [
        *recs[: recs.index(entries_recs[0])],
        entries_recs[1],
        entries_recs[0],
        *entries_recs[2:],
    ]
    out, crc = b"", 0
    for r in order:
        framed, crc = codec.encode_record(r.rtype, r.flags, r.payload, crc)
        out += framed
    with open(path, "r+b") as f:
        f.write(out)
    with pytest.raises(CorruptionError, match="authentication failed"):
        Storage.open(data_dir, small_options(keyring_path=ring))
