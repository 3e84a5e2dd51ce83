"""The route table on its own (pure): derived from the catalog, documented, strict."""

from __future__ import annotations

from pathlib import Path

import pytest

from loom.wire import catalog, routes
from loom.wire.errors import BadRequest

DOC = Path(__file__).resolve().parents[2] / "docs" / "http.md"


def test_docs_http_md_ends_with_the_generated_reference() -> None:
    text = DOC.read_text(encoding="utf-8")
    generated = routes.render()
    assert text.endswith(generated), (
        "docs/http.md is stale: keep the written part and replace everything from "
        "'# HTTP API reference (generated)' with `python -m loom.wire.routes`")


def test_every_client_type_has_a_call_route_and_nothing_else_does() -> None:
    client = {mt.name for mt in catalog.client_types()}
    assert len(client) >= 86
    for name in client:
        m = routes.match("POST", f"/v1/call/{name}")
        assert isinstance(m, routes.Match) and m.route is None and m.mt.name == name
        assert routes.match("GET", f"/v1/call/{name}") == ("POST",)
    for mt in catalog.BY_NAME.values():
        if mt.listener is catalog.Listener.PEER:
            assert routes.match("POST", f"/v1/call/{mt.name}") == ()


def test_resource_routes_follow_the_catalogs_execution_column() -> None:
    reads = catalog.names_with(catalog.Execution.LOG_READ) | catalog.names_with(
        catalog.Execution.LOCAL)
    for r in routes.ROUTES:
        assert (r.method == "GET") == (r.type_name in reads), r
        assert (r.method == "GET") != catalog.BY_NAME[r.type_name].is_write


@pytest.mark.parametrize(("method", "path", "name", "fields"), [
    ("GET", "/v1/maps/m/k", "MAP_GET", {"name": "m", "key": "k"}),
    ("PUT", "/v1/maps/m/a%2Fb%20c", "MAP_PUT", {"name": "m", "key": "a/b c"}),
    ("GET", "/v1/maps/m", "MAP_SCAN", {"name": "m"}),
    ("POST", "/v1/queues/q/poll", "QUEUE_POLL", {"name": "q"}),
    ("GET", "/v1/cluster/members", "MEMBER_LIST", {}),
    ("GET", "/v1/topics/t", "TOPIC_SUBSCRIBE", {"name": "t"}),
])
def test_match(method: str, path: str, name: str, fields: dict[str, str]) -> None:
    m = routes.match(method, path)
    assert isinstance(m, routes.Match), m
    assert m.mt.name == name and dict(m.path_fields) == fields


def test_no_route_and_wrong_method() -> None:
    assert routes.match("GET", "/v1/nothing") == ()
    assert routes.match("GET", "/v1/maps/m/k/extra") == ()
    assert routes.match("GET", "/v1/maps//k") == ()  # an empty name is no name
    assert set(routes.match("POST", "/v1/maps/m/k")) == {"GET", "PUT", "DELETE"}  # type: ignore[arg-type]
    with pytest.raises(BadRequest):
        routes.match("GET", "/v1/maps/m/%ff")


def test_to_body_types_fields_and_refuses_repeats_and_unknowns() -> None:
    m = routes.match("PUT", "/v1/maps/m/k")
    assert isinstance(m, routes.Match)
    assert routes.to_body(m, [("ttl_ms", "500")], b"v", None) == {
        "name": "m", "key": "k", "ttl_ms": 500, "value": b"v"}
    with pytest.raises(BadRequest, match="integer"):
        routes.to_body(m, [("ttl_ms", "soon")], b"v", None)
    with pytest.raises(BadRequest, match="unknown query"):
        routes.to_body(m, [("return_old", "true")], b"v", None)
    with pytest.raises(BadRequest, match="more than once"):
        routes.to_body(m, [("ttl_ms", "1"), ("ttl_ms", "2")], b"v", None)
    m = routes.match("GET", "/v1/lists/l")
    assert isinstance(m, routes.Match)
    assert routes.to_body(m, [("stop", "5")], None, None) == {"name": "l", "start": 0, "stop": 5}
    m = routes.match("POST", "/v1/batch")
    assert isinstance(m, routes.Match)
    with pytest.raises(BadRequest, match="cannot be given"):
        routes.to_body(m, [("ops", "x")], None, None)
    assert routes.to_body(m, [], None, {"ops": []}) == {"ops": []}


def test_a_bad_route_is_refused_at_import() -> None:
    bad = [
        routes.Route("GET", "/v1/x/{name}", "MAP_PUT", "a write as GET"),
        routes.Route("POST", "/v1/x/{name}", "MAP_GET", "a read as POST", query=("key",)),
        routes.Route("GET", "/v1/x/{name}", "MAP_GET", "key has no source"),
        routes.Route("GET", "/v1/x/{name}/{nope}", "MAP_GET", "not a field"),
        routes.Route("POST", "/v1/x", "RAFT_HEARTBEAT", "a peer type"),
    ]
    for r in bad:
        with pytest.raises(ValueError):
            routes._check(r)
