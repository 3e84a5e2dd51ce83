"""The HTTP route table, derived from the message catalog. Pure: no I/O, no HTTP library.

Every route names one client message type: the HTTP request becomes that type's body, and from
there the request takes the one path every request takes (the dispatcher: identify, validate,
authorize, execute, audit). There are two kinds of route:

- `POST /v1/call/{TYPE}` for every client type of the catalog: the body is the type's body as a
  JSON object (bytes fields as base64 strings). Nothing is listed by hand, so a type added to
  the catalog is reachable over HTTP the moment it exists.
- Resource routes for the common operations (`GET /v1/maps/{name}/{key}` ...): the structure
  name and keys come from the path, other fields from the query string (or a JSON object body),
  and a route with a `value` takes the request body itself as the value (any bytes).

Rules a route must follow (checked at import time, below the table): its type is a client type;
a GET route's type never changes state, and a type that changes state is never a GET (reads are
`GET`, everything else `POST`, `PUT` or `DELETE`, as `catalog.names_with` promises); every path
placeholder and query parameter is a field of the type's schema, and every required field is
filled by the path, the query, the value or a default; no two routes share a method and shape.

`render()` prints the generated part of docs/http.md; tests/http_door/test_routes.py checks the
checked-in file against it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote

from loom.wire import catalog
from loom.wire.catalog import Execution, Listener, MessageType
from loom.wire.errors import BadRequest
from loom.wire.schema import Kind

__all__ = [
    "CALL_PREFIX",
    "RESERVED_QUERY",
    "ROUTES",
    "Match",
    "Route",
    "match",
    "render",
    "to_body",
]

CALL_PREFIX = "/v1/call/"
# Query parameters the adapter reads itself; never body fields. `wait_ms`: how long a topic
# long-poll waits for a first message.
RESERVED_QUERY = frozenset({"stale", "wait_ms"})
MAX_PATH_SEGMENTS = 8
METRICS_MEDIA = "text/plain; version=0.0.4; charset=utf-8"  # = loom.obs.metrics.CONTENT_TYPE


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    pattern: str  # "/v1/maps/{name}/{key}": each {field} is one path segment
    type_name: str
    doc: str
    value: str | None = None  # the body field the raw request body fills
    # Body fields the query string or a JSON object body may give (a JSON-only kind such as
    # BATCH_EXECUTE's ops is refused in the query).
    query: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    stream: bool = False  # a topic read: server-sent events or long-poll (see docs/http.md)
    # The reply is the type's result itself (bytes) with this media type, not a JSON document
    # (GET /metrics: the Prometheus text format, which scrapers read as is).
    media: str | None = None
    segments: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.pattern.strip("/").split("/")))

    @property
    def mt(self) -> MessageType:
        return catalog.BY_NAME[self.type_name]

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(s[1:-1] for s in self.segments if s.startswith("{"))


def _r(method: str, pattern: str, name: str, doc: str, *, value: str | None = None,
       query: tuple[str, ...] = (), stream: bool = False, media: str | None = None,
       **defaults: Any) -> Route:
    return Route(method, pattern, name, doc, value, query, MappingProxyType(defaults), stream,
                 media)


_PAGE = ("cursor", "limit")
ROUTES: tuple[Route, ...] = (
    # -- maps
    _r("GET", "/v1/maps/{name}", "MAP_SCAN", "A page of entries (glob `match`), with the "
       "cursor of the next page.", query=("match", *_PAGE)),
    _r("GET", "/v1/maps/{name}/{key}", "MAP_GET", "The value of key (null when absent)."),
    _r("PUT", "/v1/maps/{name}/{key}", "MAP_PUT", "Set key to the request body.",
       value="value", query=("ttl_ms",)),
    _r("DELETE", "/v1/maps/{name}/{key}", "MAP_DELETE", "Remove key; whether it existed."),
    # -- queues
    _r("POST", "/v1/queues/{name}", "QUEUE_PUSH", "Offer the request body as an item.",
       value="value"),
    _r("POST", "/v1/queues/{name}/poll", "QUEUE_POLL", "Take the head item, waiting up to "
       "`timeout_ms` (long-poll).", query=("timeout_ms",)),
    _r("GET", "/v1/queues/{name}/head", "QUEUE_PEEK", "The head item, not taken."),
    _r("GET", "/v1/queues/{name}/size", "QUEUE_SIZE", "Number of items."),
    # -- sets
    _r("GET", "/v1/sets/{name}", "SET_MEMBERS", "A page of members.", query=_PAGE),
    _r("GET", "/v1/sets/{name}/{member}", "SET_CONTAINS", "Whether member is present."),
    _r("PUT", "/v1/sets/{name}/{member}", "SET_ADD", "Add member; whether it was new."),
    _r("DELETE", "/v1/sets/{name}/{member}", "SET_REMOVE", "Remove member; whether it was "
       "present."),
    # -- lists
    _r("GET", "/v1/lists/{name}", "LIST_RANGE", "Items from `start` to `stop` inclusive "
       "(default: the first 1000).", query=("start", "stop"), start=0, stop=999),
    _r("POST", "/v1/lists/{name}", "LIST_PUSH_RIGHT", "Append the request body.",
       value="value"),
    _r("GET", "/v1/lists/{name}/{index}", "LIST_GET", "Item at index (negative: from the end)."),
    # -- counters
    _r("GET", "/v1/counters/{name}", "COUNTER_GET", "Current value."),
    _r("PUT", "/v1/counters/{name}", "COUNTER_SET", "Set the value (`value`).",
       query=("value",)),
    _r("POST", "/v1/counters/{name}/increment", "COUNTER_INCREMENT", "Add one."),
    _r("POST", "/v1/counters/{name}/add", "COUNTER_ADD", "Add `delta`.", query=("delta",)),
    # -- atomic references
    _r("GET", "/v1/refs/{name}", "ATOMIC_REF_GET", "Current value (null if unset)."),
    _r("PUT", "/v1/refs/{name}", "ATOMIC_REF_SET", "Set the value to the request body.",
       value="value"),
    # -- locks, semaphores, latches (sessions come from POST /v1/call/SESSION_OPEN)
    _r("GET", "/v1/locks/{name}", "LOCK_IS_LOCKED", "Whether held, with the fencing token."),
    _r("POST", "/v1/locks/{name}/lock", "LOCK_LOCK", "Acquire for `session_id`, waiting up to "
       "`timeout_ms`; the fencing token.", query=("session_id", "timeout_ms")),
    _r("POST", "/v1/locks/{name}/unlock", "LOCK_UNLOCK", "Release one hold of `session_id`.",
       query=("session_id",)),
    _r("GET", "/v1/semaphores/{name}", "SEMAPHORE_AVAILABLE", "Available permits."),
    _r("POST", "/v1/semaphores/{name}/acquire", "SEMAPHORE_ACQUIRE", "Take `permits` for "
       "`session_id`, waiting up to `timeout_ms`.",
       query=("session_id", "permits", "timeout_ms")),
    _r("POST", "/v1/semaphores/{name}/release", "SEMAPHORE_RELEASE", "Return `permits` held by "
       "`session_id`.", query=("session_id", "permits")),
    _r("GET", "/v1/latches/{name}", "LATCH_GET_COUNT", "Current count."),
    _r("GET", "/v1/latches/{name}/wait", "LATCH_AWAIT", "Wait up to `timeout_ms` for zero "
       "(long-poll).", query=("timeout_ms",)),
    _r("POST", "/v1/latches/{name}/count-down", "LATCH_COUNT_DOWN", "Decrement the count."),
    # -- ids
    _r("POST", "/v1/ids/{name}", "ID_GEN_NEXT", "Reserve `count` ids; the first.",
       query=("count",)),
    # -- topics
    _r("POST", "/v1/topics/{name}", "TOPIC_PUBLISH", "Publish the request body; its sequence "
       "number.", value="value"),
    _r("GET", "/v1/topics/{name}", "TOPIC_SUBSCRIBE", "Messages from `from_seq`: server-sent "
       "events with `Accept: text/event-stream`, else a long-poll.", query=("from_seq",),
       stream=True),
    # -- batches and the cluster
    _r("POST", "/v1/batch", "BATCH_EXECUTE", "Apply `ops` atomically (JSON body).",
       query=("ops",)),
    _r("GET", "/v1/cluster", "CLUSTER_STATUS", "This node's view of the cluster."),
    _r("GET", "/v1/cluster/members", "MEMBER_LIST", "Members and their addresses."),
    # -- observability
    _r("GET", "/metrics", "METRICS_GET", "This node's metrics, Prometheus text format "
       "(`text/plain; version=0.0.4`).", media=METRICS_MEDIA),
)

# POST /v1/call/{TYPE}: every client type, by name. TOPIC_SUBSCRIBE streams as its GET route.
CALL_TYPES: tuple[str, ...] = tuple(sorted(mt.name for mt in catalog.client_types()))


@dataclass(frozen=True, slots=True)
class Match:
    route: Route | None  # None: POST /v1/call/{TYPE}
    mt: MessageType
    path_fields: Mapping[str, str]  # percent-decoded path parameters


def _check(route: Route) -> None:
    mt = catalog.BY_NAME.get(route.type_name)
    where = f"{route.method} {route.pattern}"
    if mt is None or mt.listener is not Listener.CLIENT:
        raise ValueError(f"{where}: {route.type_name} is not a client type")
    if (route.method == "GET") == mt.is_write:
        raise ValueError(f"{where}: reads are GET and types that change state are not")
    if mt.execution is Execution.LOCAL and mt.is_write:  # pragma: no cover - catalog rule
        raise ValueError(f"{where}: impossible execution")
    named = [*route.params, *route.query, *route.defaults]
    if route.value is not None:
        named.append(route.value)
        if mt.schema[route.value].kind is not Kind.BYTES:
            raise ValueError(f"{where}: the value field must be bytes")
    for f in named:
        if f not in mt.schema:
            raise ValueError(f"{where}: {f!r} is not a field of {mt.name}")
    for f in route.params:
        if mt.schema[f].kind not in (Kind.NAME, Kind.KEY, Kind.INT, Kind.STR):
            raise ValueError(f"{where}: path field {f!r} must be a name, key, string or int")
    for name, fld in mt.schema.items():
        if fld.required and name not in named:
            raise ValueError(f"{where}: required field {name!r} has no source")
    if route.media is not None and route.method != "GET":
        raise ValueError(f"{where}: only a GET answers with its own media type")
    if RESERVED_QUERY & set(route.query):
        raise ValueError(f"{where}: reserved query parameter")


def _shape(route: Route) -> tuple[str, tuple[str, ...]]:
    return route.method, tuple("{}" if s.startswith("{") else s for s in route.segments)


for _route in ROUTES:
    _check(_route)
assert len({_shape(r) for r in ROUTES}) == len(ROUTES), "two routes share a method and shape"
assert not any(r.pattern.startswith(CALL_PREFIX) for r in ROUTES)
assert all(not s.startswith("{") for r in ROUTES for s in r.segments[:2])

# The candidates for a path: by segment count and the two literal segments every route
# starts with ("v1", the resource), so matching looks at a handful of routes, not all.
_BY_PREFIX: dict[tuple[int, str], list[Route]] = {}
for _route in ROUTES:
    _BY_PREFIX.setdefault((len(_route.segments), "/".join(_route.segments[:2])), []).append(
        _route)


def match(method: str, path: str) -> Match | tuple[str, ...]:
    """The route for a request, or the methods the path allows (empty: no such path).

    Segments are percent-decoded after the path is split, so `%2F` in a key is part of the
    key, never a separator. Decoding is strict UTF-8; a bad escape raises BadRequest.
    """
    raw = path.split("/")
    if raw[0] != "" or len(raw) > MAX_PATH_SEGMENTS + 1:
        return ()
    if "%" not in path:  # nothing to decode (the common case: unquote would copy each one)
        segs = raw[1:]
    else:
        try:
            segs = [unquote(s, encoding="utf-8", errors="strict") for s in raw[1:]]
        except UnicodeDecodeError:
            raise BadRequest("the path is not valid UTF-8 once percent-decoded") from None
    if len(segs) == 3 and segs[:2] == ["v1", "call"]:
        mt = catalog.BY_NAME.get(segs[2])
        if mt is None or mt.listener is not Listener.CLIENT:
            return ()
        return Match(None, mt, {}) if method == "POST" else ("POST",)
    allowed: list[str] = []
    for route in _BY_PREFIX.get((len(segs), "/".join(segs[:2])), ()):
        fields: dict[str, str] = {}
        for pat, seg in zip(route.segments, segs, strict=True):
            if pat.startswith("{"):
                if not seg:
                    break
                fields[pat[1:-1]] = seg
            elif pat != seg:
                break
        else:
            if route.method == method:
                return Match(route, route.mt, fields)
            allowed.append(route.method)
    return tuple(allowed)


def _scalar(mt: MessageType, name: str, raw: str) -> Any:
    kind = mt.schema[name].kind
    if kind is Kind.INT:
        try:
            return int(raw, 10)
        except ValueError:
            raise BadRequest(f"{mt.name}.{name} must be an integer, got {raw[:40]!r}") from None
    if kind is Kind.BOOL:
        if raw not in ("true", "false"):
            raise BadRequest(f"{mt.name}.{name} must be true or false")
        return raw == "true"
    if kind in (Kind.NAME, Kind.KEY, Kind.STR):
        return raw
    raise BadRequest(f"{mt.name}.{name} cannot be given in the path or query")


def to_body(m: Match, query: list[tuple[str, str]], value: bytes | None,
            json_fields: Mapping[str, Any] | None) -> dict[str, Any]:
    """The message body a resource route's request stands for (validated later by the
    catalog, exactly as a binary request's). A field given twice is refused, never resolved."""
    assert m.route is not None
    route, mt = m.route, m.mt
    body: dict[str, Any] = dict(route.defaults)
    given: set[str] = set()

    def put(name: str, v: Any) -> None:
        if name in given:
            raise BadRequest(f"{mt.name}.{name} is given more than once")
        given.add(name)
        body[name] = v

    for name, raw in m.path_fields.items():
        put(name, _scalar(mt, name, raw))
    for name, raw in query:
        if name in RESERVED_QUERY:
            continue
        if name not in route.query:
            raise BadRequest(f"unknown query parameter {name[:40]!r} for {route.method} "
                             f"{route.pattern}")
        put(name, _scalar(mt, name, raw))
    if json_fields is not None:
        for name, v in json_fields.items():
            if name not in route.query:
                raise BadRequest(f"unknown field {name[:40]!r} for {route.method} "
                                 f"{route.pattern}")
            put(name, v)
    if route.value is not None:
        put(route.value, value if value is not None else b"")
    return body


# -- docs/http.md, the generated part ----------------------------------------------------------
HEAD = """# HTTP API reference (generated)

Generated from `loom/wire/routes.py` and the catalog by `python -m loom.wire.routes`; do not edit
this part by hand. How requests, values, errors and identities work over HTTP: docs/http.md's
first part, above the line that starts this one.

"""


def render() -> str:
    out = [HEAD, "## Resource routes\n\n",
           "| method | path | type | query | body | |\n| --- | --- | --- | --- | --- | --- |\n"]
    for r in ROUTES:
        scalar = [n for n in r.query if r.mt.schema[n].kind is not Kind.OPS]
        q = ", ".join(f"`{n}`" for n in scalar) or "—"
        if r.value is not None:
            b = f"`{r.value}`: the raw body"
        elif len(scalar) < len(r.query):
            b = "JSON `{\"ops\": [{\"op\": TYPE, \"b\": {...}}, ...]}`"
        elif r.query:
            b = "or a JSON object of the query fields"
        else:
            b = "—"
        defaults = "".join(f" Default `{k}={v}`." for k, v in r.defaults.items())
        out.append(f"| `{r.method}` | `{r.pattern}` | `{r.type_name}` | {q} | {b} | "
                   f"{r.doc}{defaults} |\n")
    out.append(f"\n## `POST {CALL_PREFIX}{{TYPE}}`\n\n{len(CALL_TYPES)} client types; the body "
               "is the type's body as a JSON object (see docs/protocol.md for each schema); "
               "the read types (`log-read`) also take `?stale=true`.\n\n"
               "| type | runs as |\n| --- | --- |\n")
    for name in CALL_TYPES:
        out.append(f"| `{name}` | {catalog.BY_NAME[name].execution.value} |\n")
    return "".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())
