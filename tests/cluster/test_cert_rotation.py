"""Certificate rotation without downtime, with real processes, as docs/operations.md tells it:
every node's certificate renewed from the same CA, then the CA itself replaced through a trust
bundle (old + new CA), each step a config change and SIGHUP, under a steady write load that
sees no failed request. At the end only the new CA is trusted: a client certificate of the old
CA is refused, and a restarted node rejoins over peer links made with the new CA alone."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509

from loom.node.config import TLSConfig, to_toml
from tests.cluster.conftest import FAST_RAFT, OK, Cluster, Conn, ConnError
from tests.conftest import PKI

pytestmark = pytest.mark.slow


def loomctl_offline(*args: str) -> None:
    p = subprocess.run([sys.executable, "-m", "loom.cli.loomctl", *args], capture_output=True,
                       timeout=60, check=False, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, (args, p.stdout, p.stderr)


def served_serial(port: int, ca: Path, cert: Path, key: Path) -> int:
    """The serial number of the certificate a node serves on its client port."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s, \
            ctx.wrap_socket(s, server_hostname="localhost") as t:
        der = t.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def serial_of(pem: Path) -> int:
    return x509.load_pem_x509_certificate(pem.read_bytes()).serial_number


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


async def test_rotate_every_leaf_then_the_ca_under_load(pki: PKI, tmp_path: Path,
                                                        nursery: trio.Nursery) -> None:
    old_dir = tmp_path / "pki-old"  # the operator's CA directory (ca.pem, ca.key) + leaves
    shutil.copytree(pki.dir, old_dir)
    trust = tmp_path / "trust.pem"  # the trust file every node's tls.ca points at
    shutil.copy(old_dir / "ca.pem", trust)
    clients = tmp_path / "clients-old"  # what clients use: the trust file + admin's pair
    clients.mkdir()
    shutil.copy(old_dir / "admin.pem", clients)
    shutil.copy(old_dir / "admin.key", clients)
    os.symlink(trust, clients / "ca.pem")
    cluster = Cluster(PKI(clients, pki.other), tmp_path / "cluster", nursery,
                      ("n1", "n2", "n3"), FAST_RAFT, False)
    tls: dict[str, tuple[Path, Path]] = {
        nid: (old_dir / f"{nid}.pem", old_dir / f"{nid}.key") for nid in cluster.ids}
    reloads = dict.fromkeys(cluster.ids, 0)

    def write_config(nid: str) -> None:
        cert, key = tls[nid]
        cfg = replace(cluster.config_for(nid), tls=TLSConfig(ca=trust, cert=cert, key=key))
        cluster.nodes[nid].config.write_text(to_toml(cfg), encoding="utf-8")

    async def reload(nid: str) -> None:
        write_config(nid)
        n = cluster.nodes[nid]
        assert n.proc is not None
        n.proc.send_signal(signal.SIGHUP)
        reloads[nid] += 1
        with trio.fail_after(10):
            while n.log_text().count("reload: certificates") < reloads[nid]:
                await trio.sleep(0.05)

    async def check_new_connections(*pkis: PKI) -> None:
        """Fresh client connections to every node, with each client set given, and fresh peer
        links: a follower restarts (the others dial it and it dials them)."""
        for p in pkis:
            for nid in cluster.ids:
                c = await Conn.open(p, cluster.nodes[nid].client_port, timeout=5)
                try:
                    r = await c.request("PING", timeout=5)
                    assert r["s"] == OK, r
                finally:
                    await c.aclose()
        leader = await cluster.wait_leader()
        restarts["i"] += 1
        follower = [n for n in cluster.ids if n != leader][restarts["i"] % 2]
        await cluster.stop(follower)
        await cluster.start(follower)
        await cluster.wait_converged()

    restarts = {"i": 0}
    try:
        for nid in cluster.ids:
            cluster.nodes[nid].dir.mkdir(parents=True, exist_ok=True)
            write_config(nid)
        await cluster.start()
        await cluster.wait_leader()

        stop = trio.Event()
        load: dict[str, Any] = {"ok": 0, "failed": [], "retries": 0}

        async def writer(w: int) -> None:
            # A new connection every 20 writes: handshakes go on through every step, with
            # whatever certificates the clients hold at that moment.
            c = cluster.client(client_id=f"rot{w}")
            seq = 0
            while not stop.is_set():
                seq += 1
                if seq % 20 == 0:
                    load["retries"] += c.retries
                    await c.aclose()
                    c = cluster.client(client_id=f"rot{w}")
                r = await c.call("MAP_PUT", name="m", key=f"{w}-{seq}", value=b"v", seq=seq,
                                 retry_unknown=True)
                if r["s"] == OK:
                    load["ok"] += 1
                else:
                    load["failed"].append(r)
                await trio.sleep(0.005)
            load["retries"] += c.retries

        async with trio.open_nursery() as ns:
            for w in range(2):
                ns.start_soon(writer, w)
            await trio.sleep(0.3)

            # 1. Renew every node's certificate from the same CA.
            leaves1 = tmp_path / "leaves-1"
            for nid in cluster.ids:
                loomctl_offline("certs", "issue", "--ca-dir", str(old_dir), "--out",
                                str(leaves1), "node", nid)
                tls[nid] = (leaves1 / f"{nid}.pem", leaves1 / f"{nid}.key")
                await reload(nid)
                port = cluster.nodes[nid].client_port
                got = await trio.to_thread.run_sync(served_serial, port, trust,
                                                    clients / "admin.pem", clients / "admin.key")
                assert got == serial_of(leaves1 / f"{nid}.pem"), nid
            await check_new_connections(cluster.pki)

            # 2. A new CA; every node and client trusts both (the bundle).
            new_ca = tmp_path / "ca-new"
            loomctl_offline("certs", "ca", "--out", str(new_ca), "--name", "Loom CA 2")
            write_atomic(trust, (old_dir / "ca.pem").read_bytes()
                         + (new_ca / "ca.pem").read_bytes())
            for nid in cluster.ids:
                await reload(nid)
            old_clients = cluster.pki

            # 3. Clients move to certificates of the new CA.
            clients2 = tmp_path / "clients-new"
            loomctl_offline("certs", "issue", "--ca-dir", str(new_ca), "--out", str(clients2),
                            "client", "admin")
            os.symlink(trust, clients2 / "ca.pem")
            cluster.pki = PKI(clients2, pki.other)

            # 4. Every node moves to a certificate of the new CA.
            leaves2 = tmp_path / "leaves-2"
            for nid in cluster.ids:
                loomctl_offline("certs", "issue", "--ca-dir", str(new_ca), "--out",
                                str(leaves2), "node", nid)
                tls[nid] = (leaves2 / f"{nid}.pem", leaves2 / f"{nid}.key")
                await reload(nid)
            # Clients not moved yet still work, as do the moved ones.
            await check_new_connections(old_clients, cluster.pki)

            # 5. The old CA leaves the bundle.
            write_atomic(trust, (new_ca / "ca.pem").read_bytes())
            for nid in cluster.ids:
                await reload(nid)
            # Peer links and client connections made with the new CA alone.
            await check_new_connections(cluster.pki)
            await trio.sleep(0.3)
            stop.set()

        print(f"rotation: {load['ok']} writes acknowledged, failed {len(load['failed'])}, "
              f"retried {load['retries']}")
        # (retries: a connection opened to the follower being restarted is retried elsewhere)
        assert load["failed"] == [] and load["ok"] > 50, load

        # Only the new CA is trusted now: the old CA's admin certificate is refused.
        (clients / "ca.pem").unlink()
        shutil.copy(new_ca / "ca.pem", clients / "ca.pem")  # trust the servers, old cert
        with pytest.raises(ConnError):
            await Conn.open(old_clients, cluster.nodes["n1"].client_port, timeout=5)
        for nid in cluster.ids:
            got = await trio.to_thread.run_sync(
                served_serial, cluster.nodes[nid].client_port, new_ca / "ca.pem",
                clients2 / "admin.pem", clients2 / "admin.key")
            assert got == serial_of(leaves2 / f"{nid}.pem"), nid
    finally:
        await cluster.aclose()
        cluster.dump_logs(20)
