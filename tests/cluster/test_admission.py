"""Peer admission at process level (A1, A2, A7 complement): a node that is not a member, and a
node whose certificate comes from another CA, cannot join or disturb a running cluster."""

from __future__ import annotations

import re
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


# The raft driver logs every role or leader change with the term it happens in.
SOFT_STATE = re.compile(r"loom\.raft: (\w+): (\w+) \(leader (\w+), term (\d+)\)")


def terms_not_campaigned_by_members(logs: dict[str, str], since: int) -> dict[int, list[str]]:
    """Terms above `since` that some member entered although no member campaigned in them
    (with the log lines that show them): a term only an outsider's message could have raised.

    On a loaded machine a member may time out and win an ordinary election at any moment, so
    the term moving is no evidence of an intruder; a term no member asked for is."""
    campaigned: set[int] = set()
    entered: dict[int, list[str]] = {}
    for text in logs.values():
        for m in SOFT_STATE.finditer(text):
            role, term = m.group(2), int(m.group(4))
            if role == "candidate":
                campaigned.add(term)
            if term > since:
                entered.setdefault(term, []).append(m.group(0))
    return {t: lines for t, lines in entered.items() if t not in campaigned}


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

    # Let them try for many election timeouts (elections here take 200..400 ms), and until
    # both were refused at least once (a loaded machine starts them slowly), at most 30 s.
    def refused_both() -> bool:
        text = "".join(n.log_text() for n in cluster.nodes.values())
        return ("(n9): not a member" in text and "tls handshake failed" in text)

    for i in range(300):
        await trio.sleep(0.1)
        assert all(p.returncode is None for p in cluster.extra_procs), "an intruder exited"
        if i >= 40 and refused_both():
            break
    for i in range(10):  # the cluster keeps serving meanwhile
        assert (await c.call("MAP_PUT", name="m", key=f"k{i}", value=b"v"))["s"] == 0

    after = await cluster.wait_converged()
    logs = {nid: n.log_text() for nid, n in cluster.nodes.items()}
    # The term may have moved by an ordinary election (a member stalled by a busy machine
    # timed out): that is no disturbance. What an intruder could do is raise a term no member
    # campaigned in, or be followed as leader; neither may appear in the members' own logs.
    assert terms_not_campaigned_by_members(logs, term) == {}, "an intruder disturbed the term"
    leaders_seen = {m.group(3) for t in logs.values() for m in SOFT_STATE.finditer(t)}
    assert leaders_seen <= set(members) | {"None"}, leaders_seen
    new_leader = next(iter({s["leader"] for s in after.values()}))
    assert new_leader in members and after[new_leader]["role"] == "leader"
    assert len({s["term"] for s in after.values()}) == 1, after
    assert [m["id"] for m in after[new_leader]["members"]] == members
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
    end = after[new_leader]["term"]
    print(f"intruders ran 4 s: term {term} -> {end} (member elections only); "
          f"{n_refused} refusals logged")


def test_term_check_tells_an_outsiders_term_from_a_members_election() -> None:
    """The check above can fail: a term a member entered without any member campaigning."""
    line = "2026-01-01 00:00:00,000 INFO loom.raft: {}: {} (leader {}, term {})\n"
    election = {"n1": line.format("n1", "candidate", "None", 3)
                + line.format("n1", "leader", "n1", 3),
                "n2": line.format("n2", "follower", "None", 3)
                + line.format("n2", "follower", "n1", 3)}
    assert terms_not_campaigned_by_members(election, 2) == {}
    raised = {**election, "n3": line.format("n3", "follower", "None", 7)}
    assert list(terms_not_campaigned_by_members(raised, 2)) == [7]
    assert terms_not_campaigned_by_members(raised, 7) == {}
