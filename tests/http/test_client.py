"""The pooled HTTPS client against the real server: pooling, the per-origin bound, mutual TLS,
the retry rule, response limits and the caller's deadlines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest
import trio

from loom.http import (
    ClientLimits,
    PoolFull,
    Request,
    Response,
    ResponseTooLarge,
    StreamingResponse,
)
from loom.security.identity import identity_from_der
from tests.conftest import PKI
from tests.http.conftest import client, running


async def whoami(request: Request) -> Response:
    if request.path == "/big":
        return Response(200, body=b"x" * 5000)
    if request.path == "/big-head":
        return Response(200, [("x-big", "h" * 3000)])
    if request.path == "/slow":
        await trio.sleep(10)
    if request.peer_certificate is None:
        return Response(200, body=b"guest")
    identity = identity_from_der(request.peer_certificate, "loom.dev")
    return Response(200, body=identity.principal.encode())


async def test_pooling_and_the_per_origin_bound(pki: PKI) -> None:
    async with running(pki, whoami) as srv, client(
            pki, limits=ClientLimits(max_connections_per_origin=2)) as c:
        for _ in range(5):
            assert (await c.request("GET", srv.base)).status == 200
        assert c.statistics().connections_made == 1

        peak = 0

        async def one() -> None:
            nonlocal peak
            r = await c.request("GET", srv.base)
            assert r.status == 200
            peak = max(peak, srv.server.statistics().connections_open)

        async with trio.open_nursery() as n:
            for _ in range(16):
                n.start_soon(one)
        stats = c.statistics()
        assert stats.connections_made <= 2 and stats.connections_open <= 2
        assert peak <= 2 and stats.requests == 21


async def test_the_client_certificate_reaches_the_handler(pki: PKI) -> None:
    async with running(pki, whoami, require_client_auth=True) as srv:
        async with client(pki, "writer") as c:
            assert (await c.request("GET", srv.base)).body == b"spiffe://loom.dev/client/writer"
        async with client(pki, "edge") as c:
            assert (await c.request("GET", srv.base)).body == b"spiffe://loom.dev/gateway/edge"
        async with client(pki, None) as c:  # the server requires one: no guest
            with pytest.raises(trio.BrokenResourceError):
                await c.request("GET", srv.base)


async def test_retry_only_idempotent_requests_on_a_dead_pooled_connection(pki: PKI) -> None:
    # The server drops idle connections after 0.2 s; the client would keep them for 30 s.
    async with running(pki, whoami, idle_timeout_s=0.2) as srv, client(pki) as c:
        async def after_idle(method: str, **kw: object) -> Response:
            await c.request("GET", srv.base)  # leaves one pooled connection
            await trio.sleep(0.4)  # ...that the server has closed meanwhile
            return await c.request(method, srv.base, **kw)  # type: ignore[arg-type,return-value]

        assert (await after_idle("GET")).status == 200
        assert c.statistics().retries == 1
        with pytest.raises(trio.BrokenResourceError):
            await after_idle("POST", body=b"once")
        assert c.statistics().retries == 1
        assert (await after_idle("POST", body=b"k", idempotent=True)).status == 200
        assert c.statistics().retries == 2


async def test_response_limit_and_deadlines_close_the_connection(pki: PKI) -> None:
    async with running(pki, whoami, shutdown_grace_s=0.1) as srv, client(
            pki, limits=ClientLimits(max_response_bytes=1000, max_header_bytes=2000)) as c:
        with pytest.raises(ResponseTooLarge):
            await c.request("GET", f"{srv.base}/big")
        assert c.statistics().connections_open == 0
        with pytest.raises(ResponseTooLarge, match="head"):
            await c.request("GET", f"{srv.base}/big-head")
        assert c.statistics().connections_open == 0
        with trio.move_on_after(0.2) as scope:
            await c.request("GET", f"{srv.base}/slow")
        assert scope.cancelled_caught
        assert c.statistics().connections_open == 0
        assert (await c.request("GET", srv.base)).status == 200


async def test_origins_are_bounded(pki: PKI) -> None:
    async with running(pki, whoami, shutdown_grace_s=0.1) as srv, client(
            pki, limits=ClientLimits(max_origins=1)) as c:
        # 127.0.0.1 and localhost are two origins (the node certificate names both).
        assert (await c.request("GET", srv.base)).status == 200
        assert (await c.request("GET", f"https://localhost:{srv.port}/")).status == 200
        assert c.statistics().connections_open == 1  # the first origin's pool was evicted

        async def hold() -> None:  # keeps the localhost origin in use
            with trio.move_on_after(0.5):
                await c.request("GET", f"https://localhost:{srv.port}/slow")

        async with trio.open_nursery() as n:
            n.start_soon(hold)
            await trio.sleep(0.1)
            with pytest.raises(PoolFull):
                await c.request("GET", srv.base)


async def test_refuses_what_it_cannot_do(pki: PKI) -> None:
    async with client(pki) as c:
        with pytest.raises(ValueError, match="https"):
            await c.request("GET", "http://127.0.0.1:1/")
    with pytest.raises(trio.ClosedResourceError):
        await c.request("GET", "https://127.0.0.1:1/")
    with pytest.raises(ValueError, match="max_origins"):
        ClientLimits(max_origins=0)


async def test_streamed_responses(pki: PKI) -> None:
    go = trio.Event()

    async def events() -> AsyncIterator[bytes]:
        yield b"data: one\n\n"
        await go.wait()
        yield b"data: two\n\n"

    async def handler(request: Request) -> StreamingResponse:
        return StreamingResponse(200, [("content-type", "text/event-stream")], events())

    async with running(pki, handler, shutdown_grace_s=0.1) as srv, client(pki) as c:
        async with c.stream("GET", f"{srv.base}/events") as r:
            assert r.status == 200
            assert r.header_values("content-type") == [b"text/event-stream"]
            async with aclosing(r.chunks()) as chunks:
                assert await chunks.__anext__() == b"data: one\n\n"  # before "two" exists
                go.set()
                assert [x async for x in chunks] == [b"data: two\n\n"]
        assert c.statistics().connections_idle == 1  # read to the end: pooled again
        go = trio.Event()
        async with c.stream("GET", f"{srv.base}/events") as r, aclosing(r.chunks()) as chunks:
            await chunks.__anext__()
        stats = c.statistics()  # left before the end: the (reused) connection was closed
        assert stats.connections_idle == 0 and stats.connections_open == 0


async def test_expired_idle_connections_are_closed_not_reused(pki: PKI) -> None:
    async with running(pki, whoami) as srv, client(
            pki, limits=ClientLimits(idle_timeout_s=0.2)) as c:
        async with trio.open_nursery() as n:  # two connections in the pool
            for _ in range(2):
                n.start_soon(c.request, "GET", f"{srv.base}/slow-not")
        assert c.statistics().connections_idle == 2
        await trio.sleep(0.3)
        assert (await c.request("GET", srv.base)).status == 200
        stats = c.statistics()
        assert (stats.connections_made, stats.connections_open, stats.retries) == (3, 1, 0)


async def test_send_and_a_body_that_arrived_whole(pki: PKI) -> None:
    go = trio.Event()

    async def events() -> AsyncIterator[bytes]:
        yield b"first"
        await go.wait()
        yield b"second"

    async def handler(request: Request) -> Response | StreamingResponse:
        if request.path == "/stream":
            return StreamingResponse(200, [], events())
        return await whoami(request)

    async with running(pki, handler, shutdown_grace_s=0.1) as srv, client(pki) as c:
        r = await c.send("GET", srv.base)  # a small answer: in with its head
        assert r.arrived(1 << 16) == b"spiffe://loom.dev/client/admin" and r.complete
        await r.aclose()
        await r.aclose()  # once only
        assert c.statistics().connections_idle == 1  # read to its end: pooled again
        r = await c.send("GET", f"{srv.base}/big")
        assert r.arrived(100) is None  # over the bound (or not all here): what it took stays
        assert await r.read(10_000) == b"x" * 5000
        await r.aclose()
        assert c.statistics().connections_idle == 1
        r = await c.send("GET", f"{srv.base}/stream")  # the rest is not here: None
        assert r.arrived(1 << 16) is None  # the end is not sent yet (a piece may be taken)
        go.set()
        async with aclosing(r.chunks()) as chunks:
            assert [x async for x in chunks] == [b"first", b"second"]
        await r.aclose()
        stats = c.statistics()
        assert stats.connections_idle == 1 and stats.requests == 3
