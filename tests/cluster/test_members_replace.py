"""`loomctl members replace` with real processes: a dead member is replaced by a new node in one
command under a write load, with no failed write; the replacement ends a voter, the dead id is
removed (and refused when its process comes back), and its certificate's serial is printed
for the deny list."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from cryptography import x509

from tests.cluster.conftest import OK, ClusterFactory
from tests.cluster.test_backup_restore import loomctl
from tests.cluster.test_membership import add_joiner, peer_addr, wait_members

pytestmark = pytest.mark.slow


async def test_replace_a_dead_member_in_one_command(cluster_factory: ClusterFactory) -> None:
    cluster = await cluster_factory()
    leader = await cluster.wait_leader()
    dead = next(n for n in cluster.ids if n != leader)
    await cluster.kill(dead)
    add_joiner(cluster, "n4")
    await cluster.start("n4")

    stop = trio.Event()
    results: dict[str, Any] = {"ok": 0, "failed": []}

    async def writer() -> None:
        c = cluster.client(client_id="replace-load")
        c.only = [n for n in cluster.ids if n != dead]
        seq = 0
        while not stop.is_set():
            seq += 1
            r = await c.call("MAP_PUT", name="m", key=f"k{seq}", value=b"v", seq=seq,
                             retry_unknown=True)
            if r["s"] == OK:
                results["ok"] += 1
            else:
                results["failed"].append(r)
            await trio.sleep(0.01)

    old_cert = cluster.pki.dir / f"{dead}.pem"
    async with trio.open_nursery() as ns:
        ns.start_soon(writer)
        await trio.sleep(0.5)
        p = await loomctl(cluster, "-o", "json", "members", "replace", dead, "--with", "n4",
                          "--peer-addr", peer_addr(cluster, "n4"), "--old-cert", str(old_cert))
        await trio.sleep(0.5)
        stop.set()
    out = json.loads(p.stdout)["result"]
    print("members replace:", out, "writes ok:", results["ok"])
    assert out["steps"] == ["n4 added as a learner", f"{dead} removed", "n4 promoted to voter"]
    serial = x509.load_pem_x509_certificate(old_cert.read_bytes()).serial_number
    assert out["denied_serial"] == f"{serial:x}"
    assert results["failed"] == [] and results["ok"] > 0
    stay = sorted(n for n in cluster.nodes if n != dead)
    for nid in stay:
        await wait_members(cluster, nid, stay, [])
    await cluster.wait_converged(stay)

    # The dead member comes back with its still-valid certificate: it is not let in.
    await cluster.start(dead)
    for _ in range(20):
        await trio.sleep(0.1)
    for nid in stay:
        await wait_members(cluster, nid, stay, [])

    # Run again (as after an interruption), it finds nothing left to do.
    p = await loomctl(cluster, "-o", "json", "members", "replace", dead, "--with", "n4",
                      "--peer-addr", peer_addr(cluster, "n4"))
    assert json.loads(p.stdout)["result"]["steps"] == []

    # Replacing a node that is not a member is refused before anything changes.
    p = await loomctl(cluster, "members", "replace", "n9", "--with", "n5", "--peer-addr",
                      "127.0.0.1:1", check=False)
    assert p.returncode == 2 and b"n9 is not a member" in p.stderr, p
