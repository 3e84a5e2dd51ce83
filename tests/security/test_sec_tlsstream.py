"""`TLSStream`: the stream every Loom listener and dialler runs TLS through.

Real sockets on loopback, real certificates, and `trio.SSLStream` on the other end where a
second, independent TLS implementation makes the check meaningful (interop both ways).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from loom.security.devpki import issue_cert, new_ca, write_cert, write_key
from loom.security.tls import peer_client_context, peer_server_context
from loom.security.tlsstream import TLSStream
from tests.security.conftest import PKI


def _server_ctx(pki: PKI) -> ssl.SSLContext:
    return peer_server_context(pki.ca, *pki.pair("n1"))


def _client_ctx(pki: PKI) -> ssl.SSLContext:
    return peer_client_context(pki.ca, *pki.pair("n2"))


async def _tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as n:
        accepted: list[trio.SocketStream] = []

        async def acc() -> None:
            accepted.append(await listeners[0].accept())

        n.start_soon(acc)
        client = await trio.open_tcp_stream("127.0.0.1", port)
    await listeners[0].aclose()
    return accepted[0], client


@asynccontextmanager
async def _pair(pki: PKI, *, server: str = "loom", client: str = "loom"
                ) -> AsyncIterator[tuple[Any, Any]]:
    """A handshaken (server, client) pair; each side a TLSStream or a trio.SSLStream."""
    s_tcp, c_tcp = await _tcp_pair()
    s: Any = (TLSStream(s_tcp, _server_ctx(pki), server_side=True) if server == "loom"
              else trio.SSLStream(s_tcp, _server_ctx(pki), server_side=True))
    c: Any = (TLSStream(c_tcp, _client_ctx(pki)) if client == "loom"
              else trio.SSLStream(c_tcp, _client_ctx(pki), server_hostname=None))
    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(s.do_handshake)
            n.start_soon(c.do_handshake)
    try:
        yield s, c
    finally:
        await trio.aclose_forcefully(s)
        await trio.aclose_forcefully(c)


async def _read_exactly(stream: Any, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        data = await stream.receive_some(65536)
        assert data, f"EOF after {len(buf)} of {n} bytes"
        buf += data
    return bytes(buf)


@pytest.mark.parametrize(("server", "client"),
                         [("loom", "loom"), ("loom", "trio"), ("trio", "loom")])
async def test_echo_and_identity(pki: PKI, server: str, client: str) -> None:
    async with _pair(pki, server=server, client=client) as (s, c):
        assert c.getpeercert(binary_form=True) == pki.der("n1")
        assert s.getpeercert(binary_form=True) == pki.der("n2")
        for size in (1, 300, 70_000):
            msg = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
            with trio.fail_after(10):
                await c.send_all(msg)
                assert await _read_exactly(s, size) == msg
                await s.send_all(msg[::-1])
                assert await _read_exactly(c, size) == msg[::-1]


async def test_large_write_against_a_slow_reader_arrives_intact(pki: PKI) -> None:
    # 8 MiB cannot fit the socket buffers: OpenSSL reports want-write mid-record and the send
    # must resume with the same bytes. The reader starts late and reads in small pieces.
    payload = bytes(i % 251 for i in range(8 << 20))
    async with _pair(pki) as (s, c):
        got = bytearray()

        async def slow_reader() -> None:
            await trio.sleep(0.2)
            while len(got) < len(payload):
                got.extend(await s.receive_some(4096))

        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                n.start_soon(slow_reader)
                await c.send_all(payload)
        assert bytes(got) == payload


async def test_close_notify_is_a_clean_eof(pki: PKI) -> None:
    async with _pair(pki) as (s, c):
        await c.send_all(b"last words")
        await c.aclose()
        with trio.fail_after(10):
            assert await _read_exactly(s, 10) == b"last words"
            assert await s.receive_some(100) == b""


async def test_tcp_eof_without_close_notify_is_broken(pki: PKI) -> None:
    async with _pair(pki, client="trio") as (s, c):
        # Close the client's TCP socket under its TLS layer: no close_notify is sent.
        c.transport_stream.socket.close()
        with trio.fail_after(10), pytest.raises(trio.BrokenResourceError) as ei:
            await s.receive_some(100)
        assert isinstance(ei.value.__cause__, ssl.SSLError | OSError)


async def test_aclose_wakes_a_blocked_receiver(pki: PKI) -> None:
    async with _pair(pki) as (s, _c):
        seen: list[BaseException] = []

        async def reader() -> None:
            try:
                await s.receive_some(100)
            except BaseException as e:
                seen.append(e)

        with trio.fail_after(10):
            async with trio.open_nursery() as n:
                n.start_soon(reader)
                await trio.sleep(0.05)
                await s.aclose()
        assert len(seen) == 1 and isinstance(seen[0], trio.ClosedResourceError)
        with pytest.raises(trio.ClosedResourceError):
            await s.send_all(b"x")


async def test_two_receivers_or_two_senders_are_refused(pki: PKI) -> None:
    async with _pair(pki) as (s, c):
        async with trio.open_nursery() as n:
            n.start_soon(s.receive_some, 10)
            await trio.sleep(0.05)
            with pytest.raises(trio.BusyResourceError):
                await s.receive_some(10)
            await c.send_all(b"x")  # lets the first receiver finish
        # A sender blocked on a full socket buffer (the peer does not read) holds the stream.
        async with trio.open_nursery() as n:
            n.start_soon(c.send_all, b"y" * (16 << 20))
            await trio.sleep(0.2)
            with pytest.raises(trio.BusyResourceError):
                await c.send_all(b"z")
            n.cancel_scope.cancel()


async def test_foreign_ca_fails_the_handshake_with_the_ssl_error_as_cause(
        pki: PKI, tmp_path: Path) -> None:
    oca, okey = new_ca(common_name="Some other CA")
    cert, key = issue_cert(oca, okey, role="node", name="n2")
    write_cert(tmp_path / "o.pem", cert)
    write_key(tmp_path / "o.key", key)
    s_tcp, c_tcp = await _tcp_pair()
    s = TLSStream(s_tcp, _server_ctx(pki), server_side=True)
    c = TLSStream(c_tcp, peer_client_context(pki.ca, tmp_path / "o.pem", tmp_path / "o.key"))
    errors: list[BaseException] = []

    async def side(stream: TLSStream) -> None:
        try:
            await stream.do_handshake()
            await stream.receive_some(10)  # TLS 1.3: the client learns of refusal on read
        except trio.BrokenResourceError as e:
            errors.append(e)

    with trio.fail_after(10):
        async with trio.open_nursery() as n:
            n.start_soon(side, s)
            n.start_soon(side, c)
    assert len(errors) == 2
    assert all(isinstance(e.__cause__, ssl.SSLError) for e in errors)
    with pytest.raises(trio.BrokenResourceError):
        await s.send_all(b"x")
    await s.aclose()
    await c.aclose()


async def test_io_before_the_handshake_is_refused(pki: PKI) -> None:
    s_tcp, c_tcp = await _tcp_pair()
    c = TLSStream(c_tcp, _client_ctx(pki))
    with pytest.raises(trio.BrokenResourceError, match="handshake"):
        await c.send_all(b"x")
    await c.aclose()
    await s_tcp.aclose()


async def test_plaintext_peer_fails_the_handshake(pki: PKI) -> None:
    s_tcp, c_tcp = await _tcp_pair()
    s = TLSStream(s_tcp, _server_ctx(pki), server_side=True)
    await c_tcp.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
        await s.do_handshake()
    await s.aclose()
    await c_tcp.aclose()


async def test_send_nowait_writes_at_once_or_keeps_the_rest_in_order(pki: PKI) -> None:
    async with _pair(pki) as (s, c):
        assert c.send_nowait(b"now") is True
        with trio.fail_after(10):
            assert await _read_exactly(s, 3) == b"now"
        # Nobody reads: the socket fills, the rest is kept, and later sends queue behind it.
        big = bytes(i % 253 for i in range(16 << 20))
        assert c.send_nowait(big) is False
        assert 0 < c.unsent <= len(big)
        assert c.send_nowait(b"tail") is False
        got = bytearray()

        async def reader() -> None:
            while len(got) < len(big) + 4:
                got.extend(await s.receive_some(65536))

        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                n.start_soon(reader)
                await c.flush()
        assert c.unsent == 0
        assert bytes(got) == big + b"tail"


async def test_a_cancelled_flush_breaks_the_stream(pki: PKI) -> None:
    async with _pair(pki) as (_s, c):
        assert c.send_nowait(b"y" * (16 << 20)) is False
        with trio.move_on_after(0.2):
            await c.flush()  # the peer never reads
        with pytest.raises(trio.BrokenResourceError):
            await c.send_all(b"more")
        with pytest.raises(trio.BrokenResourceError):
            c.send_nowait(b"more")
