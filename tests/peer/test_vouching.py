"""Vouching on the real peer plane (loom/security/peertrust.py): real transports, real mTLS.

n3 lags: its own configuration is n1 n2 n3 at index 10. n1 vouches, over its real link, for
the configuration at index 20 that adds n4; n3 then admits n4. A never-member holding a valid
node certificate of the cluster CA is refused all the same, and cannot vouch for itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from loom.node.peer import PeerLimits, PeerTransport
from loom.raft.messages import Heartbeat, RequestVote
from loom.security.peertrust import PeerTrust, Vouch
from loom.security.tls import peer_client_context, peer_server_context
from loom.wire import catalog
from loom.wire.codec import encode
from tests.conftest import PKI
from tests.peer.conftest import (
    CLUSTER,
    TD,
    Inbox,
    RawPeer,
    _scoped,
    client_ctx,
    node_cert,
    start_peer,
    wait_until,
)

HELLO = catalog.BY_NAME["PEER_HELLO"].opcode
MEMBERS = catalog.BY_NAME["PEER_MEMBERS"].opcode
VOTE = catalog.BY_NAME["RAFT_REQUEST_VOTE"].opcode


@pytest.fixture(scope="module")
def n4(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """n4.pem / n4.key: the node certificate of the member n3 does not know yet."""
    return node_cert(pki, tmp_path_factory.mktemp("n4"), "n4")


@dataclass
class Lagging:
    """n3: a transport whose admission is a PeerTrust fed by the vouches it hears."""

    t: PeerTransport
    trust: PeerTrust
    inbox: Inbox
    heard: list[tuple[str, Vouch]] = field(default_factory=list)


async def start_lagging(nursery: trio.Nursery, pki: PKI) -> Lagging:
    pem, key = pki.pair("n3")
    trust = PeerTrust("n3")
    trust.update({"n1", "n2", "n3"}, {"n5"}, 10)
    inbox = Inbox()
    lag: Lagging

    def on_members(node: str, vouch: Vouch) -> None:
        lag.heard.append((node, vouch))
        trust.hear(node, vouch)

    t = PeerTransport(
        node_id="n3", cluster=CLUSTER, listen="127.0.0.1:0", peers={},
        client_addr="client-of-n3:7000", server_ctx=peer_server_context(pki.ca, pem, key),
        client_ctx=peer_client_context(pki.ca, pem, key), trust_domain=TD,
        is_member=trust.admits, on_message=inbox, limits=PeerLimits(),
        is_removed=lambda n: n == "n5", on_members=on_members)
    lag = Lagging(t, trust, inbox)
    await nursery.start(_scoped, t)
    return lag


async def start_node(nursery: trio.Nursery, pki: PKI, d: Path, name: str, to: str
                     ) -> PeerTransport:
    """A node with its own certificate (outside the session PKI) linked to `to`."""
    pem, key = d / f"{name}.pem", d / f"{name}.key"
    t = PeerTransport(
        node_id=name, cluster=CLUSTER, listen="127.0.0.1:0", peers={"n3": to},
        client_addr=f"client-of-{name}:7000", server_ctx=peer_server_context(pki.ca, pem, key),
        client_ctx=peer_client_context(pki.ca, pem, key), trust_domain=TD,
        is_member=lambda n: True, on_message=Inbox(), limits=PeerLimits())
    await nursery.start(_scoped, t)
    return t


def hb(frm: str) -> Heartbeat:
    return Heartbeat(to="n3", frm=frm, term=3, commit=0, seq=1)


async def test_a_member_vouches_and_the_lagging_node_admits_the_new_member(
        nursery: trio.Nursery, pki: PKI, n4: Path) -> None:
    n3 = await start_lagging(nursery, pki)
    addr3 = f"127.0.0.1:{n3.t.port}"
    with trio.fail_after(20):
        # n4 dials first: n3's own configuration does not name it.
        t4 = await start_node(nursery, pki, n4, "n4", addr3)
        await wait_until(lambda: n3.t.statistics().refused_by_reason.get("not a member", 0) > 0)
        assert n3.inbox.msgs == []

        # n1, a member, tells n3 its committed configuration (its link sends PEER_MEMBERS
        # right after PEER_HELLO).
        n1 = await start_peer(nursery, pki, "n1", peers={"n3": addr3})
        vouch = Vouch(20, {"n1": "", "n2": "", "n3": addr3, "n4": f"127.0.0.1:{t4.port}"})
        n1.t.set_vouch(vouch)
        await wait_until(lambda: n3.trust.admits("n4"))
        assert n3.heard == [("n1", vouch)]
        assert n3.trust.vouched() == {"n4": f"127.0.0.1:{t4.port}"}

        # n4's link redials (backing off) and is admitted: its messages are stepped.
        t4.send([hb("n4")])
        await n3.inbox.wait(lambda m: hb("n4") in m)

        # A changed configuration reaches the peer on the open link too.
        newer = Vouch(21, {**vouch.members, "n6": ""})
        n1.t.set_vouch(newer)
        await wait_until(lambda: ("n1", newer) in n3.heard)
        assert n3.trust.admits("n6")

        # n3's own log reaches 21 without n4 (say n4 was removed): the vouch retires and n4's
        # open connection is closed at its next frame.
        n3.trust.update({"n1", "n2", "n3"}, {"n4", "n5"}, 21)
        assert not n3.trust.admits("n4") and not n3.trust.admits("n6")
        before = n3.t.statistics().refused
        t4.send([Heartbeat(to="n3", frm="n4", term=3, commit=0, seq=2)])
        await wait_until(lambda: n3.t.statistics().refused > before)
        assert Heartbeat(to="n3", frm="n4", term=3, commit=0, seq=2) not in n3.inbox.msgs


async def test_a_never_member_with_a_valid_node_certificate_is_refused(
        nursery: trio.Nursery, pki: PKI, n9: Path) -> None:
    n3 = await start_lagging(nursery, pki)
    addr3 = f"127.0.0.1:{n3.t.port}"
    with trio.fail_after(20):
        n1 = await start_peer(nursery, pki, "n1", peers={"n3": addr3})
        n1.t.set_vouch(Vouch(20, {"n1": "", "n2": "", "n3": "", "n4": ""}))
        await wait_until(lambda: n3.trust.admits("n4"))
        heard = n3.trust.statistics().heard

        # n9: a valid node certificate from the cluster's CA, in no configuration. It greets,
        # vouches for itself at a far newer index and asks for a vote.
        raw = await RawPeer.connect(n3.t.port, client_ctx(pki.ca, n9 / "n9.pem", n9 / "n9.key"))
        try:
            vote = RequestVote(to="n3", frm="n9", term=99, last_index=99, last_term=99,
                               transfer=False)
            data = encode({"v": 1, "id": 1, "op": HELLO,
                           "b": {"node": "n9", "client_addr": "x:1", "cluster": CLUSTER}})
            data += encode({"v": 1, "id": 2, "op": MEMBERS,
                            "b": Vouch(999, {"n1": "", "n3": "", "n9": "x:1"}).body()})
            data += encode({"v": 1, "id": 3, "op": VOTE, "b": {"msg": vote.to_wire()}})
            await raw.try_send(data)
            await raw.wait_closed()
        finally:
            await raw.aclose()
        await wait_until(lambda: n3.t.statistics().refused_by_reason.get("not a member", 0) > 0)
        assert not n3.trust.admits("n9")
        assert n3.trust.statistics().heard == heard  # nothing of n9's was read
        assert n3.inbox.msgs == []


async def test_a_removed_id_stays_refused_whoever_vouches_for_it(
        nursery: trio.Nursery, pki: PKI) -> None:
    n3 = await start_lagging(nursery, pki)  # n5 is in n3's own removed set
    addr3 = f"127.0.0.1:{n3.t.port}"
    with trio.fail_after(20):
        n1 = await start_peer(nursery, pki, "n1", peers={"n3": addr3})
        n1.t.set_vouch(Vouch(30, {"n1": "", "n3": "", "n5": ""}))
        await wait_until(lambda: n3.trust.statistics().vouch_index == 30)
        assert not n3.trust.admits("n5")
