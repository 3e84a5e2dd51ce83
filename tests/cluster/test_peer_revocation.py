"""Revocation reaches open peer connections (issue #14, day-2 bullet), with real processes: a
member's node certificate revoked through the CRL (then SIGHUP on the others) loses its open
peer connections in both directions within a bounded time, and cannot open new ones; the
other two go on committing without it."""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from loom.node.config import to_toml
from loom.security import devpki
from tests.cluster.conftest import OK, ClusterFactory

pytestmark = pytest.mark.slow


def write_crl(ca_dir: Path, path: Path, *serials: int) -> None:
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    devpki.write_crl(path, devpki.issue_crl(ca, key, serials))  # type: ignore[arg-type]


async def test_a_revoked_node_loses_its_open_peer_connections(
        cluster_factory: ClusterFactory, tmp_path: Path) -> None:
    c = await cluster_factory(start=False)
    crl = tmp_path / "crl.pem"
    write_crl(c.pki.dir, crl)
    for nid, n in c.nodes.items():
        n.dir.mkdir(parents=True, exist_ok=True)
        cfg = c.config_for(nid)
        n.config.write_text(to_toml(replace(cfg, tls=replace(cfg.tls, crl=crl))),
                            encoding="utf-8")
    await c.start()
    leader = await c.wait_leader()
    await c.wait_converged()
    victim = next(n for n in c.ids if n != leader)
    others = [n for n in c.ids if n != victim]
    serial = x509.load_pem_x509_certificate(
        (c.pki.dir / f"{victim}.pem").read_bytes()).serial_number

    write_crl(c.pki.dir, crl, serial)
    t0 = trio.current_time()
    for nid in others:
        proc = c.nodes[nid].proc
        assert proc is not None
        proc.send_signal(signal.SIGHUP)
    with trio.fail_after(15):  # both directions closed, on both other nodes
        while True:
            peers = {}
            for nid in others:
                st = await c.stats(nid)
                assert st is not None
                peers[nid] = st["peer"]["peers"][victim]
            if not any(p["connected"] or p["inbound"] for p in peers.values()):
                break
            await trio.sleep(0.05)
    took = trio.current_time() - t0
    before = await c.status(victim)
    assert before is not None
    admin = c.client()
    admin.only = others
    for i in range(20):  # the other two commit without it
        assert (await admin.call("MAP_PUT", name="m", key=f"k{i}", value=b"v"))["s"] == OK
    await trio.sleep(1.0)  # room for a (wrong) reconnection and catch-up
    st = await c.status(victim)
    leader_now = await c.status(others[0])
    assert st is not None and leader_now is not None
    assert st["applied_index"] <= before["applied_index"] < leader_now["commit_index"], (
        before, st, leader_now)
    for nid in others:
        stats = await c.stats(nid)
        assert stats is not None
        p = stats["peer"]["peers"][victim]
        assert not p["connected"] and not p["inbound"], p
    log = c.nodes[others[0]].log_text()
    assert "revoked by the CRL" in log
    print(f"peer connections of the revoked node closed {took:.2f} s after SIGHUP")
