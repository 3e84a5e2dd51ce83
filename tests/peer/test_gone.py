"""A refused dial tells the node its peer's process is gone (RaftCore.peer_gone); nothing else
does."""

from __future__ import annotations

import errno

import trio

from loom.node.peerlink import refused
from tests.conftest import PKI
from tests.peer.conftest import start_peer, wait_until


async def test_a_peer_whose_process_ends_is_reported_gone(nursery: trio.Nursery,
                                                          pki: PKI) -> None:
    n1 = await start_peer(nursery, pki, "n1")
    n2 = await start_peer(nursery, pki, "n2")
    gone: list[str] = []
    n2.t.on_gone = gone.append
    n1.t.set_peers({"n2": n2.addr})
    n2.t.set_peers({"n1": n1.addr})
    await wait_until(lambda: n2.stat("n1").get("connected", False))
    assert gone == []  # connected: nothing to report
    n1.scope.cancel()  # n1's listener and connections close, as when its process ends
    await wait_until(lambda: "n1" in gone)
    assert set(gone) == {"n1"}


def test_only_a_refusal_counts() -> None:
    group = ExceptionGroup("all attempts failed", [ConnectionRefusedError(errno.ECONNREFUSED,
                                                                          "refused")])
    wrapped = OSError("all attempts to connect to 127.0.0.1:1 failed")
    wrapped.__cause__ = group
    assert refused(wrapped) and refused(ConnectionRefusedError())
    mixed = OSError("all attempts failed")
    mixed.__cause__ = ExceptionGroup("x", [ConnectionRefusedError(), TimeoutError()])
    # a timed out dial, an unreachable host, a reset or a TLS failure prove nothing
    for e in (mixed, TimeoutError(), OSError(errno.EHOSTUNREACH, "unreachable"),
              ConnectionResetError(), trio.TooSlowError(), trio.BrokenResourceError()):
        assert not refused(e)


async def test_a_real_refused_dial_is_recognised() -> None:
    try:
        await trio.open_tcp_stream("127.0.0.1", 1)  # nothing listens on port 1 here
    except OSError as e:
        assert refused(e)
    else:
        raise AssertionError("port 1 accepted a connection")
