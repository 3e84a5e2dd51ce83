"""Backup and restore with real processes: `loomctl snapshot save` under a write load, then
`loomd restore` of every member of a fresh 3-node cluster, which serves every write
acknowledged before the save; damaged and truncated files are refused and leave the target
data directory untouched; a restored directory starts only under its new cluster name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from loom.chaos.cluster import LOOMD
from loom.node.config import to_toml
from tests.cluster.conftest import OK, Cluster, ClusterFactory

pytestmark = pytest.mark.slow

NOT_FOUND = 4


async def loomctl(cluster: Cluster, *args: str, check: bool = True
                  ) -> subprocess.CompletedProcess[bytes]:
    admin_pem, admin_key = cluster.pki.pair("admin")
    endpoints = ",".join(n.client_addr for n in cluster.nodes.values())
    cmd = [sys.executable, "-m", "loom.cli.loomctl", "--endpoints", endpoints,
           "--ca", str(cluster.pki.ca), "--cert", str(admin_pem), "--key", str(admin_key),
           "--timeout", "30", *args]
    with trio.fail_after(90):
        p = await trio.run_process(cmd, stdin=subprocess.DEVNULL, capture_stdout=True,
                                   capture_stderr=True, check=False)
    if check:
        assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    return p


async def restore(backup: Path, data_dir: Path, nid: str, peers: str, name: str
                  ) -> subprocess.CompletedProcess[bytes]:
    cmd = [*LOOMD, "restore", str(backup), "--data-dir", str(data_dir), "--node-id", nid,
           "--peers", peers, "--cluster-name", name]
    with trio.fail_after(60):
        return await trio.run_process(cmd, stdin=subprocess.DEVNULL, capture_stdout=True,
                                      capture_stderr=True, check=False)


async def test_save_under_load_then_restore_a_new_cluster(cluster_factory: ClusterFactory,
                                                          tmp_path: Path) -> None:
    old = await cluster_factory()
    await old.wait_leader()
    acked: dict[str, bytes] = {}
    stop = trio.Event()
    writes = {"failed": 0}

    async def writer(w: int) -> None:
        c = old.client(client_id=f"w{w}")
        i = 0
        while not stop.is_set():
            key, value = f"w{w}-{i}", f"value {w}-{i}".encode() * 100  # ~1 KiB
            r = await c.call("MAP_PUT", name="m", key=key, value=value)
            if r["s"] == OK:
                acked[key] = value
            else:
                writes["failed"] += 1
            i += 1

    backup = tmp_path / "backup.snap"
    async with trio.open_nursery() as ns:
        for w in range(4):
            ns.start_soon(writer, w)
        while len(acked) < 300:
            await trio.sleep(0.05)
        before = dict(acked)  # everything acknowledged before the save was asked for
        p = await loomctl(old, "-o", "json", "snapshot", "save", str(backup))
        during = len(acked) - len(before)
        await trio.sleep(0.3)  # the load goes on after the save
        stop.set()
    print(f"saved with {len(before)} writes acknowledged before, {during} during the save; "
          f"{p.stdout.decode()[:300]}")
    assert backup.stat().st_mode & 0o777 == 0o600
    assert backup.stat().st_size > 256 << 10  # more than one chunk crossed the wire
    assert during > 0, "the save did not overlap the write load"

    # The leader kept no backup file once the last chunk was served.
    for n in old.nodes.values():
        assert not list((n.data_dir / "backup").glob("*.snap")), n.id

    # Damaged and truncated copies are refused, naming why, and write nothing.
    data = backup.read_bytes()
    flipped = tmp_path / "flipped.snap"
    flipped.write_bytes(data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0x40])
                        + data[len(data) // 2 + 1:])
    truncated = tmp_path / "truncated.snap"
    truncated.write_bytes(data[:len(data) - 100])
    for bad in (flipped, truncated):
        target = tmp_path / f"target-{bad.stem}"
        r = await restore(bad, target, "n1", "n1=127.0.0.1:1", "restored")
        err = r.stderr.decode()
        assert r.returncode == 1 and "damaged or truncated, refused" in err, (r, err)
        assert not (target / "raft").exists()

    # A fresh 3-node cluster, every member restored from the same file.
    new = await cluster_factory(start=False)
    new.name = "restored"
    peers = ",".join(f"{nid}=127.0.0.1:{n.peer_port}" for nid, n in new.nodes.items())
    for nid, n in new.nodes.items():
        r = await restore(backup, n.data_dir, nid, peers, "restored")
        assert r.returncode == 0, r.stderr.decode()
    # Restoring twice into the same directory is refused.
    r = await restore(backup, new.nodes["n1"].data_dir, "n1", peers, "restored")
    assert r.returncode == 1 and b"already holds a log" in r.stderr
    await new.start()
    await new.wait_leader()
    c = new.client()
    missing = []
    for key, value in before.items():
        r2: dict[str, Any] = await c.call("MAP_GET", name="m", key=key, retry_unknown=True)
        if r2["s"] != OK or r2["r"] != value:
            missing.append((key, r2))
    assert not missing, f"{len(missing)} acknowledged writes missing: {missing[:5]}"
    r2 = await c.call("MAP_PUT", name="m", key="after-restore", value=b"x")
    assert r2["s"] == OK, r2
    await new.wait_converged()
    print(f"restored cluster serves all {len(before)} writes acknowledged before the save")
    r2 = await c.call("MEMBER_LIST")
    assert {m["id"]: m["peer_addr"] for m in r2["r"]["members"]} == {
        nid: f"127.0.0.1:{n.peer_port}" for nid, n in new.nodes.items()}, r2

    # A restored directory starts only under the cluster name it was restored for.
    n1 = new.nodes["n1"]
    await new.stop("n1")
    n1.config.write_text(to_toml(new.config_for("n1")).replace(
        'cluster_name = "restored"', 'cluster_name = "cluster-tests"'), encoding="utf-8")
    with trio.fail_after(30):
        p3 = await trio.run_process([*LOOMD, "--config", str(n1.config)],
                                    stdin=subprocess.DEVNULL, capture_stdout=True,
                                    capture_stderr=True, check=False)
    assert p3.returncode == 2 and b"was restored for cluster 'restored'" in p3.stderr, p3


async def test_save_refuses_an_unknown_snapshot_id(cluster_factory: ClusterFactory) -> None:
    cluster = await cluster_factory(n=1)
    await cluster.wait_leader()
    r = await cluster.request("n1", "SNAPSHOT_SAVE", snapshot="nope", offset=0)
    assert r is not None and r["s"] == NOT_FOUND, r
