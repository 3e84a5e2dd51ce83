"""Traces: a real node exports its request spans over OTLP/HTTP to a small receiver (trio + h11,
decoded with opentelemetry-proto); the caller's traceparent, in the binary protocol's header map,
makes the node's span a child of the gateway's; and loom-gateway, in process in front of a node's
HTTP door, exports its own span, the parent of the node's."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from loom.gateway.app import Gateway
from loom.gateway.config import ConfigError, load, parse
from loom.http import HTTPClient
from loom.node.config import TraceConfig
from loom.obs.tracing import TraceSettings, Tracing, parent_context
from loom.security.tls import client_context
from loom.wire.codec import parse_request, valid_traceparent
from tests.conftest import PKI, NodeFactory
from tests.gateway.proxy_support import API_KEYS, gateway_config, write_config
from tests.http_door.conftest import http_as, start_http_node
from tests.node.conftest import Dial

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@dataclass
class Receiver:
    """An OTLP/HTTP traces endpoint: every exported span, as (service name, span)."""

    port: int = 0
    spans: list[tuple[str, Any]] = field(default_factory=list)
    posts: int = 0
    arrived: trio.Event = field(default_factory=trio.Event)

    async def handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        body = b""
        async with stream:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    assert event.method == b"POST" and event.target == b"/v1/traces", event
                    assert (b"content-type", b"application/x-protobuf") in event.headers
                    body = b""
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    self._take(body)
                    reply = ExportTraceServiceResponse().SerializeToString()
                    out = conn.send(h11.Response(status_code=200, headers=[
                        ("content-type", "application/x-protobuf"),
                        ("content-length", str(len(reply)))]))
                    await stream.send_all((out or b"") + (conn.send(h11.Data(data=reply)) or b"")
                                          + (conn.send(h11.EndOfMessage()) or b""))
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
                else:
                    return

    def _take(self, body: bytes) -> None:
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        self.posts += 1
        for rs in req.resource_spans:
            service = next(a.value.string_value for a in rs.resource.attributes
                           if a.key == "service.name")
            for ss in rs.scope_spans:
                self.spans.extend((service, s) for s in ss.spans)
        self.arrived.set()


@pytest.fixture
async def receiver(nursery: trio.Nursery) -> AsyncIterator[Receiver]:
    r = Receiver()
    listeners = await nursery.start(partial(trio.serve_tcp, r.handle, 0, host="127.0.0.1"))
    r.port = listeners[0].socket.getsockname()[1]
    yield r


def test_the_header_maps_traceparent_is_a_trace_context_not_an_identity_header() -> None:
    req = parse_request({"v": 1, "id": 7, "op": 1, "h": {"traceparent": TP, "X-Auth-User": "a"}})
    assert req.trace == TP and dict(req.headers) == {"X-Auth-User": "a"}
    bad = parse_request({"v": 1, "id": 7, "op": 1, "h": {"traceparent": "00-zz"}})
    assert bad.trace == "" and not bad.headers  # invalid: ignored, the request still served
    assert valid_traceparent(TP.replace("4bf9", "0000").replace("2f3577b34da6a3ce929d0e0e4736",
                                                                "0" * 28)) == ""
    assert valid_traceparent("ff" + TP[2:]) == ""
    assert parent_context("") is None and parent_context(TP) is not None


@pytest.mark.timeout(60)
async def test_one_requests_spans_reach_the_collector_from_gateway_to_node(
        start_node: NodeFactory, dial: Dial, receiver: Receiver) -> None:
    endpoint = f"http://127.0.0.1:{receiver.port}/v1/traces"
    node = await start_node(trace=TraceConfig(endpoint=endpoint))
    tracing = node.dispatcher.tracing
    assert tracing is not None
    # The gateway's side, as loom-gateway calls it: a CLIENT span, and its traceparent forwarded.
    gateway = Tracing(TraceSettings(endpoint, service_name="loom-gateway", instance="edge"))
    gw_span, forwarded = gateway.outgoing("PUT /v1/maps/{name}/{key}", TP)
    conn = await dial(node, "admin", hello=True)
    resp = await conn.request("MAP_PUT", headers={"traceparent": forwarded},
                              name="m", key="k", value=b"v")
    assert resp["s"] == 0, resp  # a trace context from a plain client is no identity assertion
    gateway.end(gw_span, "ok")
    other = await conn.request("MAP_GET", name="m", key="k")  # no parent: a trace of its own
    assert other["s"] == 0, other
    await trio.to_thread.run_sync(tracing.force_flush)
    await trio.to_thread.run_sync(gateway.shutdown)
    with trio.fail_after(20):
        while len(receiver.spans) < 3:  # the gateway's and two of the node's
            receiver.arrived = trio.Event()
            await receiver.arrived.wait()
    trace_id = bytes.fromhex(TP.split("-")[1])
    ours = [(svc, s) for svc, s in receiver.spans if s.trace_id == trace_id]
    by_service = {svc: [s for v, s in ours if v == svc] for svc, _ in ours}
    (gw,) = by_service["loom-gateway"]
    assert gw.parent_span_id == bytes.fromhex(TP.split("-")[2])  # the caller upstream
    node_spans = by_service["loomd"]
    (child,) = node_spans
    assert child.name == "MAP_PUT" and child.parent_span_id == gw.span_id
    assert [e.name for e in child.events] == ["acl", "propose", "applied"]
    attrs = {a.key: a.value.string_value for a in child.attributes}
    assert attrs["loom.result"] == "ok" and attrs["loom.node"] == "n1"
    assert attrs["loom.listener"] == "client"
    roots = [s for _, s in receiver.spans if s.name == "MAP_GET"]
    assert len(roots) == 1 and not roots[0].parent_span_id and roots[0].trace_id != trace_id
    assert [e.name for e in roots[0].events] == ["acl", "read", "applied"]
    st = tracing.statistics()
    assert st.spans_started == st.spans_sampled == 2  # HELLO is the connection's, not traced


@pytest.mark.timeout(60)
async def test_an_http_requests_span_is_the_child_of_its_traceparent_header(
        start_node: NodeFactory, pki: PKI, receiver: Receiver) -> None:
    endpoint = f"http://127.0.0.1:{receiver.port}/v1/traces"
    node = await start_http_node(start_node, trace=TraceConfig(endpoint=endpoint))
    async with http_as(pki, node, "reader") as reader:
        r = await reader.call("GET", "/v1/cluster", headers=[("traceparent", TP)])
        assert r.status == 200, r.body
    assert node.dispatcher.tracing is not None
    await trio.to_thread.run_sync(node.dispatcher.tracing.force_flush)
    with trio.fail_after(20):
        while not receiver.spans:
            receiver.arrived = trio.Event()
            await receiver.arrived.wait()
    ((service, span),) = receiver.spans
    assert service == "loomd" and span.name == "CLUSTER_STATUS"
    assert span.trace_id.hex() == TP.split("-")[1] and span.parent_span_id.hex() == TP[36:52]
    attrs = {a.key: a.value.string_value for a in span.attributes}
    assert attrs["loom.listener"] == "http" and attrs["loom.result"] == "ok"


async def test_the_audit_record_carries_the_binary_traceparent(
        start_node: NodeFactory, dial: Dial) -> None:
    node = await start_node()
    assert node.dispatcher.tracing is None  # off by default: no SDK object at all
    conn = await dial(node, "reader", hello=True)
    resp = await conn.request("MAP_PUT", headers={"traceparent": TP}, name="m", key="k",
                              value=b"v")
    assert resp["s"] == 3, resp  # the reader may not write: a denial, audited
    with trio.fail_after(5):
        while not any(TP in line for line in node.sink.lines):
            await trio.sleep(0.01)
    rec = next(json.loads(x) for x in node.sink.lines if TP in x)
    assert rec["request_id"] == TP and rec["result"] == "denied"


def _gateway_raw(pki: PKI, d: Path, node_port: int) -> dict[str, Any]:
    return gateway_config(pki, d, upstream={
        "kind": "loom", "endpoints": [f"https://127.0.0.1:{node_port}"], "tls": {
            "ca_file": str(pki.ca), "cert_file": str(pki.dir / "edge.pem"),
            "key_file": str(pki.dir / "edge.key")}})


@pytest.mark.timeout(60)
async def test_the_gateways_span_is_the_parent_of_the_nodes(
        start_node: NodeFactory, pki: PKI, tmp_path: Path, nursery: trio.Nursery,
        receiver: Receiver) -> None:
    endpoint = f"http://127.0.0.1:{receiver.port}/v1/traces"
    node = await start_http_node(start_node, trace=TraceConfig(endpoint=endpoint))
    assert node.http is not None and node.dispatcher.tracing is not None
    raw = _gateway_raw(pki, tmp_path / "gw", node.http.port)
    raw["trace"] = {"endpoint": endpoint, "service_name": "edge"}
    gw = Gateway(load(write_config(tmp_path / "gw", raw), env={}))
    assert gw.tracing is not None
    await nursery.start(gw.run)
    async with HTTPClient(client_context(pki.ca)) as http:
        with trio.fail_after(10):
            r = await http.request("PUT", f"https://127.0.0.1:{gw.ports['https']}/v1/maps/m/k",
                                   body=b"v", headers=[("x-api-key", API_KEYS["root"]),
                                                       ("traceparent", TP)])
        assert r.status == 200, r.body
    await trio.to_thread.run_sync(node.dispatcher.tracing.force_flush)
    await trio.to_thread.run_sync(gw.tracing.force_flush)
    with trio.fail_after(20):
        while len(receiver.spans) < 2:
            receiver.arrived = trio.Event()
            await receiver.arrived.wait()
    assert {svc for svc, _ in receiver.spans} == {"edge", "loomd"}
    ((_, edge),) = [(v, s) for v, s in receiver.spans if v == "edge"]
    ((_, child),) = [(v, s) for v, s in receiver.spans if v == "loomd"]
    # One trace: the caller's; the gateway's span is its child, and the node's the gateway's.
    assert edge.trace_id.hex() == child.trace_id.hex() == TP.split("-")[1]
    assert edge.parent_span_id.hex() == TP.split("-")[2]
    assert child.parent_span_id == edge.span_id and child.name == "MAP_PUT"
    assert edge.name == "PUT api" and edge.kind == 2  # SPAN_KIND_SERVER
    attrs = {a.key: a.value for a in edge.attributes}
    assert attrs["loom.route"].string_value == "api"
    assert attrs["http.request.method"].string_value == "PUT"
    assert attrs["http.response.status_code"].int_value == 200
    assert attrs["loom.auth.method"].string_value == "api_key"
    assert attrs["loom.result"].string_value == "ok"
    assert not any(API_KEYS["root"] in str(a) for a in edge.attributes)  # never a credential
    raw["trace"]["sample_ratio"] = 0.5
    with pytest.raises(ConfigError, match="trace changed"):  # built at start: a restart
        gw.reload(load(write_config(tmp_path / "gw", raw), env={}))
    gw.shutdown()


def test_the_gateways_trace_section_is_validated(pki: PKI, tmp_path: Path) -> None:
    raw = _gateway_raw(pki, tmp_path / "gw", 1)
    assert parse(raw, env={}).trace is None  # absent: off
    raw["trace"] = {"endpoint": "http://127.0.0.1:4318/v1/traces", "sample_ratio": 0.25}
    t = parse(raw, env={}).trace
    assert t is not None and t.sample_ratio == 0.25 and t.service_name == "loom-gateway"
    for bad, key in (({"endpoint": "127.0.0.1:4318"}, "trace.endpoint"),
                     ({"sample_ratio": 0.5}, "trace.endpoint"),
                     ({"endpoint": "http://c/v1/traces", "sample_ratio": 1.5},
                      "trace.sample_ratio"),
                     ({"endpoint": "http://c/v1/traces", "max_queue": 0}, "trace.max_queue"),
                     ({"endpoint": "http://c/v1/traces", "sampel_ratio": 1},
                      "trace.sampel_ratio")):
        raw["trace"] = bad
        with pytest.raises(ConfigError) as e:
            parse(raw, env={})
        assert e.value.key == key, (bad, e.value)
