"""The HTTP door on a real node: the one request path, values, errors, sessions, topics."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import replace
from typing import Any

import trio

from loom.node.config import HttpConfig, Limits
from loom.node.server import Node
from loom.security.tls import client_context
from loom.wire import catalog
from tests.conftest import PKI, NodeFactory
from tests.http_door.conftest import Http, doc, header, http_as, start_http_node
from tests.node.conftest import ADMIN_P, audit_flushed, records

As = Callable[[str | None], Awaitable[Http]]


def b64(v: bytes) -> str:
    return base64.b64encode(v).decode()


async def test_map_routes_raw_values_and_json_replies(as_: As) -> None:
    admin = await as_("admin")
    r = await admin.call("PUT", "/v1/maps/m/a%2Fb", body=b"\x00\xffraw",
                         headers=[("content-type", "application/octet-stream")])
    assert r.status == 200, r.body
    r = await admin.call("GET", "/v1/maps/m/a%2Fb")
    assert r.status == 200 and header(r, "content-type") == "application/json"
    assert doc(r) == {"result": b64(b"\x00\xffraw")}
    raw = [("accept", "application/octet-stream")]
    r = await admin.call("GET", "/v1/maps/m/a%2Fb", headers=raw)
    assert r.status == 200 and r.body == b"\x00\xffraw"
    r = await admin.call("GET", "/v1/maps/m/none", headers=raw)
    assert r.status == 404
    # A value sent as JSON must be JSON; it is stored as sent.
    r = await admin.call("PUT", "/v1/maps/m/j", body=b'{"a": 1}',
                         headers=[("content-type", "application/json")])
    assert r.status == 200
    r = await admin.call("PUT", "/v1/maps/m/j", body=b'{"a": ',
                         headers=[("content-type", "application/json")])
    assert r.status == 400 and header(r, "content-type") == "application/problem+json"
    r = await admin.call("GET", "/v1/maps/m?limit=10")
    assert r.status == 200
    assert {e if isinstance(e, str) else e[0] for e in _keys(doc(r)["result"])} >= {"a/b", "j"}
    r = await admin.call("DELETE", "/v1/maps/m/j")
    assert r.status == 200 and doc(r) == {"result": True}
    # /v1/call: the binary body as JSON, bytes as base64.
    r = await admin.op("MAP_PUT", {"name": "m", "key": "c", "value": b64(b"v1")})
    assert r.status == 200, r.body
    r = await admin.op("MAP_GET", {"name": "m", "key": "c"})
    assert doc(r) == {"result": b64(b"v1")}


def _keys(result: Any) -> list[Any]:
    entries = result.get("entries", result) if isinstance(result, dict) else result
    return list(entries)


async def test_every_client_type_reaches_the_dispatcher_over_http(hnode: Node, as_: As) -> None:
    admin = await as_("admin")
    for mt in sorted(catalog.client_types(), key=lambda m: m.opcode):
        before = hnode.dispatcher.stats.by_type.get(mt.name, 0)
        body: dict[str, Any] = {}
        if mt.name == "HELLO":
            body = {"client_name": "t", "min_version": 1, "max_version": 1}
        r = await admin.op(mt.name, body)
        # Reached: answered by the dispatcher (or HELLO by the door), whatever the outcome.
        assert r.status not in (404, 405, 500), (mt.name, r.status, r.body)
        if mt.name == "HELLO":
            assert r.status == 200 and doc(r)["result"]["version"] == 1
        else:
            assert hnode.dispatcher.stats.by_type.get(mt.name, 0) == before + 1, mt.name


async def test_same_acl_and_audit_as_the_binary_protocol(hnode: Node, as_: As) -> None:
    reader = await as_("reader")
    before = hnode.state.snapshot()
    r = await reader.call("PUT", "/v1/maps/m/k", body=b"v",
                          headers=[("traceparent",
                                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")])
    assert r.status == 403, r.body
    p = doc(r)
    assert p["code"] == "FORBIDDEN" and p["status"] == 403 and "MAP_PUT" in p["detail"]
    assert hnode.state.snapshot() == before
    r = await reader.call("GET", "/v1/maps/m/k")
    assert r.status == 200 and doc(r) == {"result": None}
    await audit_flushed(hnode)
    denied = [x for x in records(hnode) if x.get("command") == "MAP_PUT"]
    assert len(denied) == 1 and denied[0]["result"] == "denied"
    assert denied[0]["principal"] == "spiffe://loom.dev/client/reader"
    assert denied[0]["request_id"] == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert denied[0]["client_id"].startswith("http:127.0.0.1:")


async def test_error_statuses(hnode: Node, as_: As) -> None:
    admin = await as_("admin")
    r = await admin.call("GET", "/v1/nothing")
    assert r.status == 404 and header(r, "content-type") == "application/problem+json"
    r = await admin.call("POST", "/v1/maps/m/k")
    assert r.status == 405 and set((header(r, "allow") or "").split(", ")) == {
        "GET", "PUT", "DELETE"}
    r = await admin.op("MAP_PUT", {"name": "m", "key": "k", "value": "not base64!"})
    assert r.status == 400 and doc(r)["code"] == "BAD_REQUEST"
    r = await admin.call("POST", "/v1/call/MAP_GET", body=b'{"name": "m", "name": "n"}',
                         headers=[("content-type", "application/json")])
    assert r.status == 400 and "repeated" in doc(r)["detail"]
    r = await admin.call("PUT", "/v1/maps/m/k?stale=true", body=b"v")
    assert r.status == 400 and "stale" in doc(r)["detail"]
    sid = doc(await admin.op("SESSION_OPEN"))["result"]
    sid = sid["session_id"] if isinstance(sid, dict) else sid
    r = await admin.call("POST", f"/v1/locks/l/unlock?session_id={sid}")
    assert r.status == 409 and doc(r)["code"] == "CONFLICT", r.body
    r = await admin.op("QUEUE_CREATE", {"name": "q", "capacity": 1})
    assert r.status == 200
    assert (await admin.call("POST", "/v1/queues/q", body=b"1")).status == 200
    r = await admin.call("POST", "/v1/queues/q", body=b"2")
    assert r.status == 409 and doc(r)["code"] == "LIMIT_EXCEEDED"
    # Stale reads are opt-in and allowed on reads.
    r = await admin.call("GET", "/v1/maps/m/k?stale=true")
    assert r.status == 200


async def test_headers_the_door_reads_once(as_: As) -> None:
    """Content-Type and Idempotency-Key repeated: refused; Accept or traceparent repeated:
    taken as absent (a JSON answer, no request id); a percent-encoded key is decoded."""
    admin = await as_("admin")
    octets = ("content-type", "application/octet-stream")
    r = await admin.call("PUT", "/v1/maps/m/k", body=b"v", headers=[octets, octets])
    assert r.status == 400 and "content-type is repeated" in doc(r)["detail"]
    idem = ("idempotency-key", "abc")
    r = await admin.call("PUT", "/v1/maps/m/k", body=b"v", headers=[octets, idem, idem])
    assert r.status == 400 and "idempotency-key is repeated" in doc(r)["detail"]
    r = await admin.call("PUT", "/v1/maps/m/a%2Fb", body=b"v", headers=[octets])
    assert r.status == 200
    accept = ("accept", "application/octet-stream")
    r = await admin.call("GET", "/v1/maps/m/a%2Fb", headers=[accept])
    assert r.status == 200 and r.body == b"v"
    r = await admin.call("GET", "/v1/maps/m/a%2Fb", headers=[accept, accept])
    assert r.status == 200 and doc(r) == {"result": b64(b"v")}


async def test_body_over_max_frame_bytes_is_413(start_node: NodeFactory, pki: PKI) -> None:
    node = await start_http_node(start_node, limits=replace(Limits(), max_frame_bytes=4096))
    async with http_as(pki, node, "admin") as admin:
        r = await admin.call("PUT", "/v1/maps/m/k", body=b"x" * 5000)
        assert r.status == 413
    async with http_as(pki, node, "admin") as admin:  # the 413 closed that connection
        assert doc(await admin.call("GET", "/v1/maps/m/k")) == {"result": None}


async def test_idempotency_key_applies_once_and_answers_the_first_outcome(
        hnode: Node, as_: As) -> None:
    admin = await as_("admin")
    key = [("idempotency-key", "order-7f3a")]
    first = await admin.call("POST", "/v1/counters/c/increment", headers=key)
    again = await admin.call("POST", "/v1/counters/c/increment", headers=key)
    assert first.status == again.status == 200
    assert doc(first) == doc(again) == {"result": 1}
    other = await admin.call("POST", "/v1/counters/c/increment",
                             headers=[("idempotency-key", "order-7f3b")])
    assert doc(other) == {"result": 2}
    # Scoped by principal: the same key from another caller is another request.
    writer = await as_("writer")
    r = await writer.call("POST", "/v1/counters/c/increment", headers=key)
    assert r.status == 200
    assert doc(await admin.call("GET", "/v1/counters/c")) == {"result": 3}
    r = await admin.call("POST", "/v1/counters/c/increment", headers=[("idempotency-key", "")])
    assert r.status == 400


async def test_idempotency_key_reused_for_another_request_is_422_and_applies_nothing(
        hnode: Node, as_: As) -> None:
    admin = await as_("admin")
    key = [("idempotency-key", "put-order-9")]
    first = await admin.call("PUT", "/v1/maps/m/k", body=b"v1", headers=key)
    again = await admin.call("PUT", "/v1/maps/m/k", body=b"v1", headers=key)
    assert first.status == again.status == 200 and doc(first) == doc(again)
    assert doc(await admin.call("POST", "/v1/counters/c/increment")) == {"result": 1}
    # The same key with another body, another target, another route or another type: 422
    # problem details naming the reuse, and nothing applied.
    for method, path, body in [("PUT", "/v1/maps/m/k", b"v2"), ("PUT", "/v1/maps/m/other", b"v1"),
                               ("POST", "/v1/counters/c/increment", b"")]:
        r = await admin.call(method, path, body=body, headers=key)
        assert r.status == 422, (path, r.body)
        assert header(r, "content-type") == "application/problem+json"
        problem = doc(r)
        assert problem["code"] == "CONFLICT" and problem["reason"] == "idempotency_key_reused"
        assert "Idempotency-Key" in problem["detail"]
    r = await admin.call("POST", "/v1/call/MAP_PUT", body=json.dumps(
        {"name": "m", "key": "k", "value": b64(b"v3")}).encode(),
        headers=[*key, ("content-type", "application/json")])
    assert r.status == 422
    assert doc(await admin.call("GET", "/v1/maps/m/k")) == {"result": b64(b"v1")}
    assert doc(await admin.call("GET", "/v1/maps/m/other")) == {"result": None}
    assert doc(await admin.call("GET", "/v1/counters/c")) == {"result": 1}
    # The first request's retry still answers its own outcome.
    r = await admin.call("PUT", "/v1/maps/m/k", body=b"v1", headers=key)
    assert r.status == 200 and doc(r) == doc(first)


async def test_probes_need_no_certificate_but_everything_else_does(hnode: Node, as_: As) -> None:
    anon = await as_(None)
    r = await anon.call("GET", "/healthz")
    assert r.status == 200 and doc(r) == {"status": "ok"}
    r = await anon.call("GET", "/readyz")
    assert r.status == 200 and doc(r) == {"ready": True}
    for method, path in [("GET", "/v1/maps/m/k"), ("POST", "/v1/call/PING"),
                         ("GET", "/v1/cluster"), ("GET", "/v1/nothing")]:
        r = await anon.call(method, path)
        assert r.status == 401, (path, r.body)
    assert (await anon.call("POST", "/readyz")).status == 405


async def test_guest_mode_serves_guests_with_the_guest_roles(start_node: NodeFactory,
                                                             pki: PKI) -> None:
    node = await start_http_node(start_node, require_client_auth=False)
    async with http_as(pki, node, None) as guest:
        r = await guest.op("WHOAMI")
        assert r.status == 200 and doc(r)["result"]["principal"] == "guest"
        r = await guest.call("GET", "/v1/maps/m/k")
        assert r.status == 403


async def test_busy_when_requests_in_flight_are_exhausted(start_node: NodeFactory,
                                                          pki: PKI) -> None:
    node = await start_http_node(start_node, http=HttpConfig(max_requests_in_flight=1))
    async with (http_as(pki, node, "admin") as a, http_as(pki, node, "admin") as b,
                trio.open_nursery() as n):
        n.start_soon(a.call, "POST", "/v1/queues/empty/poll?timeout_ms=1000")
        for _ in range(200):
            if node.http is not None and node.http.in_flight:
                break
            await trio.sleep(0.01)
        r = await b.call("GET", "/v1/maps/m/k")
        assert r.status == 429 and header(r, "retry-after") == "1"
        assert doc(r)["code"] == "BUSY"
        assert node.http is not None
        st = node.http.statistics()
        assert st.refused_in_flight == 1 and st.in_flight == 1 and st.answered[429] == 1
        assert st.server.connections_open == 2


async def test_topic_long_poll_and_server_sent_events(start_node: NodeFactory,
                                                      pki: PKI) -> None:
    # A short keepalive: a stream learns that its client left at its next write.
    hnode = await start_http_node(start_node, http=HttpConfig(sse_keepalive_s=0.1))
    async with http_as(pki, hnode, "admin") as admin:
        await _topics(hnode, admin, pki)


async def _topics(hnode: Node, admin: Http, pki: PKI) -> None:
    for i in range(3):
        assert (await admin.call("POST", "/v1/topics/t", body=b"m%d" % i)).status == 200
    r = await admin.call("GET", "/v1/topics/t?from_seq=2")
    res = doc(r)["result"]
    assert [m["seq"] for m in res["messages"]] == [2, 3] and res["next_seq"] == 4
    # Long-poll: waits for the next message.
    async with trio.open_nursery() as n:
        got: list[Any] = []

        async def poll() -> None:
            got.append(doc(await admin.call("GET", "/v1/topics/t?from_seq=4&wait_ms=5000")))

        n.start_soon(poll)
        await trio.sleep(0.2)
        async with http_as(pki, hnode, "admin") as other:
            await other.call("POST", "/v1/topics/t", body=b"later")
    assert [m["value"] for m in got[0]["result"]["messages"]] == [b64(b"later")]
    # Server-sent events, resumed after event 3.
    ctx = client_context(pki.ca, *pki.pair("admin"))
    from loom.http import HTTPClient

    async with HTTPClient(ctx) as c:
        assert hnode.http is not None
        url = f"https://127.0.0.1:{hnode.http.port}/v1/topics/t"
        with trio.fail_after(10):
            async with c.stream("GET", url, headers=[("accept", "text/event-stream"),
                                                     ("last-event-id", "3")]) as s:
                assert s.status == 200
                buf = b""
                async with aclosing(s.chunks()) as chunks:
                    async for chunk in chunks:
                        buf += chunk
                        if buf.count(b"\n\n") >= 1:
                            break
    event = buf.split(b"\n\n")[0].split(b"\n")
    assert event[0] == b"id: 4" and event[1] == b"event: message"
    assert json.loads(event[2][len(b"data: "):])["value"] == b64(b"later")
    # The subscriptions of finished reads are gone (the stream's at its next keepalive).
    for _ in range(100):
        if not hnode.topics.statistics().subscriptions:
            break
        await trio.sleep(0.02)
    assert hnode.topics.statistics().subscriptions == 0


async def test_reader_may_not_subscribe_without_grant(hnode: Node, as_: As) -> None:
    guestish = await as_("writer")  # data-writer + reader: reads allowed
    r = await guestish.call("GET", "/v1/topics/t")
    assert r.status == 200
    assert ADMIN_P.startswith("spiffe://")


async def test_a_waiting_poll_whose_client_left_takes_nothing(hnode: Node, as_: As,
                                                              pki: PKI) -> None:
    async with http_as(pki, hnode, "admin") as leaving:
        with trio.move_on_after(0.3):  # the client gives up: its connection is closed
            await leaving.call("POST", "/v1/queues/q/poll?timeout_ms=10000")
    for _ in range(200):
        assert hnode.http is not None
        if not hnode.http.in_flight:
            break
        await trio.sleep(0.01)
    assert hnode.http is not None and hnode.http.in_flight == 0
    admin = await as_("admin")
    assert (await admin.call("POST", "/v1/queues/q", body=b"item")).status == 200
    await trio.sleep(0.1)
    assert doc(await admin.call("GET", "/v1/queues/q/size")) == {"result": 1}
    # A poll whose client stays is answered as usual.
    r = await admin.call("POST", "/v1/queues/q/poll?timeout_ms=1000")
    assert doc(r) == {"result": b64(b"item")}


async def test_a_denied_certificate_is_refused_on_an_open_http_connection(
        hnode: Node, as_: As, pki: PKI) -> None:
    """The deny list reaches the HTTP door per request, open keep-alive connections included
    (docs/security.md "Revocation"); other certificates are untouched."""
    from cryptography import x509

    from loom.security.revocation import Revocation

    writer, admin = await as_("writer"), await as_("admin")
    assert (await admin.call("PUT", "/v1/maps/m/k", body=b"v")).status in (200, 201, 204)
    assert (await writer.call("GET", "/v1/maps/m/k")).status == 200
    serial = x509.load_pem_x509_certificate((pki.dir / "writer.pem").read_bytes()).serial_number
    hnode.revocation = Revocation(denied_serials=[f"{serial:x}"])  # as a reload sets it
    r = await writer.call("GET", "/v1/maps/m/k")  # the same client, its connection pooled
    assert r.status == 401 and b"deny list" in r.body, (r.status, r.body)
    assert (await admin.call("GET", "/v1/maps/m/k")).status == 200
