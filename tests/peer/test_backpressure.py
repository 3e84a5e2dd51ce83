"""A peer that completes TLS and then never reads: the sender's lanes fill, `send` keeps
returning at once, drops are counted, and control messages keep their own lane."""

from __future__ import annotations

from typing import Any

import trio

from loom.node.peer import PeerLimits
from loom.raft.messages import (
    AppendEntries,
    Heartbeat,
    InstallSnapshot,
    PreVote,
    RequestVote,
    VoteResponse,
)
from loom.raft.types import Entry
from loom.security.tls import peer_server_context
from tests.conftest import PKI
from tests.peer.conftest import start_peer, wait_until

BIG = b"x" * (512 << 10)


async def silent_peer(pki: PKI, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """n2's certificate, TLS handshakes, then never reads a byte."""
    ctx = peer_server_context(pki.ca, *pki.pair("n2"))
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    held: list[trio.SSLStream[trio.SocketStream]] = []
    try:
        task_status.started(listeners[0].socket.getsockname()[1])
        while True:
            tcp = await listeners[0].accept()
            stream = trio.SSLStream(tcp, ctx, server_side=True)
            held.append(stream)
            await stream.do_handshake()
    finally:  # synchronous closes: an await here would be cancelled before the rest ran
        for s in held:
            s.transport_stream.socket.close()
        for lst in listeners:
            lst.socket.close()


def ae(i: int) -> AppendEntries:
    return AppendEntries(to="n2", frm="n1", term=1, index=i, log_term=1,
                         entries=(Entry(1, i + 1, data=BIG),), commit=0)


async def test_slow_peer_fills_queue_and_drops(nursery: trio.Nursery, pki: PKI) -> None:
    port = await nursery.start(silent_peer, pki)
    lim = PeerLimits(queue_len=8, priority_queue_len=4, keepalive_s=30, write_timeout_s=60)
    n1 = await start_peer(nursery, pki, "n1", peers={"n2": f"127.0.0.1:{port}"}, limits=lim)
    with trio.fail_after(20):
        await wait_until(lambda: n1.stat("n2")["connected"])
        # Keep offering bulk traffic until the socket buffers are full and the writer is stuck.
        i = 0
        while n1.stat("n2")["dropped"] == 0:
            n1.t.send([ae(i + k) for k in range(8)])
            i += 8
            await trio.sleep(0.02)
        assert n1.stat("n2")["queued"] == [0, 8]

        # The writer is blocked on the peer; `send` is synchronous and returns immediately.
        dropped = n1.stat("n2")["dropped"]
        snap = InstallSnapshot(to="n2", frm="n1", term=1, snap_index=5, snap_term=1, voters=(),
                               learners=(), offset=0, data=b"s", total=1, done=True)
        n1.t.send([ae(i), ae(i + 1), snap])
        assert n1.stat("n2")["dropped"] == dropped + 3  # bulk lane full: newest dropped

        # Control messages still queue in their own lane, bounded too.
        ctrl = [Heartbeat(to="n2", frm="n1", term=1, commit=0, seq=1),
                RequestVote(to="n2", frm="n1", term=2, last_index=0, last_term=0,
                            transfer=False),
                PreVote(to="n2", frm="n1", term=2, last_index=0, last_term=0, transfer=False),
                VoteResponse(to="n2", frm="n1", term=2, reject=False)]
        n1.t.send(ctrl)
        assert n1.stat("n2")["queued"] == [4, 8]
        assert n1.stat("n2")["dropped"] == dropped + 3
        n1.t.send([Heartbeat(to="n2", frm="n1", term=1, commit=0, seq=2)])
        assert n1.stat("n2")["queued"] == [4, 8]
        assert n1.stat("n2")["dropped"] == dropped + 4
        await trio.sleep(0.1)  # still stuck, nothing else happened behind our back
        assert n1.stat("n2")["queued"] == [4, 8]
        assert n1.stat("n2")["connected"]


async def test_stalled_write_closes_and_redials(nursery: trio.Nursery, pki: PKI) -> None:
    """A write that cannot finish within write_timeout_s breaks the SSLStream: the link closes
    that connection (never reusing it), counts the batch as dropped, and dials again."""
    port = await nursery.start(silent_peer, pki)
    lim = PeerLimits(queue_len=8, keepalive_s=30, write_timeout_s=0.2, backoff_max_s=0.1)
    n1 = await start_peer(nursery, pki, "n1", peers={"n2": f"127.0.0.1:{port}"}, limits=lim)
    with trio.fail_after(20):
        await wait_until(lambda: n1.stat("n2")["connected"])
        i = 0
        while n1.stat("n2")["connects"] < 2:
            n1.t.send([ae(i + k) for k in range(8)])
            i += 8
            await trio.sleep(0.02)
    st = n1.stat("n2")
    assert st["dropped"] > 0 and st["aborted"] == 0
