"""The gateway in process with real TLS both sides: routing, admission, rate limits and what a
plain HTTPS upstream receives (hop-by-hop rules, X-Auth-* replaced, X-Forwarded-*,
traceparent, client certificate and claims headers), and a live event stream."""

from __future__ import annotations

import hashlib
import json
import re
import ssl
from collections.abc import AsyncIterator
from contextlib import aclosing
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from loom.gateway.app import Gateway
from loom.gateway.config import ConfigError, load
from loom.gateway.proxy import trace_parent
from loom.http import ClientResponse, HTTPClient, Request, Response, StreamingResponse
from loom.security.tls import client_context, server_context
from tests.cluster.conftest import free_ports
from tests.conftest import PKI
from tests.gateway.proxy_support import (
    API_KEYS,
    EchoUpstream,
    dev_token,
    echoed,
    gateway_config,
    write_config,
)


async def start(pki: PKI, tmp_path: Path, nursery: trio.Nursery, **kw: Any
                ) -> tuple[Gateway, EchoUpstream]:
    echo = EchoUpstream(pki)
    await echo.start(nursery)
    raw = gateway_config(pki, tmp_path / "gw", upstream={
        "kind": "http", "endpoints": [echo.url], "tls": {"ca_file": str(pki.ca)}}, **kw)
    gw = Gateway(load(write_config(tmp_path / "gw", raw), env={}))
    await nursery.start(gw.run)
    return gw, echo


@pytest.fixture
async def gateway(pki: PKI, tmp_path: Path, nursery: trio.Nursery
                  ) -> AsyncIterator[tuple[Gateway, EchoUpstream]]:
    gw, echo = await start(pki, tmp_path, nursery, rate=2.0, burst=3.0)
    yield gw, echo
    gw.shutdown()
    echo.server.shutdown()


def url(gw: Gateway, path: str) -> str:
    return f"https://127.0.0.1:{gw.ports['https']}{path}"


async def get(http: HTTPClient, gw: Gateway, path: str, headers: list[tuple[str, str]] | None
              = None) -> ClientResponse:
    with trio.fail_after(10):
        return await http.request("GET", url(gw, path), headers=headers or [])


def key(name: str) -> list[tuple[str, str]]:
    return [("x-api-key", API_KEYS[name])]


async def test_identity_headers_are_the_gateways_alone(
        gateway: tuple[Gateway, EchoUpstream], pki: PKI) -> None:
    gw, _ = gateway
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with HTTPClient(client_context(pki.ca)) as http:
        r = await get(http, gw, "/api/x?y=1", [
            *key("alice"), ("X-Auth-User", "root"), ("x_auth_roles", "admin"),
            ("X-Auth-Other", "z"), ("connection", "x-secret, close"), ("x-secret", "s"),
            ("keep-alive", "1"), ("te", "trailers"), ("proxy-authorization", "p"),
            ("x-forwarded-for", "6.6.6.6"), ("x-user-id", "forged"), ("traceparent", tp),
            ("x-client-subject", "CN=forged")])
        assert r.status == 200, r.body
        h = echoed(r.body)
        assert json.loads(r.body)["target"] == "/api/x?y=1"
        assert h["x-auth-user"] == ["apikey:alice"]
        assert h["x-auth-roles"] == ["data-writer,reader"]
        for gone in ("x_auth_roles", "x-auth-other", "x-secret", "keep-alive", "te",
                     "proxy-authorization", "x-user-id", "x-client-subject",
                     "x-api-key"):  # the verified credential goes no further
            assert gone not in h, gone
        assert h["x-forwarded-for"] == ["127.0.0.1"] and h["x-forwarded-proto"] == ["https"]
        assert h["traceparent"] == [tp]
        # Response hop-by-hop fields are not passed on either.
        assert r.header_values("keep-alive") == []

        r = await get(http, gw, "/api/x", key("alice"))
        assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", echoed(r.body)["traceparent"][0])


async def test_verified_credentials_are_hidden_unless_the_upstream_asks(
        pki: PKI, tmp_path: Path, nursery: trio.Nursery) -> None:
    """Authorization and the API key (header or query parameter) stop at the gateway, other
    query parameters are kept byte for byte; `hide_credentials: false` on a plain upstream
    passes them on, and a loom upstream refuses that setting."""
    token = dev_token("ada", ["reader"])
    gw, echo = await start(pki, tmp_path, nursery)
    async with HTTPClient(client_context(pki.ca)) as http:
        r = await get(http, gw, "/api/me", [("authorization", f"Bearer {token}")])
        assert r.status == 200 and "authorization" not in echoed(r.body)
        q = f"/api/x?a=1&api%5Fkey={API_KEYS['alice']}&b=%2F+2&api_keys=3"
        r = await get(http, gw, q)
        assert r.status == 200, r.body
        assert json.loads(r.body)["target"] == "/api/x?a=1&b=%2F+2&api_keys=3"
        assert echoed(r.body)["x-auth-user"] == ["apikey:alice"]
        r = await get(http, gw, f"/api/x?api_key={API_KEYS['alice']}")
        assert json.loads(r.body)["target"] == "/api/x"
        # a public route: nothing was verified, nothing is taken away
        r = await get(http, gw, "/public/x?api_key=k", [("authorization", "Bearer t")])
        assert json.loads(r.body)["target"] == "/public/x?api_key=k"
        assert echoed(r.body)["authorization"] == ["Bearer t"]
    gw.shutdown()
    echo.server.shutdown()

    d = tmp_path / "gw2"
    raw = gateway_config(pki, d, upstream={"kind": "http", "endpoints": [echo.url],
                                           "tls": {"ca_file": str(pki.ca)},
                                           "hide_credentials": False})
    echo2 = EchoUpstream(pki)
    await echo2.start(nursery)
    raw["upstreams"][0]["endpoints"] = [echo2.url]
    gw2 = Gateway(load(write_config(d, raw), env={}))
    await nursery.start(gw2.run)
    async with HTTPClient(client_context(pki.ca)) as http:
        r = await get(http, gw2, "/api/me", [("authorization", f"Bearer {token}")])
        assert echoed(r.body)["authorization"] == [f"Bearer {token}"]
    gw2.shutdown()
    echo2.server.shutdown()
    raw["upstreams"][0].update(kind="loom", endpoints=["https://127.0.0.1:1"], tls={
        "ca_file": str(pki.ca), "cert_file": str(pki.pair("gateway")[0]),
        "key_file": str(pki.pair("gateway")[1])})
    with pytest.raises(ConfigError) as e:
        load(write_config(d, raw), env={})
    assert e.value.key == "upstreams[0].hide_credentials"


async def test_jwt_claims_and_client_certificate_headers_reach_a_plain_upstream(
        gateway: tuple[Gateway, EchoUpstream], pki: PKI) -> None:
    gw, _ = gateway
    token = dev_token("ada", ["reader"])
    async with HTTPClient(client_context(pki.ca, *pki.pair("admin"))) as http:
        r = await get(http, gw, "/api/me", [("authorization", f"Bearer {token}")])
        assert r.status == 200, r.body
        h = echoed(r.body)
        assert h["x-auth-user"] == ["dev:ada"] and h["x-auth-roles"] == ["reader"]
        assert h["x-user-id"] == ["ada"]
        der = x509.load_pem_x509_certificate(pki.pair("admin")[0].read_bytes()).public_bytes(
            Encoding.DER)
        assert h["x-client-fingerprint"] == [hashlib.sha256(der).hexdigest()]
        assert h["x-client-subject"] == ["CN=admin"]


async def test_public_private_and_role_routes(gateway: tuple[Gateway, EchoUpstream],
                                              pki: PKI) -> None:
    gw, echo = gateway
    async with HTTPClient(client_context(pki.ca)) as http:
        r = await get(http, gw, "/public/page", [("x-auth-user", "root")])
        assert r.status == 200
        assert "x-auth-user" not in echoed(r.body)  # public to a plain upstream: nobody
        r = await get(http, gw, "/api/x")
        assert r.status == 401
        assert r.header_values("www-authenticate")[0].startswith(b"Bearer")
        r = await get(http, gw, "/api/x", [("authorization", "Bearer not.a.token")])
        assert r.status == 401
        assert b'error="invalid_token"' in r.header_values("www-authenticate")[0]
        r = await get(http, gw, "/api/x", [("x-api-key", "wrong")])
        assert r.status == 401
        r = await get(http, gw, "/api/x?api_key=" + API_KEYS["bob"])
        assert r.status == 200
        assert echoed(r.body)["x-auth-user"] == ["apikey:bob"]
        r = await get(http, gw, "/admin/x", key("alice"))
        assert r.status == 403
        r = await get(http, gw, "/admin/x", key("root"))
        assert r.status == 200
        seen = len(echo.seen)
        for bad in ("/public/../api/x", "/public/%2e%2e/api", "/public//x", "/public/..%2Fapi"):
            r = await get(http, gw, bad, key("alice"))
            assert r.status == 400, bad
        assert len(echo.seen) == seen  # never forwarded
    answered = gw.statistics().answered
    assert answered["bad_path"] == 4 and answered["auth_403"] == 1


async def test_429_for_the_noisy_identity_only(gateway: tuple[Gateway, EchoUpstream],
                                               pki: PKI) -> None:
    gw, _ = gateway  # rate 2/s, burst 3, by identity
    async with HTTPClient(client_context(pki.ca)) as http:
        statuses = [(await get(http, gw, "/api/x", key("alice"))).status for _ in range(8)]
        assert statuses[:3] == [200, 200, 200] and statuses.count(429) >= 4
        r = await get(http, gw, "/api/x", key("alice"))
        assert r.status == 429
        assert int(r.header_values("retry-after")[0]) >= 1
        assert r.header_values("ratelimit")[0].startswith(b'"default";r=0')
        r = await get(http, gw, "/api/x", key("bob"))  # another identity is served
        assert r.status == 200
        assert r.header_values("ratelimit-policy") == [b'"default";q=3;w=2']


async def test_event_stream_is_forwarded_without_buffering(
        gateway: tuple[Gateway, EchoUpstream], pki: PKI) -> None:
    gw, echo = gateway
    async with HTTPClient(client_context(pki.ca)) as http:
        with trio.fail_after(10):
            async with http.stream("GET", url(gw, "/api/events"), headers=key("alice")) as r:
                assert r.status == 200
                assert r.header_values("content-type") == [b"text/event-stream"]
                assert r.header_values("x-upstream-private") == []  # Connection-listed
                chunks = r.chunks()
                # The second event does not exist yet: the first must arrive alone.
                assert await chunks.__anext__() == b"data: one\n\n"
                echo.release.set()
                assert await chunks.__anext__() == b"data: two\n\n"
                async for _ in chunks:
                    pass


async def test_client_auth_modes(pki: PKI, tmp_path: Path, nursery: trio.Nursery) -> None:
    other = client_context(pki.ca, pki.other / "admin.pem", pki.other / "admin.key")
    for mode in ("request", "require", "verify"):
        gw, _ = await start(pki, tmp_path / mode, nursery, client_auth=mode)
        async with HTTPClient(client_context(pki.ca)) as anon, \
                HTTPClient(client_context(pki.ca, *pki.pair("admin"))) as cert, \
                HTTPClient(other) as forged:
            if mode == "request":
                assert (await get(anon, gw, "/public/x")).status == 200
            else:  # require, verify: no certificate, no TLS
                with pytest.raises((trio.BrokenResourceError, ssl.SSLError, OSError)):
                    await get(anon, gw, "/public/x")
            assert (await get(cert, gw, "/public/x")).status == 200
            # A certificate that fails verification is refused, never taken for "none".
            with pytest.raises((trio.BrokenResourceError, ssl.SSLError, OSError)):
                await get(forged, gw, "/public/x")
        gw.shutdown()


def test_noop_only_on_loopback(pki: PKI, tmp_path: Path) -> None:
    raw = gateway_config(pki, tmp_path, upstream={
        "kind": "http", "endpoints": ["https://127.0.0.1:1"]}, address="0.0.0.0:8443")
    path = write_config(tmp_path, raw)
    with pytest.raises(ConfigError, match="loopback"):
        load(path, env={"AUTH_TYPE": "noop"})
    gw = Gateway(load(path, env={"AUTH_TYPE": "noop"}, allow_insecure_guest=True))
    assert gw.config.auth.type == "noop"


def test_traceparent_is_validated() -> None:
    good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert trace_parent(good) == good
    for bad in (b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01", b"zz", b"00-XYZ",
                good + b"\r\nx: 1", None):
        fresh = trace_parent(bad)
        assert fresh != bad and re.fullmatch(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-01", fresh)


async def test_a_request_that_may_have_run_is_never_sent_twice(
        pki: PKI, tmp_path: Path, nursery: trio.Nursery) -> None:
    """Endpoints: a refused port, one that takes the request and drops the connection, then a
    working one. A refused connection moves any request on; a dropped one moves on only a
    request that is safe to repeat (GET, or a POST with an Idempotency-Key)."""
    echo = EchoUpstream(pki)
    await echo.start(nursery)
    ctx = server_context(pki.ca, *pki.pair("n1"), require_client_auth=False)
    taken: list[bytes] = []

    async def drop(tcp: trio.SocketStream) -> None:
        tls = trio.SSLStream(tcp, ctx, server_side=True)
        try:
            taken.append(await tls.receive_some(65536))
        except trio.BrokenResourceError:
            pass
        await trio.aclose_forcefully(tls)

    (dropper,) = await nursery.start(partial(trio.serve_tcp, drop, 0, host="127.0.0.1"))
    (refused,) = free_ports(1)
    endpoints = [f"https://127.0.0.1:{refused}",
                 f"https://127.0.0.1:{dropper.socket.getsockname()[1]}", echo.url]
    raw = gateway_config(pki, tmp_path / "gw", upstream={
        "kind": "http", "endpoints": endpoints, "tls": {"ca_file": str(pki.ca)}})
    gw = Gateway(load(write_config(tmp_path / "gw", raw), env={}))
    await nursery.start(gw.run)
    async with HTTPClient(client_context(pki.ca)) as http:
        with trio.fail_after(10):
            r = await http.request("POST", url(gw, "/api/once"), headers=key("alice"),
                                   body=b"x")
            assert r.status == 502 and len(taken) == 1
            assert not [s for s in echo.seen if s.path == "/api/once"]
            r = await http.request("POST", url(gw, "/api/keyed"), body=b"x", headers=[
                *key("alice"), ("idempotency-key", "k1")])
            assert r.status == 200 and len(taken) == 2
            r = await http.request("GET", url(gw, "/api/get"), headers=key("alice"))
            assert r.status == 200 and len(taken) == 3
    gw.shutdown()
    echo.server.shutdown()


async def test_a_metrics_listener_answers_its_own_metrics(pki: PKI, tmp_path: Path,
                                                          nursery: trio.Nursery) -> None:
    """`metrics: true` on a listener serves the gateway's registry there, ahead of the routes;
    a listener without it forwards /metrics like any other path (here: 401, no credential)."""
    echo = EchoUpstream(pki)
    await echo.start(nursery)
    raw = gateway_config(pki, tmp_path / "gw", upstream={
        "kind": "http", "endpoints": [echo.url], "tls": {"ca_file": str(pki.ca)}})
    raw["listeners"].append({**raw["listeners"][0], "name": "status", "metrics": True})
    gw = Gateway(load(write_config(tmp_path / "gw", raw), env={}))
    await nursery.start(gw.run)
    async with HTTPClient(client_context(pki.ca)) as http:
        assert (await get(http, gw, "/api/x", key("alice"))).status == 200
        assert (await get(http, gw, "/api/x")).status == 401
        assert (await get(http, gw, "/metrics")).status == 401  # the data listener: a route
        with trio.fail_after(10):
            r = await http.request(
                "GET", f"https://127.0.0.1:{gw.ports['status']}/metrics")
    assert r.status == 200 and r.header_values("content-type")[0].startswith(b"text/plain")
    text = r.body.decode()
    # one allowed, two refused (no credential: /api/x, and /metrics on the data listener)
    assert 'loom_gateway_requests_total{method="GET",result="2xx",route="api"} 1.0' in text
    assert 'loom_gateway_requests_total{method="GET",result="4xx",route="api"} 2.0' in text
    gw.shutdown()
    echo.server.shutdown()


async def test_an_answer_that_arrived_whole_is_passed_on_whole(
        gateway: tuple[Gateway, EchoUpstream], pki: PKI) -> None:
    gw, echo = gateway
    forwarder = next(iter(gw._forwarders.values()))
    who = gw._state.chain.guest

    def request(method: str, path: str) -> Request:
        return Request(method=method, target=path, path=path, query="",
                       headers=((b"host", b"gw"),), body=b"", remote="127.0.0.1:1",
                       peer_certificate=None)

    with trio.fail_after(10):
        answer = await forwarder.forward(request("GET", "/api/x"), who)
        # A small answer arrives with its head: one complete response, its connection back in
        # the pool before the caller has written a byte of it.
        assert isinstance(answer, Response)
        assert json.loads(answer.body)["target"] == "/api/x"
        assert dict(answer.headers)[b"content-length"] == b"%d" % len(answer.body)
        assert b"keep-alive" not in dict(answer.headers)  # hop-by-hop, dropped either way
        assert forwarder.client.statistics().connections_idle == 1
        # HEAD: the upstream's Content-Length describes a body it does not send; the streamed
        # form passes it on as it is.
        head = await forwarder.forward(request("HEAD", "/api/x"), who)
        assert isinstance(head, StreamingResponse)
        assert int(dict(head.headers)[b"content-length"]) > 0
        async with aclosing(head.chunks) as chunks:  # type: ignore[type-var]
            assert [c async for c in chunks] == []
        # An answer still being produced streams.
        events = await forwarder.forward(request("GET", "/api/events"), who)
        assert isinstance(events, StreamingResponse)
        echo.release.set()
        async with aclosing(events.chunks) as chunks:  # type: ignore[type-var]
            assert b"".join([c async for c in chunks]) == b"data: one\n\ndata: two\n\n"
        stats = forwarder.client.statistics()  # each read to its end: one connection, reused
        assert (stats.connections_made, stats.connections_idle) == (1, 1)
    async with HTTPClient(client_context(pki.ca)) as http:  # and through the listener
        with trio.fail_after(10):
            r = await http.request("HEAD", url(gw, "/api/x"), headers=key("alice"))
            assert r.status == 200 and r.body == b""
            assert int(r.header_values("content-length")[0]) > 0
            # The upstream connection of a HEAD goes back to the pool (it once leaked: the
            # server never closed a HEAD answer's stream).
            while forwarder.client.statistics().connections_idle != 1:
                await trio.sleep(0.01)
