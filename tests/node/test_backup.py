"""SNAPSHOT_SAVE on a real node (in-process, real TLS, real files) and `loomd restore`'s checks:
chunks reassemble to a file with the announced SHA-256; an encrypted node's backup needs the
keyring to restore; the grant is checked like any other; one file per node, gone once fetched."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from loom.node.config import Limits, StorageSettings
from loom.node.restore import RestoreError, read_backup, restore
from loom.node.server import Node
from loom.storage.admin import create_keyring
from tests.conftest import PKI, NodeFactory, connect
from tests.node.conftest import audit_flushed, records

FORBIDDEN, NOT_FOUND = 3, 4


async def save(node: Node, pki: PKI, out: Path) -> dict[str, object]:
    c = await connect(node, pki, "admin")
    try:
        r = await c.request("SNAPSHOT_SAVE")
        assert r["s"] == 0, r
        head = r["r"]
        parts, offset, chunks = [head["data"]], len(head["data"]), 1
        while offset < head["size"]:
            r = await c.request("SNAPSHOT_SAVE", snapshot=head["snapshot"], offset=offset)
            assert r["s"] == 0 and r["r"]["offset"] == offset, r
            parts.append(r["r"]["data"])
            offset += len(r["r"]["data"])
            chunks += 1
        # Once the last chunk was served the file is gone: the id is not known any more.
        r = await c.request("SNAPSHOT_SAVE", snapshot=head["snapshot"], offset=0)
        assert r["s"] == NOT_FOUND, r
    finally:
        await c.aclose()
    data = b"".join(parts)
    assert hashlib.sha256(data).hexdigest() == head["sha256"]
    out.write_bytes(data)
    return {**head, "chunks": chunks}


async def fill(node: Node, pki: PKI, n: int, size: int) -> None:
    c = await connect(node, pki, "admin")
    try:
        for i in range(n):
            r = await c.request("MAP_PUT", name="m", key=f"k{i}", value=bytes([i % 251]) * size)
            assert r["s"] == 0, r
    finally:
        await c.aclose()


async def test_chunks_make_the_announced_file(start_node: NodeFactory, pki: PKI,
                                              tmp_path: Path) -> None:
    node = await start_node(limits=replace(Limits(), max_frame_bytes=64 << 10))
    await fill(node, pki, 40, 4000)
    head = await save(node, pki, tmp_path / "b.snap")
    assert head["chunks"] >= 4, head  # 32 KiB chunks under a 64 KiB frame limit
    assert head["encrypted"] is False
    meta, sm, encrypted = read_backup(tmp_path / "b.snap", None)
    assert meta.index == head["index"] and not encrypted
    assert sm.applied_index <= meta.index
    assert not list((node.cfg.data_dir / "backup").glob("*"))


async def test_encrypted_node_backup_needs_the_keyring(start_node: NodeFactory, pki: PKI,
                                                       tmp_path: Path) -> None:
    ring = tmp_path / "keyring.json"
    create_keyring(str(ring))
    node = await start_node(storage=StorageSettings(keyring=ring))
    await fill(node, pki, 10, 100)
    head = await save(node, pki, tmp_path / "e.snap")
    assert head["encrypted"] is True
    assert b"\x01" * 100 not in (tmp_path / "e.snap").read_bytes()  # no value in clear
    with pytest.raises(RestoreError, match="--keyring"):
        read_backup(tmp_path / "e.snap", None)
    other = tmp_path / "other.json"
    create_keyring(str(other))
    with pytest.raises(RestoreError):
        read_backup(tmp_path / "e.snap", other)
    r = restore(tmp_path / "e.snap", data_dir=tmp_path / "new", node_id="n1",
                peers={"n1": "127.0.0.1:7001"}, cluster_name="r", keyring=ring)
    assert r.encrypted and r.index == head["index"]


async def test_the_grant_is_checked(start_node: NodeFactory, pki: PKI) -> None:
    node = await start_node()
    c = await connect(node, pki, "writer")
    try:
        r = await c.request("SNAPSHOT_SAVE")
        assert r["s"] == FORBIDDEN, r
    finally:
        await c.aclose()
    await audit_flushed(node)
    assert any(rec.get("command") == "SNAPSHOT_SAVE" and rec.get("result") == "denied"
               for rec in records(node)), records(node)


def test_restore_refuses_what_is_not_a_backup(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "junk").write_bytes(b"not a snapshot at all" * 10)
    with pytest.raises(RestoreError, match="empty"):
        read_backup(tmp_path / "empty", None)
    with pytest.raises(RestoreError, match="damaged or truncated"):
        read_backup(tmp_path / "junk", None)
    with pytest.raises(RestoreError, match="no such file"):
        read_backup(tmp_path / "absent", None)
