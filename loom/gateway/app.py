"""The gateway process: one nursery tree of listeners over one routing, auth and forwarding
state, with graceful shutdown and a reload of what can change safely.

This module owns (docs/gateway.md, "Running it" and "One request"):

- The listener TLS contexts (`listener_context`; the modes are defined in docs/gateway.md,
  "Listener client certificates"). Every listener is TLS 1.3. In every mode but `none` a
  presented client certificate is verified against `ca_file` in the handshake, and one that
  fails verification fails the handshake: it is never taken for an absent certificate.
  `request` is CERT_OPTIONAL; `require` and `verify` are CERT_REQUIRED (`verify` also makes
  the certificate an identity: the configuration turns `mtls` on).
- The loud warning of guest mode at start (the refusal off loopback is the configuration's).
- The order of one request: route (400 for a path that is not canonical, a rule of the
  configuration module; 404 without a route) -> authentication per route (`auth.Chain`) ->
  rate limit (429 with Retry-After and RateLimit headers; an admitted request's answer carries
  the RateLimit headers too) -> forwarding (`proxy.Forwarder`; 502/503/504 when the upstream
  cannot answer).
- Tracing (`trace` in the configuration; off when absent): one SERVER span per proxied request
  (attributes: route, method, status, identity method; never a credential nor the identity's
  name), child of the caller's valid traceparent; its own traceparent is what goes upstream, so
  loomd's span is its child. The span ends when the answer's head is known (a stream's body is
  not waited for). Tracing is built at start: a reload that changes `trace` is refused.
- Reload (`Gateway.reload`, SIGHUP): routes, authentication, rate limits and the listeners' TLS
  files are replaced at once for new requests; a change of listeners' addresses, of upstreams
  or of `trace` needs a restart, so such a file is refused whole and the running state kept.
  Rate-limit buckets survive a reload that leaves `rate_limit` unchanged.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import trio

from loom.gateway.auth import (
    AuthFailure,
    AuthRequest,
    Chain,
    HTTPSFetcher,
    Identity,
    build,
    provider_context,
)
from loom.gateway.config import (
    ConfigError,
    GatewayConfig,
    Listener,
    Upstream,
    canonical_path,
)
from loom.gateway.metrics import attach, gateway_metrics
from loom.gateway.proxy import Forwarder, ForwarderStatistics, UpstreamUnavailable
from loom.gateway.ratelimit import RateLimiter, RateLimitStatistics, bucket_key
from loom.http import (
    ClientLimits,
    HTTPClient,
    HTTPServer,
    Problem,
    Request,
    Response,
    ServerLimits,
    ServerStatistics,
    StreamingResponse,
)
from loom.security.tls import client_context, load_chain, server_context

__all__ = [
    "Gateway",
    "GatewayStatistics",
    "listener_context",
    "upstream_context",
    "warn_guest",
]

if TYPE_CHECKING:  # imported only when `trace` is configured
    from loom.obs.tracing import Tracing

log = logging.getLogger("loom.gateway")


def warn_guest(config: GatewayConfig) -> None:
    """Guest mode lets everyone in as the guest identity: say so loudly at every start (the
    configuration already refused it off loopback unless it was allowed explicitly)."""
    if config.auth.type != "noop":
        return
    where = ", ".join(f"{x.host}:{x.port}" for x in config.listeners)
    log.warning("AUTH_TYPE=noop: NO AUTHENTICATION. Every request on %s passes as the guest "
                "with roles %s", where, list(config.auth.guest_roles))


def listener_context(listener: Listener) -> ssl.SSLContext:
    """The server TLS context of a listener (module docstring: the four modes)."""
    tls = listener.tls
    if tls is None:
        raise ConfigError(f"listeners.{listener.name}.tls", "every listener is TLS: give "
                          "cert_file and key_file")
    if tls.client_auth == "none":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.options |= ssl.OP_NO_COMPRESSION
        ctx.verify_mode = ssl.CERT_NONE
        load_chain(ctx, tls.cert_file, tls.key_file, tls.passphrase)
        return ctx
    assert tls.ca_file is not None  # the schema requires it for every other mode
    return server_context(tls.ca_file, tls.cert_file, tls.key_file,
                          require_client_auth=tls.client_auth in ("require", "verify"),
                          passphrase=tls.passphrase)


def upstream_context(upstream: Upstream) -> ssl.SSLContext:
    """Mutual TLS with the gateway certificate when one is configured (always for loom)."""
    t = upstream.tls
    if t.ca_file is None:
        ctx = ssl.create_default_context()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if t.cert_file is not None and t.key_file is not None:
            load_chain(ctx, t.cert_file, t.key_file, t.passphrase)
        return ctx
    return client_context(t.ca_file, t.cert_file, t.key_file, passphrase=t.passphrase)


@dataclass(frozen=True, slots=True)
class GatewayStatistics:
    listeners: Mapping[str, ServerStatistics]
    upstreams: Mapping[str, ForwarderStatistics]
    rate_limit: RateLimitStatistics | None
    # Requests answered by the gateway itself, by reason: bad_path, no_route,
    # auth_<status>, rate_limited, upstream_<status>.
    answered: Mapping[str, int] = field(default_factory=dict)
    reloads: int = 0


@dataclass(frozen=True, slots=True)
class _State:
    """Everything a request reads, replaced as one value on reload (never mutated)."""

    config: GatewayConfig
    chain: Chain
    limiter: RateLimiter | None


def _limiter(config: GatewayConfig) -> RateLimiter | None:
    r = config.rate_limit
    per_key = any(k.rate_limit for k in config.auth.api_key.keys)
    if not (r.enabled or per_key):
        return None
    return RateLimiter(r.rate, r.burst, max_buckets=r.max_buckets, idle_s=r.idle_s)


class Gateway:
    """Build with a checked configuration, then `await run()` (in a nursery: `nursery.start`
    returns when every listener listens). The identity provider (JWKS, discovery,
    introspection) is verified against `provider_ca_file`, or the system's trust store."""

    def __init__(self, config: GatewayConfig, *,
                 server_limits: ServerLimits | None = None,
                 client_limits: ClientLimits | None = None, max_redirects: int = 3) -> None:
        warn_guest(config)
        self._fetch = HTTPSFetcher(provider_context(config.auth.provider_ca_file))
        self._servers = {x.name: HTTPServer(self._handler_for(x), listener_context(x),
                                            limits=server_limits, name=f"gateway.{x.name}")
                         for x in config.listeners}
        self._clients = {u.name: HTTPClient(upstream_context(u), limits=client_limits)
                         for u in config.upstreams}
        cert_headers = next((x.tls.client_cert_headers for x in config.listeners if x.tls),
                            None)
        claims = tuple(config.auth.jwt.claims_to_headers.values())
        credentials = config.auth.credential_carriers()
        self._forwarders = {u.name: Forwarder(u, self._clients[u.name],
                                              max_redirects=max_redirects,
                                              cert_headers=cert_headers, gateway_set=claims,
                                              credentials=credentials)
                            for u in config.upstreams}
        self._state = _State(config, build(config, self._fetch, cert_headers=cert_headers),
                             _limiter(config))
        self._answered: Counter[str] = Counter()
        self._reloads = 0
        self.metrics = gateway_metrics(lambda: (self._state.chain, self._state.limiter))
        self.ports: dict[str, int] = {}  # listener name -> bound port (0 in the file: a free one)
        self.tracing: Tracing | None = None
        if config.trace is not None:
            from loom.obs.tracing import TraceSettings, Tracing

            t = config.trace
            self.tracing = Tracing(TraceSettings(
                t.endpoint, service_name=t.service_name, sample_ratio=t.sample_ratio,
                max_queue=t.max_queue, export_timeout_s=t.export_timeout_s))
            log.info("tracing: request spans to %s (sample ratio %s)", t.endpoint,
                     t.sample_ratio)

    @property
    def config(self) -> GatewayConfig:
        return self._state.config

    def statistics(self) -> GatewayStatistics:
        lim = self._state.limiter
        return GatewayStatistics(
            MappingProxyType({n: s.statistics() for n, s in self._servers.items()}),
            MappingProxyType({n: f.statistics() for n, f in self._forwarders.items()}),
            lim.statistics() if lim else None, MappingProxyType(dict(self._answered)),
            self._reloads)

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve every listener until `shutdown()`; then close the upstream pools."""
        try:
            async with trio.open_nursery() as nursery:
                for x in self.config.listeners:
                    socks = await nursery.start(self._servers[x.name].serve_tcp, x.host, x.port)
                    self.ports[x.name] = socks[0].socket.getsockname()[1]
                    log.info("listener %s on %s:%d (client_auth %s)", x.name, x.host,
                             self.ports[x.name], x.tls.client_auth if x.tls else "-")
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                for c in self._clients.values():
                    await c.aclose()
                await self._fetch.aclose()
                if self.tracing is not None:  # export what is queued, stop the thread
                    await trio.to_thread.run_sync(self.tracing.shutdown)

    def shutdown(self) -> None:
        """Stop accepting; requests in flight get the server's grace period."""
        for s in self._servers.values():
            s.shutdown()

    def reload(self, config: GatewayConfig) -> None:
        """Apply a new configuration (module docstring: what may change). Raises ConfigError
        (the running state is kept) when it changes what needs a restart."""
        old = self._state.config
        if [(x.name, x.host, x.port) for x in config.listeners] != [
                (x.name, x.host, x.port) for x in old.listeners]:
            raise ConfigError("listeners", "addresses changed: restart the gateway")
        if config.upstreams != old.upstreams:
            raise ConfigError("upstreams", "upstreams changed: restart the gateway")
        if config.trace != old.trace:
            raise ConfigError("trace", "trace changed: restart the gateway")
        warn_guest(config)
        contexts = {x.name: listener_context(x) for x in config.listeners}
        cert_headers = next((x.tls.client_cert_headers for x in config.listeners if x.tls),
                            None)
        chain = build(config, self._fetch, cert_headers=cert_headers)
        limiter = self._state.limiter
        if config.rate_limit != old.rate_limit or limiter is None:
            limiter = _limiter(config)
        for name, ctx in contexts.items():
            self._servers[name].ssl_context = ctx
        self._state = _State(config, chain, limiter)
        attach(self.metrics, chain)
        self._reloads += 1
        log.info("configuration reloaded from %s", config.source)

    # -- one request ---------------------------------------------------------------------------

    def _handler_for(self, listener: Listener) -> _Handler:
        return _Handler(self, listener)

    def _refuse(self, reason: str, status: int, detail: str,
                headers: list[tuple[str, str]] | None = None) -> Response:
        self._answered[reason] += 1
        return Problem(status, detail=detail).response(headers or [])

    async def handle(self, listener: Listener, request: Request
                     ) -> Response | StreamingResponse:
        if listener.metrics and request.path == "/metrics":
            if request.method != "GET":
                return self._refuse("bad_method", 405, "GET only", [("allow", "GET")])
            body, content_type = self.metrics.render()
            return Response(200, [("content-type", content_type)], body)
        started = time.perf_counter()
        if self.tracing is None:
            answer, route = await self._handle(request, None)
        else:
            inbound = [v for k, v in request.headers if k == b"traceparent"]
            span = self.tracing.request_span(
                inbound[0].decode("latin-1") if len(inbound) == 1 else "",
                {"http.request.method": request.method}, name=request.method)
            try:
                answer, route = await self._handle(request, span)
            except BaseException:
                self.tracing.end(span, "error")
                raise
            if route is not None:
                span.update_name(f"{request.method} {route}")
            span.set_attribute("http.response.status_code", answer.status)
            self.tracing.end(span, "ok" if answer.status < 500 else "error")
        self.metrics.observe_request(route, request.method, answer.status,
                                     time.perf_counter() - started)
        return answer

    async def _handle(self, request: Request, span: Any
                      ) -> tuple[Response | StreamingResponse, str | None]:
        """The answer to one proxied request, and the id of its route (None: no route).
        `span`: the request's span while tracing is on, else None."""
        st = self._state
        if not canonical_path(request.path):  # the rule is the configuration's
            return self._refuse("bad_path", 400, "the path is not in canonical form"), None
        route = st.config.route_for(request.path)
        if route is None:
            return self._refuse("no_route", 404, "no route for this path"), None
        forwarder = self._forwarders[route.upstream]
        if span is not None:
            span.set_attribute("loom.route", route.id)
        result = await st.chain.authenticate(route.auth, AuthRequest(
            request.headers, request.query, request.peer_certificate, request.remote))
        if isinstance(result, AuthFailure):
            return self._refuse(f"auth_{result.status}", result.status, result.reason,
                                result.headers()), route.id
        identity: Identity | None = result
        if span is not None:  # how the caller proved who it is; never the credential
            span.set_attribute("loom.auth.method", result.method if result else "anonymous")
        if identity is None and forwarder.loom:
            identity = st.chain.guest  # loomd refuses a gateway request without a user
        extra: list[tuple[str, str]] = []
        if st.limiter is not None:
            per_key = identity.rate_limit if identity is not None else None
            if per_key is not None or st.config.rate_limit.enabled:
                key = bucket_key(st.config.rate_limit.key, identity, request.headers,
                                 request.remote)
                verdict = st.limiter.check(key, trio.current_time(), rate=per_key)
                extra = verdict.headers()
                if not verdict.allowed:
                    return self._refuse("rate_limited", 429, "too many requests", extra), route.id
        try:
            answer = await forwarder.forward(
                request, identity, "" if span is None else _traceparent_of(span))
        except UpstreamUnavailable as e:
            log.warning("route %s: %s", route.id, e)
            return self._refuse(f"upstream_{e.status}", e.status, str(e)), route.id
        if extra:
            if isinstance(answer, Response):
                answer = Response(answer.status, [*answer.headers, *extra], answer.body)
            else:
                answer = StreamingResponse(answer.status, [*answer.headers, *extra],
                                           answer.chunks)
        return answer, route.id


def _traceparent_of(span: Any) -> str:
    from loom.obs.tracing import traceparent_of

    return traceparent_of(span)


class _Handler:
    """The `Handler` of one listener's server: the gateway's `handle` with that listener."""

    __slots__ = ("gateway", "listener")

    def __init__(self, gateway: Gateway, listener: Listener) -> None:
        self.gateway = gateway
        self.listener = listener

    async def __call__(self, request: Request) -> Response | StreamingResponse:
        return await self.gateway.handle(self.listener, request)
