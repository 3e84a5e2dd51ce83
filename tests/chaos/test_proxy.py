"""The fault proxy between two peers: forwards, cuts (dropping open connections and refusing
new ones), heals, delays and resets on injected loss. Real sockets on 127.0.0.1."""

from __future__ import annotations

import random

import pytest
import trio

from loom.chaos.proxy import FaultProxy


async def echo(stream: trio.SocketStream) -> None:
    try:
        async for data in stream:
            await stream.send_all(data)
    except trio.BrokenResourceError:
        pass


async def roundtrip(port: int, data: bytes = b"ping") -> bytes:
    """The echo of `data`, or b"" when the proxy closed or reset the connection."""
    with trio.fail_after(5):
        s = await trio.open_tcp_stream("127.0.0.1", port)
        async with s:
            try:
                await s.send_all(data)
                return await s.receive_some(65536)
            except trio.BrokenResourceError:
                return b""


@pytest.fixture
async def proxy(nursery: trio.Nursery) -> FaultProxy:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await nursery.start(trio.serve_listeners, echo, listeners)
    p = FaultProxy("a", "b", port, random.Random(1))
    await nursery.start(p.run)
    return p


async def test_forwards_then_cut_refuses_and_heal_restores(proxy: FaultProxy) -> None:
    assert await roundtrip(proxy.port) == b"ping"
    with trio.fail_after(5):
        open_conn = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        await open_conn.send_all(b"x")
        assert await open_conn.receive_some(10) == b"x"
        proxy.cut()
        try:
            dropped = await open_conn.receive_some(10)
        except trio.BrokenResourceError:
            dropped = b""
        assert dropped == b""  # the open connection was dropped
        await open_conn.aclose()
        assert await roundtrip(proxy.port) == b""  # a new one is refused
    proxy.heal()
    assert await roundtrip(proxy.port) == b"ping"
    st = proxy.statistics()
    assert st.accepted == 3 and st.refused == 1 and st.reset >= 1


async def test_delay_and_loss(proxy: FaultProxy) -> None:
    proxy.delay_s = 0.3
    t0 = trio.current_time()
    assert await roundtrip(proxy.port) == b"ping"
    assert trio.current_time() - t0 >= 0.55  # delayed both ways
    proxy.heal()
    proxy.loss = 1.0
    assert await roundtrip(proxy.port) == b""  # the first chunk resets the connection
    assert proxy.statistics().reset == 1
