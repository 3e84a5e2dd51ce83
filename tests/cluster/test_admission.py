"""Peer admission at process level (A1, A2, A7 complement): a node that is not a member, and a
node whose certificate comes from another CA, cannot join or disturb a running cluster."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from loom.node.config import TLSConfig, to_toml
from loom.security import devpki
from tests.cluster.conftest import Cluster, free_ports

pytestmark = pytest.mark.slow


def issue(ca_pem: Path, ca_key: Path, out: Path, name: str) -> None:
    ca = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    key = serialization.load_pem_private_key(ca_key.read_bytes(), None)
    cert, k = devpki.issue_cert(ca, key, role="node", name=name)  # type: ignore[arg-type]
    devpki.write_cert(out / f"{name}.pem", cert)
    devpki.write_key(out / f"{name}.key", k)


async def test_non_member_and_foreign_ca_node_cannot_join_or_disturb(
        cluster: Cluster, tmp_path: Path) -> None:
    leader = await cluster.wait_leader()
    c = cluster.client()
    before = await cluster.wait_converged()
    term = before[leader]["term"]
    members = [m["id"] for m in before[leader]["members"]]

    # n9: a valid node certificate from the cluster's CA, not a member.
    d9 = tmp_path / "n9"
    d9.mkdir()
    issue(cluster.pki.ca, cluster.pki.dir / "ca.key", d9, "n9")
    # A rogue "n1": a node certificate named n1 from another CA (which it also trusts).
    dr = tmp_path / "rogue"
    dr.mkdir()
    oca, oca_key = devpki.new_ca(common_name="Rogue CA")
    devpki.write_cert(dr / "ca.pem", oca)
    devpki.write_key(dr / "ca.key", oca_key)
    issue(dr / "ca.pem", dr / "ca.key", dr, "n1")

    real = {nid: f"127.0.0.1:{n.peer_port}" for nid, n in cluster.nodes.items()}
    p9c, p9p, prc, prp = free_ports(4)
    cfg9 = replace(cluster.config_for("n1"), node_id="n9", data_dir=d9 / "data",
                   client_listen=f"127.0.0.1:{p9c}", peer_listen=f"127.0.0.1:{p9p}",
                   peers={**real, "n9": f"127.0.0.1:{p9p}"},
                   tls=TLSConfig(ca=cluster.pki.ca, cert=d9 / "n9.pem", key=d9 / "n9.key"))
    (d9 / "n9.toml").write_text(to_toml(cfg9), encoding="utf-8")
    cfgr = replace(cluster.config_for("n1"), data_dir=dr / "data",
                   client_listen=f"127.0.0.1:{prc}", peer_listen=f"127.0.0.1:{prp}",
                   peers={**real, "n1": f"127.0.0.1:{prp}"},
                   tls=TLSConfig(ca=dr / "ca.pem", cert=dr / "n1.pem", key=dr / "n1.key"))
    (dr / "n1.toml").write_text(to_toml(cfgr), encoding="utf-8")
    for d, name in ((d9, "n9"), (dr, "n1")):  # intruders found clusters of their own
        cluster.extra_procs.append(await cluster.spawn(d / f"{name}.toml", d / f"{name}.log",
                                                       "--initial-cluster-state", "new"))

    # Let them try for many election timeouts (elections here take 200..400 ms).
    for _ in range(40):
        await trio.sleep(0.1)
        assert all(p.returncode is None for p in cluster.extra_procs), "an intruder exited"
    for i in range(10):  # the cluster keeps serving meanwhile
        assert (await c.call("MAP_PUT", name="m", key=f"k{i}", value=b"v"))["s"] == 0

    after = await cluster.wait_converged()
    assert after[leader]["role"] == "leader"
    assert {s["term"] for s in after.values()} == {term}, "an intruder disturbed the term"
    assert [m["id"] for m in after[leader]["members"]] == members
    logs = {nid: n.log_text() for nid, n in cluster.nodes.items()}
    assert any("refused connection" in t and "(n9): not a member" in t for t in logs.values()), \
        "no node logged refusing n9"
    assert any("refused connection" in t and "tls handshake failed" in t
               for t in logs.values()), "no node logged refusing the foreign-CA n1"
    n9_log = (d9 / "n9.log").read_text(encoding="utf-8")
    assert "leader (leader n9" not in n9_log
    rogue_log = (dr / "n1.log").read_text(encoding="utf-8")
    assert "leader (leader n1" not in rogue_log
    n_refused = sum(t.count("refused connection") for t in logs.values())
    # Every refusal is counted in NODE_STATS, logged or not (log lines are rate-limited).
    counted = not_member = 0
    for nid in cluster.nodes:
        st = await cluster.stats(nid)
        assert st is not None and "peer" in st, st
        counted += st["peer"]["refused"]
        not_member += st["peer"]["refused_by_reason"].get("not a member", 0)
    assert counted >= n_refused > 0 and not_member > 0, (counted, n_refused, not_member)
    print(f"intruders ran 4 s: term stayed {term}; {n_refused} refusals logged")
