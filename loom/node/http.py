r"""The HTTP door: one HTTP request -> the dispatcher's one request path -> one HTTP answer.

    HTTPServer (loom/http) --> HttpDoor.handle --> identity (certificate, as the client listener)
                                                --> route (loom/wire/routes.py) --> message body
                                                --> Dispatcher.start / submit / run
                                                --> answer --> JSON or problem+json

Invariants:
- There is no second authorization path. Every data request becomes a `loom.wire.codec.Request`
  and goes through `Dispatcher.start` with an `HttpSession` whose identity comes from the TLS
  client certificate by the same rules as the client listener (`identity_from_der`, guests
  only when `require_client_auth` is false). The ACL decision, gateway trust
  (`security/gateway.py`) and the audit record are the dispatcher's.
- Identity headers reach `resolve_principal` with their spelling preserved: the two canonical
  names are passed as `X-Auth-User` / `X-Auth-Roles`, any lookalike (`x-auth_user`, ...) under
  its own name, repeats as repeats, undecodable bytes as unprintable characters. gateway.py
  refuses each of those, and the dispatcher audits the refusal whatever the type.
- The listener asks for a client certificate but lets a client without one reach only
  `/healthz` and `/readyz` when `require_client_auth` is set; those two answer from this
  node's own state and reveal nothing beyond "ok" or ready / not ready.
- Requests in flight are bounded node-wide (`http.max_requests_in_flight`): beyond it, 429 at
  once. An HTTP connection carries one request at a time (loom/http), so this bounds the work
  and memory of every HTTP client together.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import trio

from loom.http import (
    HTTPServer,
    RefusedRequest,
    Request,
    Response,
    ServerLimits,
    ServerStatistics,
    StreamingResponse,
)
from loom.node import dashboard
from loom.node.config import NodeConfig, parse_host_port
from loom.node.http_codec import (
    JSON,
    OCTETS,
    check_json,
    error_response,
    idempotency_client,
    json_response,
    media_type,
    parse_json_object,
    problem_response,
    reply_json,
    trace_id,
    with_bytes,
)
from loom.node.http_topics import TopicFeed, topic_response, unless_gone
from loom.security.handshake import revocation_reason
from loom.security.identity import Identity, IdentityError, identity_from_der, identity_or_guest
from loom.security.tls import server_context
from loom.state.dedupe import IDEMPOTENCY_KEY_REUSED
from loom.wire import routes
from loom.wire.codec import PROTOCOL_VERSION
from loom.wire.codec import Request as Message
from loom.wire.errors import (
    BadRequest,
    Busy,
    LoomError,
    NotFound,
    Status,
    Unauthenticated,
    Unavailable,
)
from loom.wire.session import accept_hello

if TYPE_CHECKING:
    import ssl

    from loom.node.dispatcher import Call, Dispatcher
    from loom.node.server import Node

__all__ = ["DoorStatistics", "HttpDoor", "HttpSession", "advertised_http_addr", "http_context"]

log = logging.getLogger("loom.http.door")

_CANONICAL = {b"x-auth-user": "X-Auth-User", b"x-auth-roles": "X-Auth-Roles",
              b"x-auth-attrs": "X-Auth-Attrs"}
# The headers the door reads itself, each at most once (see `_message`).
_READ = frozenset({b"content-type", b"idempotency-key", b"traceparent", b"accept"})
_PROBES = ("/healthz", "/readyz")
# A header line naming X-Auth-User / X-Auth-Roles in any spelling (case, '-' or '_'), or a
# folded continuation line right after one: what a refused raw head is searched for.
_AUTH_LINE = re.compile(rb"(?im)^[ \t]*x[-_]auth[-_](?:user|roles|attrs)[ \t]*:")
MAX_IDENTITY_CACHE = 1024


def http_context(cfg: NodeConfig) -> ssl.SSLContext:
    """The client listener's TLS, except that a certificate is requested, never required at
    the handshake: the door itself refuses requests without one (all but the two probes)."""
    t = cfg.tls
    return server_context(t.ca, t.cert, t.key, require_client_auth=False, crl=t.crl,
                          passphrase=t.passphrase())


def advertised_http_addr(cfg: NodeConfig) -> str:
    """The HTTP address peers learn from this node's PEER_HELLO, to redirect writes to it
    when it leads: `http.listen` as configured ("" when off or on port 0)."""
    if not cfg.http.listen or parse_host_port(cfg.http.listen, "http.listen")[1] == 0:
        return ""
    return cfg.http.listen


@dataclass(frozen=True, slots=True)
class DoorStatistics:
    in_flight: int  # requests between routing and answer (event streams: until their head)
    answered: Mapping[int, int]  # answers by HTTP status, probes and refusals included
    refused_in_flight: int  # 429s for max_requests_in_flight
    refusals_audited: int  # heads refused by the HTTP layer that named an identity header
    server: ServerStatistics  # the listener's own (connections, refusals by reason)


class HttpSession:
    """The dispatcher's `Session` for one HTTP request (HTTP has no HELLO: the version is the
    protocol's, and `client_id` is set only by an Idempotency-Key)."""

    __slots__ = ("client_id", "conn_id", "feed", "identity", "source", "version")
    listener = "http"  # metrics label (loom.obs.metrics.LISTENERS)

    def __init__(self, conn_id: str, identity: Identity, client_id: str = "") -> None:
        self.conn_id = conn_id
        self.identity = identity
        self.client_id = client_id
        self.version = PROTOCOL_VERSION
        self.feed: TopicFeed | None = None
        remote = conn_id.removeprefix("http:")
        self.source = remote.rpartition(":")[0] if ":" in remote else ""

    def subscribe(self, topic: str, request_id: int, from_seq: int | None) -> int:
        self.feed = TopicFeed(topic, from_seq)
        return request_id

    def unsubscribe(self, subscription: int) -> bool:
        return False  # an HTTP subscription ends with its response


class HttpDoor:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.cfg = node.cfg
        h = node.cfg.http
        self.server = HTTPServer(self.handle, http_context(node.cfg), name="http listener",
                                 on_refusal=self.refused, on_handshake=self._handshake,
                                 limits=ServerLimits(
                                     max_connections=h.max_connections,
                                     handshake_timeout_s=h.handshake_timeout_s,
                                     idle_timeout_s=h.idle_timeout_s,
                                     request_timeout_s=h.request_timeout_s,
                                     max_header_bytes=h.max_header_bytes,
                                     max_header_count=h.max_header_count,
                                     max_body_bytes=node.cfg.limits.max_frame_bytes,
                                     shutdown_grace_s=node.cfg.limits.shutdown_grace_s))
        self.port = 0
        self.in_flight = 0
        self.stopped = trio.Event()
        self._ids = itertools.count(1)
        self._identities: dict[bytes, Identity] = {}
        self._answered: Counter[int] = Counter()
        self._refused_in_flight = 0
        self._refusals_audited = 0

    async def serve(self, stop: trio.Event, *,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until `stop` is set, then shut down gracefully (in-flight requests get
        `limits.shutdown_grace_s`); `stopped` is set once the listener is gone."""
        host, port = parse_host_port(self.cfg.http.listen, "http.listen")
        try:
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(self.server.serve_tcp, host, port)
                self.port = listeners[0].socket.getsockname()[1]
                log.info("node %s serving HTTP on %s:%d", self.cfg.node_id, host, self.port)
                task_status.started(self.port)
                await stop.wait()
                self.server.shutdown()
        finally:
            self.stopped.set()

    def _handshake(self, remote: str, error: BaseException | None) -> None:
        if error is None:
            self.node.handshakes.succeeded("http")
        else:
            self.node.handshakes.failed("http", remote, error)  # counted and audited

    def refused(self, r: RefusedRequest) -> None:
        """A request the HTTP layer refused before routing (obs-fold, control characters,
        oversize head, ...). When it carried an identity header, the refusal is audited like
        the dispatcher's own identity refusals: the request never became a message, so this
        is the one place that sees it."""
        if not _AUTH_LINE.search(r.head):
            return
        try:
            principal = (identity_from_der(r.peer_certificate, self.cfg.trust_domain).principal
                         if r.peer_certificate else "guest")
        except IdentityError:
            principal = "unidentified"
        self._refusals_audited += 1
        self.node.dispatcher.audit.emit(
            {"event": "identity_assertion_refused", "client_id": f"http:{r.remote}",
             "principal": principal, "command": None, "result": "bad_request"
             if r.status == 400 else f"http_{r.status}", "reason": r.detail}, priority=True)

    # -- one request ------------------------------------------------------------------------
    def statistics(self) -> DoorStatistics:
        return DoorStatistics(
            in_flight=self.in_flight, answered=MappingProxyType(dict(self._answered)),
            refused_in_flight=self._refused_in_flight,
            refusals_audited=self._refusals_audited, server=self.server.statistics())

    async def handle(self, request: Request) -> Response | StreamingResponse:
        answer = await self._handle_counted(request)
        self._answered[answer.status] += 1
        return answer

    async def _handle_counted(self, request: Request) -> Response | StreamingResponse:
        if request.path in _PROBES:
            return self._probe(request)
        if self.in_flight >= self.cfg.http.max_requests_in_flight:
            self._refused_in_flight += 1
            return problem_response(Busy("too many HTTP requests in flight; retry later",
                                 retry_after_ms=1000))
        self.in_flight += 1
        try:
            return await self._handle(request)
        except LoomError as e:
            return problem_response(e)
        finally:
            self.in_flight -= 1

    async def _handle(self, request: Request) -> Response | StreamingResponse:
        identity = self._identity(request)
        if dashboard.handles(request.path):
            return self._dashboard(request, identity)
        m = routes.match(request.method, request.path)
        if not isinstance(m, routes.Match):
            if m:
                return problem_response(BadRequest(f"{request.method} is not allowed here"), 405,
                                [("allow", ", ".join(m))])
            return problem_response(NotFound(f"no route {request.path[:100]!r}"))
        if self.node.stopping:
            raise Unavailable("the node is shutting down")
        msg, sess, accept = self._message(request, m, identity)
        if m.mt.name == "HELLO":
            return self._hello(msg)
        d = self.node.dispatcher
        step = d.start(sess, msg)
        if not isinstance(step, dict):
            if step.waits:
                step = await unless_gone(request, partial(d.run, step))
            else:
                step = await _submitted(d, step)
        if step["s"] == Status.OK and sess.feed is not None:
            h = self.cfg.http
            return await topic_response(request, sess.feed, self.node.topics,
                                        h.sse_keepalive_s, h.max_stream_s)
        return self._answer(request, m, step, accept)

    def _dashboard(self, request: Request, identity: Identity) -> Response:
        """The dashboard (node/dashboard.py), for a caller CLUSTER_STATUS allows."""
        if request.method != "GET":
            return problem_response(BadRequest(f"{request.method} is not allowed here"), 405,
                                    [("allow", "GET")])
        m = routes.match("GET", "/v1/cluster")
        assert isinstance(m, routes.Match)
        msg, sess, accept = self._message(request, m, identity)
        d = self.node.dispatcher
        answer = d.start(sess, msg)
        assert isinstance(answer, dict), "CLUSTER_STATUS is answered by the node itself"
        if answer["s"] != Status.OK:
            return self._answer(request, m, answer, accept)
        doc = None
        if request.path == dashboard.DATA:
            latency = dashboard.latency_summary(d.metrics.registry.collect(),
                                                "loom_request_duration_seconds")
            doc = dashboard.data(answer["r"], d.node_statistics(), latency, d.recent_refusals)
        return dashboard.response(request.path, doc)

    def _identity(self, request: Request) -> Identity:
        """The client listener's rule (security/identity.py `identity_or_guest`); the
        certificate is required here rather than at the handshake, for the probes' sake."""
        der = request.peer_certificate
        if not der and self.cfg.require_client_auth:
            self.node.handshakes.failed("http", request.remote, "no_certificate")
            raise Unauthenticated("this listener requires a client certificate")
        revoked = self.node.revocation.reason(der or b"")  # deny list, CRL, expiry: per request
        if revoked is not None:  # counted and audited, aggregated
            self.node.handshakes.failed("http", request.remote, revoked,
                                        revocation_reason(revoked))
            raise Unauthenticated(f"certificate refused: {revoked}")
        ident = self._identities.get(der or b"")
        if ident is None:
            try:
                ident = identity_or_guest(der, self.cfg.trust_domain)
            except IdentityError as e:
                self.node.handshakes.failed("http", request.remote, e)  # counted, audited
                raise Unauthenticated(f"certificate refused: {e}") from None
            if len(self._identities) >= MAX_IDENTITY_CACHE:
                self._identities.clear()
            self._identities[der or b""] = ident
        return ident

    def _message(self, request: Request, m: routes.Match, identity: Identity
                 ) -> tuple[Message, HttpSession, bytes]:
        """The message a request stands for, its session, and its Accept header ("" when
        absent or repeated)."""
        try:
            query = request.query_params() if request.query else []
        except ValueError as e:
            raise BadRequest(f"bad query string: {e}") from None
        stale = False
        for k, v in query:
            if k == "stale":
                if v not in ("true", "false"):
                    raise BadRequest("stale must be true or false")
                stale = v == "true"
            elif k == "wait_ms" and not (m.route is not None and m.route.stream):
                raise BadRequest("wait_ms applies to topic reads only")
        # One pass over the headers: the four the door reads (None when repeated) and the
        # identity headers, whatever their spelling.
        read: dict[bytes, bytes | None] = {}
        headers: list[tuple[str, str]] = []
        for name, raw in request.headers:
            if name in _READ:
                read[name] = None if name in read else raw
                continue
            norm = name.strip().lower().replace(b"_", b"-")
            if norm in _CANONICAL:
                # Undecodable bytes become lone surrogates, which gateway.py refuses as
                # unprintable: never guessed, never dropped.
                headers.append((_CANONICAL.get(name, name.decode("latin-1")),
                                raw.decode("utf-8", "surrogateescape")))
        ctype = media_type(_once(read, b"content-type"))
        if m.route is None:  # POST /v1/call/{TYPE}
            if any(k not in routes.RESERVED_QUERY for k, _ in query):
                raise BadRequest("/v1/call takes its fields in a JSON body")
            body: dict[str, Any] = {}
            if request.body:
                if ctype != JSON:
                    raise BadRequest(f"/v1/call takes a {JSON} body")
                body = with_bytes(m.mt, parse_json_object(request.body))
        else:
            value: bytes | None = None
            fields = None
            if m.route.value is not None:
                if ctype == JSON:
                    check_json(request.body)  # a value sent as JSON must be JSON
                value = request.body
            elif request.body:
                if ctype != JSON:
                    raise BadRequest(f"this route takes no value; fields go in the query or "
                                     f"a {JSON} object")
                fields = with_bytes(m.mt, parse_json_object(request.body))
            body = routes.to_body(m, query, value, fields)
        seq, client_id = 0, ""
        key = _once(read, b"idempotency-key")
        if key is not None and m.mt.is_write:
            client_id, seq = idempotency_client(key), 1
        trace = trace_id(read.get(b"traceparent"))
        sess = HttpSession(_conn_id(request), identity, client_id)
        msg = Message(PROTOCOL_VERSION, next(self._ids), m.mt.opcode, body, headers, seq,
                      stale, trace)
        return msg, sess, read.get(b"accept") or b""

    def _hello(self, msg: Message) -> Response:
        """HELLO's checks are the session's (wire/session.py); over HTTP it negotiates the
        version and nothing else (no session outlives the request)."""
        terms = accept_hello(msg)
        return json_response(200, {"result": {"version": terms.version, "node": self.cfg.node_id,
                                      "max_frame": self.cfg.limits.max_frame_bytes}})

    def _answer(self, request: Request, m: routes.Match, answer: dict[str, Any], accept: bytes
                ) -> Response:
        if answer["s"] == Status.OK:
            result = answer["r"]
            if m.route is not None and m.route.media is not None and isinstance(result, bytes):
                return Response(200, [("content-type", m.route.media)], result)
            if _OCTETS in accept and m.route is not None and request.method == "GET":
                if isinstance(result, bytes):
                    return Response(200, [("content-type", OCTETS)], result)
                if result is None:
                    return problem_response(NotFound("no value"))
            if result is None or result is True or result is False:  # most writes answer so
                return Response(200, _JSON_HEADERS, _CONSTANT_RESULT[result])
            return json_response(200, {"result": result})
        err = answer["e"]
        status = Status(answer["s"])
        details = {k: v for k, v in err.items() if k not in ("code", "msg")}
        if status is Status.NOT_LEADER:
            return self._not_leader(request, err["msg"], details)
        if status is Status.TIMEOUT:
            details["indeterminate"] = m.mt.is_write
        if details.get("identity_header") and status is Status.TOO_LARGE:
            # An identity header over a bound (too long, too many roles) is a malformed
            # request to an HTTP client: 400, like every other refused identity header.
            return error_response(status, err["msg"], details, http=400)
        if status is Status.CONFLICT and details.get("reason") == IDEMPOTENCY_KEY_REUSED:
            # The key was used for another request: 422 Unprocessable Content, as the IETF
            # Idempotency-Key draft says; nothing was applied.
            return error_response(status, err["msg"], details, http=422)
        return error_response(status, err["msg"], details)

    def _not_leader(self, request: Request, msg: str, details: dict[str, Any]) -> Response:
        leader = details.get("leader")
        transport = self.node.log.transport
        addr = (transport.http_addr_of(leader)
                if transport is not None and isinstance(leader, str) else None)
        if addr:
            location = f"https://{addr}{request.target}"
            return Response(307, [("location", location), ("content-type", JSON)],
                            reply_json({"leader": leader, "location": location}))
        details["leader_http_addr"] = None
        return error_response(Status.NOT_LEADER, msg, details)

    def _probe(self, request: Request) -> Response:
        if request.method != "GET":
            return problem_response(BadRequest("probes answer GET only"), 405, [("allow", "GET")])
        if request.path == "/healthz":
            return json_response(200, {"status": "ok"})
        ready = self.ready()
        return json_response(200 if ready else 503, {"ready": ready})

    def ready(self) -> bool:
        """A member, a leader known, and the applied index within `http.ready_max_lag`
        entries of the commit index."""
        if self.node.stopping:
            return False
        st = self.node.log.cluster_status()
        member = any(m["id"] == self.cfg.node_id for m in st["members"])
        return (member and st["leader"] is not None
                and st["commit_index"] - st["applied_index"] <= self.cfg.http.ready_max_lag)


async def _submitted(d: Dispatcher, call: Call) -> dict[str, Any]:
    """Hand a call to the log and wait for its callback (which runs exactly once)."""
    done = trio.Event()
    box: list[dict[str, Any]] = []

    def deliver(answer: dict[str, Any]) -> None:
        box.append(answer)
        done.set()

    d.submit(call, deliver)
    if not box:  # answered inside submit (a read a cluster of one serves at once): no wait
        await done.wait()
    return box[0]


_OCTETS = OCTETS.encode("ascii")
# The JSON answers of the three constant results, built once (as `json_response` builds them).
_JSON_HEADERS = (("content-type", JSON),)
_CONSTANT_RESULT = {v: reply_json({"result": v}) for v in (None, True, False)}


def _once(read: dict[bytes, bytes | None], name: bytes) -> bytes | None:
    """A header the door reads that may appear once: its value, None when absent; a repeat
    is refused (a smuggling or spoofing signal, never resolved by picking one)."""
    if name in read and read[name] is None:
        raise BadRequest(f"header {name.decode('ascii')} is repeated")
    return read.get(name)


def _conn_id(request: Request) -> str:
    return f"http:{request.remote}"
