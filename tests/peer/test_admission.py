"""Peer ring admission (SECURITY-CATALOGUE group A) against a real peer listener.

Each adversary completes (or fails) a real TLS handshake, then tries to get a Raft message
stepped. The safe outcome is always the same: refused and counted, nothing delivered.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
from pathlib import Path

import cbor2
import pytest
import trio

from loom.node.peerlink import PeerLimits
from loom.node.ratelog import RateLimitedLog
from loom.raft.messages import Heartbeat, RequestVote
from loom.wire import catalog
from loom.wire.codec import encode
from tests.conftest import PKI
from tests.peer.conftest import CLUSTER, Peer, RawPeer, client_ctx, start_peer, wait_until

HELLO = catalog.BY_NAME["PEER_HELLO"].opcode
HEARTBEAT = catalog.BY_NAME["RAFT_HEARTBEAT"].opcode
VOTE = catalog.BY_NAME["RAFT_REQUEST_VOTE"].opcode


def hello(node: str, cluster: str = CLUSTER) -> dict[str, str]:
    return {"node": node, "client_addr": "x:1", "cluster": cluster}


def hb(frm: str, to: str = "n1", seq: int = 1) -> dict[str, object]:
    return {"msg": Heartbeat(to=to, frm=frm, term=5, commit=0, seq=seq).to_wire()}


async def attempt(target: Peer, ctx: ssl.SSLContext, claim: str = "n2") -> None:
    """Connect, claim to be `claim`, send a vote request, wait for the listener to hang up."""
    raw = await RawPeer.connect(target.t.port, ctx)
    try:
        vote = RequestVote(to="n1", frm=claim, term=99, last_index=9, last_term=9, transfer=False)
        data = encode({"v": 1, "id": 1, "op": HELLO, "b": hello(claim)})
        data += encode({"v": 1, "id": 2, "op": VOTE, "b": {"msg": vote.to_wire()}})
        await raw.try_send(data)
        await raw.wait_closed()
    finally:
        await raw.aclose()


async def refused_with(p: Peer, reason: str, before: int) -> None:
    await wait_until(lambda: p.t.statistics().refused > before)
    assert p.t.statistics().refused_by_reason.get(reason, 0) >= 1, p.t.statistics()
    assert p.inbox.msgs == []


# -- A1: no certificate, or a certificate from another CA ----------------------------------------
@pytest.mark.parametrize("kind", ["foreign-ca", "no-cert"])
async def test_a1_untrusted_or_missing_cert_refused(nursery: trio.Nursery, pki: PKI,
                                                    kind: str) -> None:
    p = await start_peer(nursery, pki, "n1")
    if kind == "foreign-ca":
        ctx = client_ctx(pki.ca, pki.other / "admin.pem", pki.other / "admin.key")
    else:
        ctx = client_ctx(pki.ca)
    with trio.fail_after(15):
        await attempt(p, ctx)
        await refused_with(p, "tls handshake failed", 0)


async def test_plaintext_and_tls12_refused(nursery: trio.Nursery, pki: PKI) -> None:
    p = await start_peer(nursery, pki, "n1")
    with trio.fail_after(15):
        tcp = await trio.open_tcp_stream("127.0.0.1", p.t.port)
        try:
            await tcp.send_all(encode({"v": 1, "id": 1, "op": HELLO, "b": hello("n2")}))
            with trio.fail_after(10):
                while await tcp.receive_some(4096):
                    pass  # the listener answers with a TLS alert at most, then closes
        except (trio.BrokenResourceError, OSError):
            pass
        finally:
            await tcp.aclose()
        await refused_with(p, "tls handshake failed", 0)

        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        old.load_verify_locations(cafile=str(pki.ca))
        old.load_cert_chain(*map(str, pki.pair("n2")))
        raw = await RawPeer.connect(p.t.port, old)
        try:
            with pytest.raises((trio.BrokenResourceError, ssl.SSLError)):
                await raw.stream.do_handshake()
        finally:
            await raw.aclose()
        await refused_with(p, "tls handshake failed", 1)


async def test_connections_reset_at_once_leave_the_peer_listener_serving(
        nursery: trio.Nursery, pki: PKI) -> None:
    p = await start_peer(nursery, pki, "n1")
    q = await start_peer(nursery, pki, "n2", peers={"n1": p.addr})
    for i in range(30):  # reset (SO_LINGER 0) right after connect, half of them mid-record
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await trio.to_thread.run_sync(s.connect, ("127.0.0.1", p.t.port))
        if i % 2:
            s.send(b"\x16\x03\x01\x02\x00")
        s.close()
    with trio.fail_after(15):  # a real peer is still admitted
        await wait_until(lambda: p.stat("n2")["inbound"])
    assert q.stat("n1")["connected"]


# -- A2: a client or gateway certificate from the cluster CA ------------------------------------
@pytest.mark.parametrize("name", ["admin", "edge"])
async def test_a2_client_and_gateway_certs_are_not_peers(nursery: trio.Nursery, pki: PKI,
                                                         name: str) -> None:
    p = await start_peer(nursery, pki, "n1")
    with trio.fail_after(15):
        await attempt(p, client_ctx(pki.ca, *pki.pair(name)))
        await refused_with(p, "not a node identity", 0)


# -- A7: a non-member node, and a member that is removed ----------------------------------------
async def test_a7_non_member_node_refused(nursery: trio.Nursery, pki: PKI, n9: Path) -> None:
    p = await start_peer(nursery, pki, "n1")
    with trio.fail_after(15):
        await attempt(p, client_ctx(pki.ca, n9 / "n9.pem", n9 / "n9.key"), claim="n9")
        await refused_with(p, "not a member", 0)


async def test_a7_removed_member_refused(nursery: trio.Nursery, pki: PKI) -> None:
    n1 = await start_peer(nursery, pki, "n1")
    n2 = await start_peer(nursery, pki, "n2", peers={"n1": n1.addr})
    with trio.fail_after(15):
        n2.t.send([Heartbeat(to="n1", frm="n2", term=1, commit=0, seq=1)])
        await n1.inbox.wait(lambda m: len(m) == 1)
        n1.members.discard("n2")  # removed (e.g. MEMBER_REMOVE applied; the cert is still valid)
        n2.t.send([Heartbeat(to="n1", frm="n2", term=1, commit=0, seq=2)])
        # The open connection is closed at its next frame; every redial is refused.
        await wait_until(lambda: n1.t.statistics().refused_by_reason.get("not a member", 0)
                         >= 1)
        assert n1.t.statistics().refused_by_reason["no longer a member"] == 1
        n2.t.send([Heartbeat(to="n1", frm="n2", term=1, commit=0, seq=3)])
        await wait_until(lambda: n1.t.statistics().refused >= 3)
        assert [getattr(m, "seq", 0) for m in n1.inbox.msgs] == [1]
        assert n1.stat("n2")["refused"] >= 2


# -- A4: an authenticated peer speaking for another node ----------------------------------------
async def test_a4_forged_sender_dropped(nursery: trio.Nursery, pki: PKI,
                                        caplog: pytest.LogCaptureFixture) -> None:
    p = await start_peer(nursery, pki, "n1")
    caplog.set_level(logging.WARNING, logger="loom.peer")
    with trio.fail_after(15):
        raw = await RawPeer.connect(p.t.port, client_ctx(pki.ca, *pki.pair("n2")))
        try:
            await raw.send_frame(HELLO, hello("n2"))
            await raw.send_frame(HEARTBEAT, hb("n3", seq=1))  # claims to be n3 (say, the leader)
            await raw.send_frame(HEARTBEAT, hb("n2", to="n3", seq=2))  # not addressed to us
            await raw.send_frame(HEARTBEAT, hb("n2", seq=3))  # genuine
            await p.inbox.wait(lambda m: len(m) == 1)
        finally:
            await raw.aclose()
    assert p.inbox.msgs == [Heartbeat(to="n1", frm="n2", term=5, commit=0, seq=3)]
    assert p.stat("n2")["rejected"] == 2 and p.stat("n2")["received"] == 1
    assert any("frm='n3'" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("first", ["other-node", "other-cluster", "raft-first", "garbage"])
async def test_first_frame_must_be_matching_peer_hello(nursery: trio.Nursery, pki: PKI,
                                                       first: str) -> None:
    p = await start_peer(nursery, pki, "n1")
    frames = {
        "other-node": encode({"v": 1, "id": 1, "op": HELLO, "b": hello("n3")}),
        "other-cluster": encode({"v": 1, "id": 1, "op": HELLO, "b": hello("n2", "elsewhere")}),
        "raft-first": encode({"v": 1, "id": 1, "op": HEARTBEAT, "b": hb("n2")}),
        "garbage": b"\x00\x00\x00\x03abc",
    }
    with trio.fail_after(15):
        raw = await RawPeer.connect(p.t.port, client_ctx(pki.ca, *pki.pair("n2")))
        try:
            await raw.try_send(frames[first] + encode({"v": 1, "id": 2, "op": HEARTBEAT,
                                                       "b": hb("n2")}))
            await raw.wait_closed()
        finally:
            await raw.aclose()
        await refused_with(p, "bad PEER_HELLO", 0)
    assert p.t.client_addr_of("n2") is None
    assert p.stat("n2") == {}  # nothing of it was ever counted as contact


@pytest.mark.parametrize("bad", ["client-opcode", "unknown-field", "bad-msg", "kind-mismatch",
                                 "oversize", "trailing", "too-many-items"])
async def test_malformed_frame_closes_connection(nursery: trio.Nursery, pki: PKI,
                                                 bad: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="loom.peer")
    p = await start_peer(nursery, pki, "n1")
    ping = catalog.BY_NAME["PING"].opcode
    trailing = cbor2.dumps({"v": 1, "id": 2, "op": HEARTBEAT, "b": hb("n2")}) + b"\x00"
    frames = {
        "client-opcode": encode({"v": 1, "id": 2, "op": ping, "b": {}}),
        "unknown-field": encode({"v": 1, "id": 2, "op": HEARTBEAT, "b": hb("n2"), "h": {}}),
        "bad-msg": encode({"v": 1, "id": 2, "op": HEARTBEAT, "b": {"msg": {"kind": "x"}}}),
        "kind-mismatch": encode({"v": 1, "id": 2, "op": VOTE, "b": hb("n2")}),
        "oversize": (p.t.limits.max_frame + 1).to_bytes(4, "big"),
        "trailing": len(trailing).to_bytes(4, "big") + trailing,
        # 100,000 empty arrays in 100 KB: far within the frame limit, far beyond any Raft message
        "too-many-items": encode({"v": 1, "id": 2, "op": HEARTBEAT,
                                  "b": {"msg": [[] for _ in range(100_000)]}}),
    }
    with trio.fail_after(15):
        raw = await RawPeer.connect(p.t.port, client_ctx(pki.ca, *pki.pair("n2")))
        try:
            await raw.send_frame(HELLO, hello("n2"))
            await raw.try_send(frames[bad] + encode({"v": 1, "id": 3, "op": HEARTBEAT,
                                                     "b": hb("n2", seq=7)}))
            await raw.wait_closed()
        finally:
            await raw.aclose()
        await wait_until(lambda: p.t.statistics().malformed == 1)
    assert p.inbox.msgs == []
    assert p.t.client_addr_of("n2") == "x:1"
    if bad == "too-many-items":  # refused by counting, before cbor2 built anything
        assert any("a CBOR container of 100000 items" in r.getMessage() for r in caplog.records)


# -- A5: the server we dial is not the node we meant --------------------------------------------
async def test_a5_outbound_identity_mismatch_aborts(nursery: trio.Nursery, pki: PKI,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    n3 = await start_peer(nursery, pki, "n3")
    n1 = await start_peer(nursery, pki, "n1", peers={"n2": n3.addr})  # n2 "is" at n3's address
    caplog.set_level(logging.WARNING, logger="loom.peer")
    with trio.fail_after(15):
        n1.t.send([Heartbeat(to="n2", frm="n1", term=1, commit=0, seq=1)])
        await wait_until(lambda: n1.stat("n2")["aborted"] >= 2)  # and it keeps refusing
    st = n1.stat("n2")
    assert st["sent"] == 0 and st["connects"] == 0 and not st["connected"]
    assert n3.inbox.msgs == [] and n3.stat("n1") == {}
    assert any("expected node 'n2'" in r.getMessage() for r in caplog.records)


# -- refusal logging is bounded: anyone who reaches the port can cause a refusal ----------------
async def test_a_flood_of_refusals_writes_bounded_log_lines(
        nursery: trio.Nursery, pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    p = await start_peer(nursery, pki, "n1", limits=PeerLimits(log_burst=3, log_window_s=60))
    ctx = client_ctx(pki.ca, pki.dir / "admin.pem", pki.dir / "admin.key")  # a client cert
    caplog.set_level(logging.WARNING, logger="loom.peer")
    with trio.fail_after(30):
        for _ in range(12):
            await attempt(p, ctx)
        await wait_until(lambda: p.t.statistics().refused >= 12)
    st = p.t.statistics()
    lines = [r for r in caplog.records if "refused connection" in r.getMessage()]
    assert len(lines) == 3, [r.getMessage() for r in lines]  # the rest are counted, not logged
    assert st.refused == 12 and st.log_lines_suppressed == 9, st
    assert p.inbox.msgs == []


def test_suppressed_lines_are_reported_by_the_next_line_let_through(
        caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    rl = RateLimitedLog(logging.getLogger("loom.test.ratelog"), burst=2, window_s=10,
                        clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="loom.test.ratelog")
    for i in range(5):
        rl.warning("k", "line %d", i)
    rl.warning("other", "another key is not held back")
    now[0] = 10.0  # a new window
    rl.warning("k", "after the quiet spell")
    assert [r.getMessage() for r in caplog.records] == [
        "line 0", "line 1", "another key is not held back",
        "after the quiet spell (3 similar lines suppressed)"]
    assert rl.suppressed == 3
