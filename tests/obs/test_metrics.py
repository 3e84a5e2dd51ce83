"""GET /metrics on a real node: Prometheus text from the node's own registry, behind the ACL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from loom.node.server import Node
from loom.obs.metrics import CONTENT_TYPE, READINGS, NodeMetrics, Reading
from loom.wire import routes
from tests.conftest import PKI, NodeFactory
from tests.http_door.conftest import Http, header, http_as, start_http_node
from tests.node.conftest import READER_P, Dial, audit_flushed, policy_with, records

As = Callable[[str | None], Awaitable[Http]]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, parsed by prometheus_client's own parser."""
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(s: Samples, name: str, **labels: str) -> float | None:
    return s.get((name, frozenset(labels.items())))


def test_readings_follow_the_naming_rules_and_are_unique() -> None:
    names = [r.name for r in READINGS]
    assert len(names) == len(set(names))
    for r in READINGS:
        assert r.name.startswith("loom_") and not r.name.endswith("_total"), r.name
        assert r.kind in ("gauge", "counter"), r.name
    assert routes.match("GET", "/metrics") and routes.METRICS_MEDIA == CONTENT_TYPE


def test_a_reading_is_one_row_and_absent_values_export_nothing() -> None:
    stats: dict[str, Any] = {"log": {"term": 7, "role": "leader"}, "connections": 2}
    extra = Reading("loom_test_things", "Things.", "log.things")
    m = NodeMetrics(lambda: stats, (*READINGS, extra))
    s = samples(m.exposition().decode())
    assert value(s, "loom_raft_term") == 7
    assert value(s, "loom_raft_role", role="leader") == 1
    assert value(s, "loom_raft_role", role="follower") == 0
    assert value(s, "loom_connections", listener="client") == 2
    assert value(s, "loom_connections", listener="http") is None  # no HTTP part: not made up
    stats["peer"] = {"peers": {"n2": {"inbound": True}, "n3": {"inbound": False}}}
    assert value(samples(m.exposition().decode()), "loom_connections", listener="peer") == 1
    assert value(s, "loom_test_things") is None
    stats["log"]["things"] = 3  # read at scrape time, from the document of that moment
    assert value(samples(m.exposition().decode()), "loom_test_things") == 3


def test_requests_are_counted_with_cached_children() -> None:
    m = NodeMetrics(dict)
    for _ in range(3):
        m.observe("MAP_PUT", "http", "ok", 0.002)
    m.observe("MAP_PUT", "client", "denied", 0.0001)
    s = samples(m.exposition().decode())
    assert value(s, "loom_requests_total", type="MAP_PUT", listener="http", result="ok") == 3
    assert value(s, "loom_request_duration_seconds_count", type="MAP_PUT",
                 listener="http") == 3
    assert value(s, "loom_request_duration_seconds_bucket", type="MAP_PUT", listener="http",
                 le="0.001") == 0
    assert value(s, "loom_request_duration_seconds_bucket", type="MAP_PUT", listener="http",
                 le="0.0025") == 3
    st = m.statistics()
    assert (st.observed, st.series) == (4, 2)


async def test_metrics_over_http_count_both_listeners(as_: As, hnode: Node, dial: Dial) -> None:
    admin = await as_("admin")
    for i in range(3):
        r = await admin.call("PUT", f"/v1/maps/secret-structure/secret-key-{i}", body=b"v")
        assert r.status == 200, r.body
    conn = await dial(hnode, "writer", hello=True)
    assert (await conn.request("MAP_PUT", name="m", key="k", value=b"v"))["s"] == 0
    assert (await conn.request("MAP_DELETE", name="m", key="k"))["s"] != 0  # denied
    r = await admin.call("GET", "/metrics")
    assert r.status == 200, r.body
    assert header(r, "content-type") == CONTENT_TYPE
    text = r.body.decode()
    s = samples(text)
    assert value(s, "loom_requests_total", type="MAP_PUT", listener="http", result="ok") == 3
    assert value(s, "loom_requests_total", type="MAP_PUT", listener="client", result="ok") == 1
    assert value(s, "loom_requests_total", type="MAP_DELETE", listener="client",
                 result="denied") == 1
    assert value(s, "loom_request_duration_seconds_count", type="MAP_PUT", listener="http") == 3
    assert value(s, "loom_raft_role", role="leader") == 1
    term, commit = value(s, "loom_raft_term"), value(s, "loom_raft_commit_index")
    assert term is not None and term >= 1 and commit is not None and commit >= 5
    assert value(s, "loom_raft_applied_index") is not None
    assert value(s, "loom_raft_proposals_pending") == 0
    assert value(s, "loom_connections", listener="http") == 1
    assert value(s, "loom_connections", listener="client") == 1
    assert value(s, "loom_http_requests_in_flight") == 1  # this scrape
    assert value(s, "loom_http_responses_total", code="200") == 3
    assert value(s, "loom_audit_dropped_total") == 0
    assert value(s, "loom_audit_queued", lane="priority") is not None
    # Labels are bounded: no key, structure or principal ever becomes one.
    for secret in ("secret-structure", "secret-key", "spiffe://", "writer"):
        assert secret not in text
    # The scrape itself went the one path: counted and audited as METRICS_GET.
    await audit_flushed(hnode)
    assert any(x.get("command") == "METRICS_GET" and x["result"] == "ok"
               for x in records(hnode))
    s = samples((await admin.call("GET", "/metrics")).body.decode())
    assert value(s, "loom_requests_total", type="METRICS_GET", listener="http",
                 result="ok") == 1


async def test_who_may_scrape_is_an_acl_grant(pki: PKI, start_node: NodeFactory) -> None:
    # The reader's class:read grant does not cover METRICS_GET (an admin type) ...
    node = await start_http_node(start_node)
    async with http_as(pki, node, "reader") as reader:
        r = await reader.call("GET", "/metrics")
        assert r.status == 403, r.body
        assert header(r, "content-type") == "application/problem+json"
    await audit_flushed(node)
    assert any(x.get("command") == "METRICS_GET" and x["result"] == "denied"
               and x["principal"] == READER_P for x in records(node))


async def test_a_scraper_role_granted_metrics_get_alone(pki: PKI, tmp_path: Any,
                                                        start_node: NodeFactory) -> None:
    acl = policy_with({"scraper": {"grants": [{"types": ["METRICS_GET"]}]}},
                      {READER_P: ["scraper"]})
    node = await start_http_node(start_node, acl=acl)
    async with http_as(pki, node, "reader") as scraper:
        r = await scraper.call("GET", "/metrics")
        assert r.status == 200 and b"loom_raft_term" in r.body
        r = await scraper.call("GET", "/v1/maps/m/k")  # nothing else
        assert r.status == 403


async def test_raft_storage_state_and_audit_metrics_after_writes(as_: As, hnode: Node) -> None:
    admin = await as_("admin")
    for i in range(5):
        r = await admin.call("PUT", f"/v1/maps/m/k{i}", body=b"v" * 100)
        assert r.status == 200, r.body
    await audit_flushed(hnode)
    s = samples((await admin.call("GET", "/metrics")).body.decode())

    def at_least(name: str, n: float, **labels: str) -> None:
        v = value(s, name, **labels)
        assert v is not None and v >= n, (name, labels, v)

    # Observed once per persisted batch: every write was its own batch here (one client).
    at_least("loom_raft_batch_entries_count", 5)
    at_least("loom_raft_append_duration_seconds_count", 5)
    at_least("loom_raft_fsync_duration_seconds_count", 5)
    fsyncs = value(s, "loom_wal_fsyncs_total")
    assert fsyncs is not None and fsyncs >= 5
    # Every sync since the node served is timed (the ones during recovery are only counted).
    assert 5 <= (value(s, "loom_raft_fsync_duration_seconds_count") or 0) <= fsyncs
    at_least("loom_wal_written_bytes_total", 5 * 100)
    at_least("loom_wal_segments", 1)
    assert value(s, "loom_disk_full_events_total") == 0
    assert value(s, "loom_state_structures", kind="MAP") == 1
    at_least("loom_state_estimated_bytes", 5 * 100, kind="MAP")
    assert value(s, "loom_state_structures", kind="QUEUE") == 0
    assert value(s, "loom_state_sessions") == 0
    assert value(s, "loom_raft_apply_lag") == 0
    assert value(s, "loom_raft_has_leader") == 1
    at_least("loom_raft_leader_changes_total", 1)
    at_least("loom_audit_sink_write_duration_seconds_count", 1)
    at_least("loom_audit_emitted_total", 5)
    at_least("loom_tls_handshakes_total", 1, listener="http")
    assert value(s, "loom_raft_lease_reads_total") == 0  # a single voter needs no lease
    assert value(s, "loom_client_handshaking") == 0
