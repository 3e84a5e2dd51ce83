"""Membership changes on real processes: a joining node is added as a learner, catches up, is
promoted and takes over leadership; a follower is removed and, still running with a valid
certificate, cannot disturb the cluster nor be added again; refusals (a learner that has not
caught up, a non-admin principal); and `loomctl` against a live cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from loom.node.config import TLSConfig, to_toml
from loom.security import devpki
from tests.cluster.conftest import OK, Client, Cluster, ClusterFactory, NodeProc, free_ports

pytestmark = pytest.mark.slow

BAD_REQUEST, FORBIDDEN, CONFLICT = 1, 3, 5


def issue_node_cert(cluster: Cluster, out: Path, name: str) -> None:
    ca = x509.load_pem_x509_certificate(cluster.pki.ca.read_bytes())
    ca_key = serialization.load_pem_private_key((cluster.pki.dir / "ca.key").read_bytes(), None)
    cert, key = devpki.issue_cert(ca, ca_key, role="node", name=name,  # type: ignore[arg-type]
                                  dns=("localhost",), ips=("127.0.0.1",))
    devpki.write_cert(out / f"{name}.pem", cert)
    devpki.write_key(out / f"{name}.key", key)


def add_joiner(cluster: Cluster, nid: str) -> NodeProc:
    """Register `nid` with the harness (so it is started, observed, followed on NOT_LEADER and
    stopped like the others) with its own certificate and a `join = true` configuration whose
    peers map lists every node of the cluster, itself included."""
    client_port, peer_port = free_ports(2)
    n = NodeProc(nid, client_port, peer_port, cluster.root / nid)
    n.dir.mkdir(parents=True, exist_ok=True)
    issue_node_cert(cluster, n.dir, nid)
    cluster.nodes[nid] = n
    peers = {o: f"127.0.0.1:{p.peer_port}" for o, p in cluster.nodes.items()}
    cfg = replace(cluster.config_for(cluster.ids[0]), node_id=nid, data_dir=n.data_dir,
                  client_listen=n.client_addr, peer_listen=f"127.0.0.1:{peer_port}",
                  peers=peers, join=True,
                  tls=TLSConfig(ca=cluster.pki.ca, cert=n.dir / f"{nid}.pem",
                                key=n.dir / f"{nid}.key"))
    n.config.write_text(to_toml(cfg), encoding="utf-8")
    return n


def peer_addr(cluster: Cluster, nid: str) -> str:
    return f"127.0.0.1:{cluster.nodes[nid].peer_port}"


def voters(members: list[dict[str, Any]]) -> list[str]:
    return sorted(m["id"] for m in members if m["voter"])


def learners(members: list[dict[str, Any]]) -> list[str]:
    return sorted(m["id"] for m in members if not m["voter"])


async def put(c: Client, key: str, value: bytes) -> None:
    r = await c.call("MAP_PUT", name="m", key=key, value=value, retry_unknown=True)
    assert r["s"] == OK, (key, r)


async def wait_caught_up(cluster: Cluster, nid: str, timeout: float = 30.0
                         ) -> dict[str, Any]:
    """`nid` has applied at least the leader's commit index as it was when this was called
    (whichever node leads then: a loaded machine may elect another one at any time)."""
    leader = await cluster.wait_leader()
    st = await cluster.status(leader)
    assert st is not None, leader
    target = st["commit_index"]
    last: dict[str, Any] | None = None
    with trio.move_on_after(timeout):
        for _ in range(600):
            last = await cluster.status(nid)
            if last is not None and last["applied_index"] >= target:
                return last
            await trio.sleep(0.1)
    raise AssertionError(f"{nid} did not catch up to index {target} within {timeout} s: {last}")


async def wait_members(cluster: Cluster, nid: str, want_voters: list[str],
                       want_learners: list[str], timeout: float = 20.0) -> dict[str, Any]:
    last: dict[str, Any] | None = None
    with trio.move_on_after(timeout):
        for _ in range(400):
            r = await cluster.request(nid, "MEMBER_LIST")
            if r is not None and r["s"] == OK:
                last = r["r"]
                if voters(last["members"]) == want_voters and \
                        learners(last["members"]) == want_learners:
                    return last
            await trio.sleep(0.1)
    raise AssertionError(f"{nid}: members never became voters={want_voters} "
                         f"learners={want_learners}: {last}")


async def remove_follower_and_check(cluster: Cluster, c: Client, gone: str) -> str:
    """MEMBER_REMOVE `gone` (a follower); the removed node's process, still running with a
    valid certificate, neither disturbs the term nor rejoins, and its id cannot be added
    again. Returns the leader the remaining members agree on."""
    stay = sorted(nid for nid, n in cluster.nodes.items() if n.running and nid != gone)
    r = await c.call("MEMBER_REMOVE", node=gone)
    assert r["s"] == OK, r
    c.only = stay  # the removed node still answers clients; they are sent to the members
    for nid in stay:
        await wait_members(cluster, nid, stay, [])
    sts = await cluster.wait_converged(stay)
    term = min(s["term"] for s in sts.values())
    for _ in range(30):  # many election timeouts of the removed node (200..400 ms each)
        await trio.sleep(0.1)
        assert cluster.nodes[gone].running, f"the removed {gone} exited"
    for i in range(5):
        await put(c, f"after-remove-{i}", b"r")
    after = await cluster.wait_converged(stay)
    (leader,) = {s["leader"] for s in after.values()}
    assert leader in stay and after[leader]["role"] == "leader", after
    # Every message of the removed node carries its own term (a pre-vote's term+1 changes
    # nobody's), so it can raise a member's term only from a term above it. It is still at
    # most in the members' term of its removal: any later term is the members' own doing (a
    # stall of the whole machine may make them elect again, which this test is not about).
    gone_status = None
    for _ in range(10):  # it answers for itself (bounded: each try is at most 2 s)
        if (gone_status := await cluster.status(gone)) is not None:
            break
    assert gone_status is not None, f"the removed {gone} does not answer CLUSTER_STATUS"
    assert gone_status["role"] != "leader", gone_status  # it leads nobody
    assert gone_status["term"] <= term, \
        f"the removed {gone} entered term {gone_status['term']} (members were in {term}): {after}"
    logs = "".join(cluster.nodes[nid].log_text() for nid in stay)
    assert f"({gone}): not a member" in logs or f"({gone}): no longer a member" in logs, \
        f"no member logged refusing the removed {gone}"

    # A removed id stays refused: adding it again is refused, as learner or voter, unless an
    # operator re-admits it explicitly (see test_remove_follower_...).
    for learner in (True, False):
        r = await c.call("MEMBER_ADD", node=gone, peer_addr=peer_addr(cluster, gone),
                         learner=learner)
        assert r["s"] == CONFLICT, r
    for nid in stay:
        await wait_members(cluster, nid, stay, [])
    return leader


async def test_grow_promote_transfer_then_remove_a_follower(cluster: Cluster) -> None:
    c = cluster.client()
    leader = await cluster.wait_leader()
    for i in range(20):
        await put(c, f"before-{i}", b"b%d" % i)

    add_joiner(cluster, "n4")
    await cluster.start("n4")
    r = await c.call("MEMBER_ADD", node="n4", peer_addr=peer_addr(cluster, "n4"), learner=True)
    assert r["s"] == OK, r
    listed = await wait_members(cluster, leader, ["n1", "n2", "n3"], ["n4"])
    assert {m["id"]: m["peer_addr"] for m in listed["members"]}["n4"] == \
        peer_addr(cluster, "n4")

    st4 = await wait_caught_up(cluster, "n4", timeout=15)
    assert st4["role"] == "learner", st4
    for i in range(20):
        await put(c, f"after-add-{i}", b"a%d" % i)
    await wait_caught_up(cluster, "n4")

    r = await c.call("MEMBER_PROMOTE", node="n4")
    assert r["s"] == OK, r
    for nid in cluster.ids:
        await wait_members(cluster, nid, ["n1", "n2", "n3", "n4"], [])
    await wait_members(cluster, "n4", ["n1", "n2", "n3", "n4"], [])

    await cluster.transfer_leadership(c, "n4")
    for i in range(10):
        await put(c, f"under-n4-{i}", b"u%d" % i)
    assert c.node == "n4", f"writes went to {c.node}"
    # n4 serves everything written before it joined, as a learner, and as leader.
    for key, want in ([(f"before-{i}", b"b%d" % i) for i in range(20)]
                      + [(f"after-add-{i}", b"a%d" % i) for i in range(20)]
                      + [(f"under-n4-{i}", b"u%d" % i) for i in range(10)]):
        got = await cluster.request("n4", "MAP_GET", timeout=10, name="m", key=key)
        assert got is not None and got["s"] == OK and got["r"] == want, (key, got)

    # Remove an original follower (n4 leads now); it keeps running with its certificate.
    await remove_follower_and_check(cluster, c, gone=next(n for n in cluster.ids if n != leader))


async def test_removed_follower_cannot_disturb_and_stays_refused_until_readmitted(
        cluster: Cluster) -> None:
    c = cluster.client()
    leader = await cluster.wait_leader()
    for i in range(10):
        await put(c, f"k{i}", b"v%d" % i)
    gone = next(nid for nid in cluster.ids if nid != leader)
    leader = await remove_follower_and_check(cluster, c, gone=gone)
    for i in range(10):  # nothing was lost on the way from three voters to two
        r = await c.call("MAP_GET", name="m", key=f"k{i}", retry_unknown=True)
        assert r["s"] == OK and r["r"] == b"v%d" % i, r
    # Leadership still moves between the remaining voters.
    to = next(nid for nid in cluster.ids if nid not in (leader, gone))
    await cluster.transfer_leadership(c, to)
    # Counted where it began (the leader then; a retry may count again, elsewhere too).
    began = 0
    for nid in (leader, to):
        stats = await cluster.stats(nid)
        assert stats is not None, nid
        began += stats["log"]["transfers_started"]
    assert began >= 1, f"no transfer began on {leader} or {to}"
    await put(c, "under-new-leader", b"x")

    # An operator re-admits the removed node (still running, with its old data): only as a
    # learner, only by saying so, and only a node that was removed.
    r = await c.call("MEMBER_ADD", node=gone, peer_addr=peer_addr(cluster, gone), learner=False,
                     readmit=True)
    assert r["s"] == BAD_REQUEST, r
    r = await c.call("MEMBER_ADD", node=leader, peer_addr=peer_addr(cluster, leader),
                     readmit=True)
    assert r["s"] == CONFLICT and "was not removed" in r["e"]["msg"], r
    r = await c.call("MEMBER_ADD", node=gone, peer_addr=peer_addr(cluster, gone), readmit=True)
    assert r["s"] == OK, r
    await wait_members(cluster, to, sorted([leader, to]), [gone])
    await put(c, "after-readmit", b"y")
    await wait_caught_up(cluster, gone, timeout=20)
    r = await c.call("MEMBER_PROMOTE", node=gone, retry_unknown=True)
    assert r["s"] == OK, r
    for nid in cluster.ids:
        await wait_members(cluster, nid, sorted(cluster.ids), [])
    await cluster.wait_converged()
    await cluster.transfer_leadership(c, gone)  # it can even lead
    got = await cluster.request(gone, "MAP_GET", timeout=10, name="m", key="after-readmit")
    assert got is not None and got["s"] == OK and got["r"] == b"y", got


async def test_promote_of_lagging_learner_conflicts_and_non_admin_is_forbidden(
        cluster: Cluster) -> None:
    c = cluster.client()
    leader = await cluster.wait_leader()
    for i in range(5):
        await put(c, f"k{i}", b"v")

    # A learner whose process is not running cannot have caught up.
    (unused,) = free_ports(1)
    r = await c.call("MEMBER_ADD", node="n5", peer_addr=f"127.0.0.1:{unused}")
    assert r["s"] == OK, r
    await wait_members(cluster, leader, ["n1", "n2", "n3"], ["n5"])
    r = await c.call("MEMBER_PROMOTE", node="n5")
    assert r["s"] == CONFLICT, r
    # Promoting a node that is not a learner at all is refused the same way.
    r = await c.call("MEMBER_PROMOTE", node="n6")
    assert r["s"] == CONFLICT, r
    listed = await wait_members(cluster, leader, ["n1", "n2", "n3"], ["n5"])
    assert len(listed["members"]) == 4

    # The cluster keeps committing with an unreachable learner.
    for i in range(5):
        await put(c, f"later{i}", b"v")

    # A principal without the admin role changes nothing.
    w = cluster.client("writer")
    for op, body in (("MEMBER_ADD", {"node": "n7", "peer_addr": f"127.0.0.1:{unused}"}),
                     ("MEMBER_PROMOTE", {"node": "n5"}),
                     ("MEMBER_REMOVE", {"node": "n5"}),
                     ("LEADER_TRANSFER", {})):
        r = await w.call(op, **body)
        assert r["s"] == FORBIDDEN, (op, r)
    await wait_members(cluster, leader, ["n1", "n2", "n3"], ["n5"])
    # No transfer began. (Not "the leader is unchanged": a stall of the whole machine may
    # elect another leader, which this test is not about.)
    stats = await cluster.stats(leader)
    assert stats is not None and stats["log"]["transfers_started"] == 0, stats


async def run_loomctl(cluster: Cluster, *args: str) -> Any:
    admin_pem, admin_key = cluster.pki.pair("admin")
    endpoints = ",".join(n.client_addr for n in cluster.nodes.values())
    cmd = [sys.executable, "-m", "loom.cli.loomctl", "--endpoints", endpoints,
           "--ca", str(cluster.pki.ca), "--cert", str(admin_pem), "--key", str(admin_key),
           *args, "-o", "json"]
    with trio.fail_after(60):
        p = await trio.run_process(cmd, stdin=subprocess.DEVNULL, capture_stdout=True,
                                   capture_stderr=True, check=False)
    out = p.stdout.decode("utf-8", "replace")
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 0, f"loomctl {' '.join(args)} exited {p.returncode}:\n{out}\n{err}"
    try:
        doc = json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"loomctl {' '.join(args)}: not JSON:\n{out}\n{err}") from None
    assert isinstance(doc, dict) and set(doc) == {"result"}, doc  # one {"result": ...} object
    return doc["result"]


async def test_loomctl_members_list_and_cluster_status(cluster_factory: ClusterFactory
                                                       ) -> None:
    cluster = await cluster_factory()
    leader = await cluster.wait_leader()
    await cluster.wait_converged()

    members = await run_loomctl(cluster, "members", "list")
    print("loomctl members list:", json.dumps(members)[:600])
    rows = members["members"]
    assert sorted(m["id"] for m in rows) == ["n1", "n2", "n3"]
    assert all(m["voter"] for m in rows), rows
    assert {m["id"]: m["peer_addr"] for m in rows} == \
        {nid: peer_addr(cluster, nid) for nid in cluster.ids}

    status = await run_loomctl(cluster, "cluster", "status")
    print("loomctl cluster status:", json.dumps(status)[:1200])
    assert isinstance(status, list), status
    by_node = {s.get("node"): s for s in status}
    assert sorted(by_node) == ["n1", "n2", "n3"], status  # every endpoint answered for itself
    assert {nid: s["endpoint"] for nid, s in by_node.items()} == \
        {nid: n.client_addr for nid, n in cluster.nodes.items()}
    assert [nid for nid, s in by_node.items() if s["role"] == "leader"] == [leader], status
    for s in status:
        assert s["leader"] == leader, s
        assert sorted(m["id"] for m in s["members"]) == ["n1", "n2", "n3"], s
