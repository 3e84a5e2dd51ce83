"""The HTTP/1.1 server over real TLS 1.3 on 127.0.0.1: keep-alive, limits, malformed input,
handler errors, streaming, pipelining and graceful shutdown."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from loom.http import Request, Response, StreamingResponse
from loom.security.tls import client_context
from loom.security.tlsstream import TLSStream
from tests.conftest import PKI
from tests.http.conftest import (
    client,
    echo,
    exchange_raw,
    raw_tls,
    read_to_eof,
    running,
)


def der(pki_dir: object, name: str) -> bytes:
    pem = (pki_dir / f"{name}.pem").read_bytes()  # type: ignore[operator]
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def problem_of(raw: bytes) -> dict[str, object]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head.lower()
    doc = json.loads(body)
    assert isinstance(doc, dict)
    return doc


async def test_keep_alive_and_request_fields(pki: PKI) -> None:
    seen: list[Request] = []

    async def handler(request: Request) -> Response:
        seen.append(request)
        return await echo(request)

    async with running(pki, handler) as srv, client(pki) as c:
        for i in range(3):
            r = await c.request("POST", f"{srv.base}/a/b%20c?x=1&x=2&y=",
                                headers=[("X-Rep", "one"), ("x-rep", "two")], body=b"z" * i)
            assert r.status == 200 and r.body == b"POST /a/b%20c?x=1&x=2&y= " + str(i).encode()
        assert c.statistics().connections_made == 1
        assert srv.server.statistics().requests_served == 3
    req = seen[0]
    assert (req.method, req.path, req.query) == ("POST", "/a/b%20c", "x=1&x=2&y=")
    assert req.query_params() == [("x", "1"), ("x", "2"), ("y", "")]
    assert replace(req, query="flag&k=%C3%A9").query_params() == [("flag", ""), ("k", "é")]
    with pytest.raises(ValueError):
        replace(req, query="k=%FF").query_params()
    assert req.header_values("X-REP") == [b"one", b"two"]
    with pytest.raises(ValueError, match="repeated"):
        req.header("x-rep")
    assert req.header("host") == f"127.0.0.1:{srv.port}".encode()
    assert req.remote.startswith("127.0.0.1:")
    assert req.peer_certificate == der(pki.dir, "admin")
    stats = srv.server.statistics()
    assert stats.connections_open == 0 and stats.handshaking == 0


async def test_guest_has_no_certificate_and_a_bad_one_never_passes_as_absent(pki: PKI) -> None:
    seen: list[bytes | None] = []

    async def handler(request: Request) -> Response:
        seen.append(request.peer_certificate)
        return Response(204)

    async with running(pki, handler) as srv:
        async with client(pki, None) as c:
            assert (await c.request("GET", srv.base)).status == 204
        # A client certificate from another CA: the handshake fails; the handler never runs.
        foreign = client_context(pki.ca, pki.other / "admin.pem", pki.other / "admin.key")
        tcp = await trio.open_tcp_stream("127.0.0.1", srv.port)
        stream = TLSStream(tcp, foreign, server_hostname="127.0.0.1")
        with trio.fail_after(5):
            await stream.do_handshake()  # TLS 1.3: the client finishes first...
            with pytest.raises(trio.BrokenResourceError):  # ...and learns of the alert here
                await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                await stream.receive_some(100)
        await stream.aclose()
        with trio.fail_after(5):
            while srv.server.statistics().refused.get("handshake_failed", 0) < 1:
                await trio.sleep(0.01)
    assert seen == [None]


@pytest.mark.parametrize(("request_bytes", "status", "reason"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n", 431,
     "header_too_large"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(12)) +
     b"\r\n", 431, "too_many_headers"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + b"a" * 5000, 413,
     "body_too_large"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" +
     b"800\r\n" + b"a" * 2048 + b"\r\n" + b"800\r\n" + b"a" * 2048 + b"\r\n0\r\n\r\n", 413,
     "body_too_large"),
    (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    (b"GET / HTTP/1.1\r\n\r\n", 400, "bad_request"),  # no Host
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400,
     "bad_request"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Auth-User: alice\r\n admin\r\n\r\n", 400,
     "bad_request"),  # obs-fold
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Auth-User: al\x01ice\r\n\r\n", 400, "bad_request"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX Auth: a\r\n\r\n", 400, "bad_request"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n", 400, "bad_request"),  # smuggling: two framings
    (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400, "bad_request"),
])
async def test_refused_requests_get_problem_json_and_the_connection_closes(
        pki: PKI, request_bytes: bytes, status: int, reason: str) -> None:
    called = 0

    async def handler(request: Request) -> Response:
        nonlocal called
        called += 1
        return Response(200)

    async with running(pki, handler, max_header_bytes=4096, max_header_count=10,
                       max_body_bytes=4000) as srv:
        # read_to_eof fails unless the server closes the connection after answering.
        then = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        raw = await exchange_raw(pki, srv.port, request_bytes + then)
        assert raw.startswith(b"HTTP/1.1 %d " % status)
        assert raw.count(b"HTTP/1.1") == 1  # the request after it is never served
        assert b"connection: close" in raw.lower()
        doc = problem_of(raw)
        assert doc["status"] == status and doc["type"] == "about:blank" and doc["title"]
        assert srv.server.statistics().refused == {reason: 1}
    assert called == 0


async def test_expect_100_continue_and_early_413(pki: PKI) -> None:
    async with running(pki, max_body_bytes=100) as srv:
        stream = await raw_tls(pki, srv.port)
        await stream.send_all(b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                              b"Expect: 100-continue\r\n\r\n")
        with trio.fail_after(5):
            got = await stream.receive_some(1000)
        assert got.startswith(b"HTTP/1.1 100 ")
        await stream.send_all(b"abc")
        with trio.fail_after(5):
            got = await stream.receive_some(1000)
        assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"POST /u 3")
        # Too large by announcement: refused before the body is sent, no 100.
        await stream.send_all(b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n"
                              b"Expect: 100-continue\r\n\r\n")
        raw = await read_to_eof(stream)
        assert raw.startswith(b"HTTP/1.1 413 ")
        await stream.aclose()


async def test_handshake_idle_and_request_timeouts(pki: PKI) -> None:
    async with running(pki, handshake_timeout_s=0.3, idle_timeout_s=0.3,
                       request_timeout_s=0.3) as srv:
        # A TCP connection that never starts TLS is closed after the handshake timeout.
        tcp = await trio.open_tcp_stream("127.0.0.1", srv.port)
        t0 = trio.current_time()
        assert await read_to_eof(tcp) == b""
        assert 0.25 < trio.current_time() - t0 < 3
        await tcp.aclose()
        # An idle keep-alive connection is closed quietly after the idle timeout.
        stream = await raw_tls(pki, srv.port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = await read_to_eof(stream)
        assert raw.startswith(b"HTTP/1.1 200 ") and raw.count(b"HTTP/1.1") == 1
        await stream.aclose()
        # A request that arrives too slowly (slowloris) gets 408 and the connection closes.
        stream = await raw_tls(pki, srv.port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        raw = await read_to_eof(stream)
        assert raw.startswith(b"HTTP/1.1 408 ")
        await stream.aclose()
        assert dict(srv.server.statistics().refused) == {
            "handshake_timeout": 1, "idle_timeout": 1, "request_timeout": 1}


async def test_max_connections(pki: PKI) -> None:
    async with running(pki, max_connections=1) as srv:
        first = await raw_tls(pki, srv.port)
        tcp = await trio.open_tcp_stream("127.0.0.1", srv.port)
        assert await read_to_eof(tcp) == b""  # accepted and closed at once
        await tcp.aclose()
        await first.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await read_to_eof(first)).startswith(b"HTTP/1.1 200 ")
        await first.aclose()
        assert srv.server.statistics().refused == {"max_connections": 1}


async def test_handler_errors_are_500_logged_and_the_connection_lives(
        pki: PKI, caplog: pytest.LogCaptureFixture) -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/boom":
            raise RuntimeError("kaboom")
        if request.path == "/bad-head":
            return Response(200, [("x-bad", "a\r\nb")])
        if request.path == "/bad-status":
            return Response(99)
        if request.path == "/none":
            return Response(204, [("content-length", "3")], b"abc")
        return Response(200, body=b"ok")

    async with running(pki, handler) as srv, client(pki) as c:
        with caplog.at_level(logging.ERROR, logger="loom.http"):
            r = await c.request("GET", f"{srv.base}/boom")
            assert r.status == 500
            assert r.header_values("content-type") == [b"application/problem+json"]
            assert b"kaboom" not in r.body  # no traceback or message leaks to the client
            assert (await c.request("GET", f"{srv.base}/bad-head")).status == 500
            assert (await c.request("GET", f"{srv.base}/bad-status")).status == 500
            r = await c.request("GET", f"{srv.base}/none")  # 204: no body, no length
            assert (r.status, r.body, r.header_values("content-length")) == (204, b"", [])
            r = await c.request("GET", f"{srv.base}/ok")
            assert r.body == b"ok" and r.header_values("date")[0].endswith(b" GMT")
        assert c.statistics().connections_made == 1
        assert srv.server.statistics().handler_errors == 3
    assert "kaboom" in caplog.text


async def test_head_connection_close_and_pipelining(pki: PKI) -> None:
    active = 0
    most = 0

    async def handler(request: Request) -> Response:
        nonlocal active, most
        active += 1
        most = max(most, active)
        await trio.sleep(0.02)
        active -= 1
        return Response(200, body=request.path.encode())

    async with running(pki, handler) as srv:
        raw = await exchange_raw(pki, srv.port, b"".join(
            b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(3)) +
            b"HEAD /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    responses = raw.split(b"HTTP/1.1 ")[1:]
    assert [r.rsplit(b"\r\n\r\n", 1)[1] for r in responses] == [b"/0", b"/1", b"/2", b""]
    assert b"content-length: 2" in responses[3]  # HEAD: the length, without the body
    assert most == 1


async def test_streaming_response_is_sent_as_produced(pki: PKI) -> None:
    go = trio.Event()
    closed = trio.Event()

    async def events() -> AsyncIterator[bytes]:
        try:
            yield b"data: one\n\n"
            await go.wait()
            yield b"data: two\n\n"
        finally:
            closed.set()

    async def handler(request: Request) -> StreamingResponse:
        return StreamingResponse(200, [("content-type", "text/event-stream")], events())

    async with running(pki, handler) as srv:
        stream = await raw_tls(pki, srv.port)
        await stream.send_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        got = b""
        with trio.fail_after(5):
            while b"data: one" not in got:
                got += await stream.receive_some(1000)
        assert b"transfer-encoding: chunked" in got.lower() and b"two" not in got
        go.set()
        with trio.fail_after(5):
            while not got.endswith(b"0\r\n\r\n"):
                got += await stream.receive_some(1000)
        assert b"data: two" in got
        await stream.aclose()
    assert closed.is_set()


async def test_a_failing_stream_truncates_and_closes(pki: PKI) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"part"
        raise RuntimeError("mid-stream")

    async def handler(request: Request) -> StreamingResponse:
        return StreamingResponse(200, [], broken())

    async with running(pki, handler) as srv:
        raw = await exchange_raw(pki, srv.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200 ") and b"part" in raw
        assert not raw.endswith(b"0\r\n\r\n")  # never a complete-looking body
        assert srv.server.statistics().handler_errors == 1


async def test_graceful_shutdown(pki: PKI) -> None:
    started = trio.Event()

    async def handler(request: Request) -> Response:
        if request.path == "/slow":
            started.set()
            await trio.sleep(0.3)
            return Response(200, body=b"finished")
        if request.path == "/forever":
            started.set()
            await trio.sleep_forever()
        return Response(200)

    # In-flight work finishes within the grace period, with Connection: close; idle
    # keep-alive connections close at once; the listener stops accepting.
    async with running(pki, handler, shutdown_grace_s=5) as srv:
        idle = await raw_tls(pki, srv.port)
        busy = await raw_tls(pki, srv.port)
        await busy.send_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        await started.wait()
        srv.server.shutdown()
        t0 = trio.current_time()
        assert await read_to_eof(idle, timeout=1) == b""
        assert trio.current_time() - t0 < 0.25
        raw = await read_to_eof(busy)
        assert raw.startswith(b"HTTP/1.1 200 ") and raw.endswith(b"finished")
        assert b"connection: close" in raw.lower()
        await idle.aclose()
        await busy.aclose()
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", srv.port)
    # A request that outlives the grace period is cancelled when it ends.
    started = trio.Event()
    t0 = trio.current_time()
    async with running(pki, handler, shutdown_grace_s=0.3) as srv:
        busy = await raw_tls(pki, srv.port)
        await busy.send_all(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
        await started.wait()
        t0 = trio.current_time()
    assert 0.25 < trio.current_time() - t0 < 3
    assert await read_to_eof(busy) == b""
    await busy.aclose()


@pytest.mark.parametrize("linger_s", [0.5, 0.0001])
async def test_linger_lets_a_client_that_sends_everything_first_read_its_413(
        pki: PKI, linger_s: float) -> None:
    # A client that writes its whole body before reading (as many do) must still get the 413:
    # closing with its bytes unread would reset the connection under the answer.
    async with running(pki, max_body_bytes=1000, linger_s=linger_s) as srv:
        stream = await raw_tls(pki, srv.port)
        try:
            with trio.fail_after(5):
                await stream.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 600000"
                                      b"\r\n\r\n")
                await trio.sleep(0.1)  # the server answers and (without linger) closes
                await stream.send_all(b"b" * 600_000)
            raw = await read_to_eof(stream)
            assert raw.startswith(b"HTTP/1.1 413 ")
        except trio.BrokenResourceError:
            assert linger_s < 0.1  # reset: what lingering is there to prevent
        else:
            assert linger_s > 0.1
        finally:
            await stream.aclose()


async def test_a_client_that_stops_reading_is_dropped_but_a_quiet_stream_is_not(
        pki: PKI) -> None:
    async def quiet() -> AsyncIterator[bytes]:
        yield b"data: first\n\n"
        await trio.sleep(0.6)  # longer than the write timeout, without writing
        yield b"data: second\n\n"

    async def handler(request: Request) -> Response | StreamingResponse:
        if request.path == "/big":
            return Response(200, body=b"x" * (32 << 20))
        return StreamingResponse(200, [], quiet())

    async with running(pki, handler, write_timeout_s=0.3) as srv:
        stream = await raw_tls(pki, srv.port)
        await stream.send_all(b"GET /quiet HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = await read_to_eof(stream)
        assert b"data: second" in raw and raw.endswith(b"0\r\n\r\n")
        await stream.aclose()
        stream = await raw_tls(pki, srv.port)
        await stream.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")  # never read
        with trio.fail_after(5):
            while srv.server.statistics().refused.get("write_timeout", 0) < 1:
                await trio.sleep(0.02)
        raw = await read_to_eof(stream)  # what was buffered, then the server's close
        assert raw.startswith(b"HTTP/1.1 200 ") and len(raw) < 32 << 20
        await stream.aclose()


async def test_http_1_0_and_a_reloaded_context(pki: PKI) -> None:
    from tests.http.conftest import server_ctx

    async with running(pki) as srv:
        # HTTP/1.0 without keep-alive: answered, then closed by the server.
        raw = await exchange_raw(pki, srv.port, b"GET /old HTTP/1.0\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200 ") and raw.endswith(b"GET /old 0")
        # A replaced context applies to the next connection (a certificate reload).
        first = await raw_tls(pki, srv.port)
        ctx = server_ctx(pki)
        ctx.load_cert_chain(*map(str, pki.pair("n2")))
        srv.server.ssl_context = ctx
        second = await raw_tls(pki, srv.port)
        assert first.getpeercert() == der(pki.dir, "n1")
        assert second.getpeercert() == der(pki.dir, "n2")
        await first.aclose()
        await second.aclose()
