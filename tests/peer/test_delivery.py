"""Three real transports on loopback with real mTLS: delivery, batching, restart, membership."""

from __future__ import annotations

import trio

from loom.raft.messages import AppendEntries, Heartbeat, HeartbeatResponse, RequestVote
from loom.raft.types import Entry, EntryType
from loom.wire import catalog
from tests.conftest import PKI
from tests.peer.conftest import CLUSTER, Peer, RawPeer, client_ctx, start_peer, wait_until


async def start_three(nursery: trio.Nursery, pki: PKI) -> dict[str, Peer]:
    ps = {n: await start_peer(nursery, pki, n) for n in ("n1", "n2", "n3")}
    addrs = {n: p.addr for n, p in ps.items()}  # includes each node itself: ignored
    for p in ps.values():
        p.t.set_peers(addrs)
    return ps


def ae(frm: str, to: str, i: int, size: int = 16) -> AppendEntries:
    e = Entry(term=1, index=i, type=EntryType.NORMAL, data=bytes([i % 256]) * size)
    return AppendEntries(to=to, frm=frm, term=1, index=i - 1, log_term=1, entries=(e,), commit=0)


async def test_three_transports_deliver(nursery: trio.Nursery, pki: PKI) -> None:
    ps = await start_three(nursery, pki)
    with trio.fail_after(15):
        ps["n1"].t.send([Heartbeat(to="n2", frm="n1", term=3, commit=0, seq=1),
                         Heartbeat(to="n3", frm="n1", term=3, commit=0, seq=1)])
        ps["n2"].t.send([HeartbeatResponse(to="n1", frm="n2", term=3, seq=1)])
        ps["n3"].t.send([RequestVote(to="n2", frm="n3", term=4, last_index=0, last_term=0,
                                     transfer=False)])
        await ps["n2"].inbox.wait(lambda m: len(m) == 2)
        await ps["n3"].inbox.wait(lambda m: len(m) == 1)
        await ps["n1"].inbox.wait(lambda m: len(m) == 1)
        assert ps["n3"].inbox.msgs == [Heartbeat(to="n3", frm="n1", term=3, commit=0, seq=1)]
        assert {type(m) for m in ps["n2"].inbox.msgs} == {Heartbeat, RequestVote}

        # A batch: 600 AppendEntries queued at once arrive complete and in order.
        batch = [ae("n1", "n2", i, size=200) for i in range(1, 601)]
        ps["n1"].t.send(batch)
        await ps["n2"].inbox.wait(lambda m: len(m) == 602)
        assert ps["n2"].inbox.msgs[2:] == batch

        # Addresses learned from PEER_HELLO; every link keeps the others reachable.
        await wait_until(lambda: all(p.t.client_addr_of(o) == f"client-of-{o}:7000"
                                     for n, p in ps.items() for o in ps if o != n))
        assert all(p.t.reachable(o) for n, p in ps.items() for o in ps if o != n)
        assert ps["n1"].t.client_addr_of("n9") is None and not ps["n1"].t.reachable("n9")
        st = ps["n1"].stat("n2")
        assert st["connected"] and st["inbound"] and st["sent"] == 601 and st["dropped"] == 0
        assert ps["n2"].stat("n1")["received"] == 601
        assert ps["n1"].t.statistics().refused == 0
        # Messages to unknown nodes (or to ourselves) are counted, never raised.
        ps["n1"].t.send([Heartbeat(to="n7", frm="n1", term=3, commit=0, seq=2)])
        assert ps["n1"].t.statistics().unroutable == 1


async def test_restart_on_new_port_reconnects(nursery: trio.Nursery, pki: PKI) -> None:
    ps = await start_three(nursery, pki)
    with trio.fail_after(20):
        ps["n1"].t.send([Heartbeat(to="n3", frm="n1", term=1, commit=0, seq=1)])
        await ps["n3"].inbox.wait(lambda m: len(m) == 1)

        ps["n3"].scope.cancel()  # n3 stops: its listener and links close
        await wait_until(lambda: not ps["n1"].stat("n3")["connected"]
                         and not ps["n2"].stat("n3")["connected"])
        # Sent while n3 is down: queued (bounded) and delivered after the reconnect.
        ps["n1"].t.send([Heartbeat(to="n3", frm="n1", term=1, commit=0, seq=2)])

        n3 = await start_peer(nursery, pki, "n3")
        addrs = {"n1": ps["n1"].addr, "n2": ps["n2"].addr, "n3": n3.addr}
        for p in (ps["n1"], ps["n2"], n3):
            p.t.set_peers(addrs)
        ps["n2"].t.send([Heartbeat(to="n3", frm="n2", term=1, commit=0, seq=3)])
        n3.t.send([HeartbeatResponse(to="n1", frm="n3", term=1, seq=9)])
        await n3.inbox.wait(lambda m: {(x.frm, getattr(x, "seq", 0)) for x in m}
                            >= {("n1", 2), ("n2", 3)})
        await ps["n1"].inbox.wait(lambda m: HeartbeatResponse(to="n1", frm="n3", term=1, seq=9)
                                  in m)
        assert ps["n1"].stat("n3")["connects"] == 2


async def test_set_peers_removes_and_adds_links(nursery: trio.Nursery, pki: PKI) -> None:
    ps = await start_three(nursery, pki)
    with trio.fail_after(15):
        await wait_until(lambda: ps["n1"].stat("n3")["connected"])
        ps["n1"].t.set_peers({"n1": ps["n1"].addr, "n2": ps["n2"].addr})  # n3 removed
        await wait_until(lambda: not ps["n1"].stat("n3")["connected"])
        ps["n1"].t.send([Heartbeat(to="n3", frm="n1", term=1, commit=0, seq=1)])
        assert ps["n1"].t.statistics().unroutable == 1
        assert not ps["n1"].t.statistics().peers["n3"]["member_link"]
        ps["n1"].t.set_peers({"n2": ps["n2"].addr, "n3": ps["n3"].addr})  # and back
        ps["n1"].t.send([Heartbeat(to="n3", frm="n1", term=1, commit=0, seq=2)])
        await ps["n3"].inbox.wait(lambda m: any(getattr(x, "seq", 0) == 2 for x in m))
        assert not any(getattr(x, "seq", 0) == 1 for x in ps["n3"].inbox.msgs)


async def test_newer_inbound_connection_replaces_older(nursery: trio.Nursery, pki: PKI) -> None:
    p = await start_peer(nursery, pki, "n1")
    op = catalog.BY_NAME
    ctx = client_ctx(pki.ca, *pki.pair("n2"))
    hello = {"node": "n2", "client_addr": "n2:7000", "cluster": CLUSTER}
    with trio.fail_after(15):
        first = await RawPeer.connect(p.t.port, ctx)
        second = await RawPeer.connect(p.t.port, ctx)
        try:
            for seq, raw in ((1, first), (2, second)):
                await raw.send_frame(op["PEER_HELLO"].opcode, hello)
                hb = Heartbeat(to="n1", frm="n2", term=1, commit=0, seq=seq)
                await raw.send_frame(op["RAFT_HEARTBEAT"].opcode, {"msg": hb.to_wire()})
                await p.inbox.wait(lambda m, n=seq: len(m) == n)
            await first.wait_closed()  # one authenticated connection per node id
            assert p.stat("n2")["inbound"]
        finally:
            await first.aclose()
            await second.aclose()
        await wait_until(lambda: not p.stat("n2")["inbound"])
    assert p.t.client_addr_of("n2") == "n2:7000" and p.t.statistics().refused == 0
