"""Every metric loom-gateway exports, defined in one place (the node's are in `metrics.py`).

The same two kinds as the node's:

- Counted where they happen: requests by route, HTTP method and result, with a latency
  histogram (`observe_request`, called by the proxy once per answered request), and the
  identity provider's introspection latency (`observe_introspection`, once per call).
- Read when a scraper asks, from one statistics document (`GATEWAY_READINGS`): each
  authentication method's outcomes, the L1 verified-token cache, the L2 JWKS key cache, the
  introspection and Basic caches, JWKS fetches and the rate limiter's decisions. The document
  is `loom.gateway.metrics.statistics(...)`: {"auth": Chain.statistics(), "ratelimit":
  RateLimiter.statistics() as a dict}.

Labels are bounded: a route is a configured route's name (or "none" when no route matched),
the method one of `HTTP_METHODS` (else "other"), the result an HTTP status class, an auth
method a configured method's name, an outcome one of ok / unauthenticated / forbidden /
bad_request / unavailable / error. No user, token, key or path is ever a label.

`render()` gives the body and content type a `/metrics` handler answers with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from loom.obs.metrics import CONTENT_TYPE, LATENCY_BUCKETS, Reading, Stats, _path, _Readings

__all__ = ["GATEWAY_READINGS", "HTTP_METHODS", "GatewayMetrics"]

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Identity provider round trips: from a local provider (~1 ms) to a slow one (seconds).
PROVIDER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def _outcomes(stats: Stats) -> Mapping[tuple[str, ...], float] | None:
    o = _path(stats, "auth.outcomes")  # {"method/outcome": n}
    if not isinstance(o, Mapping):
        return None
    return {tuple(k.split("/", 1)): float(n) for k, n in o.items()}


def _methods(stats: Stats) -> Mapping[str, Any]:
    m = _path(stats, "auth.methods")
    return m if isinstance(m, Mapping) else {}


def _caches(hit: bool) -> Callable[[Stats], Mapping[str, float] | None]:
    """Hits (or misses) of each cache: l1 (verified JWTs), l2 (JWKS keys), introspection
    (active tokens), basic (verified passwords); a cache of a method not configured exports
    nothing."""
    def read(stats: Stats) -> Mapping[str, float] | None:
        out: dict[str, float] = {}
        for doc in _methods(stats).values():
            if "l1" in doc:
                out["l1"] = out.get("l1", 0) + doc["l1"]["hits" if hit else "misses"]
            if doc.get("jwks"):
                out["l2"] = out.get("l2", 0) + doc["jwks"].get("hits" if hit else "misses", 0)
            if "calls" in doc and "inactive" in doc:  # introspection: a miss is a call
                out["introspection"] = doc["cache_hits" if hit else "calls"]
            if "hashes" in doc:  # basic: a miss is a bcrypt verification
                out["basic"] = doc["cache_hits" if hit else "hashes"]
        return out or None
    return read


def _jwks(field: str) -> Callable[[Stats], float | None]:
    def read(stats: Stats) -> float | None:
        sums = [doc["jwks"].get(field, 0) for doc in _methods(stats).values()
                if doc.get("jwks")]
        return float(sum(sums)) if sums else None
    return read


def _introspection_calls(stats: Stats) -> float | None:
    calls = [doc["calls"] for doc in _methods(stats).values() if "inactive" in doc]
    return float(sum(calls)) if calls else None


GATEWAY_READINGS: tuple[Reading, ...] = (
    Reading("loom_gateway_auth", "Authentication attempts by method and outcome.", _outcomes,
            kind="counter", label=("method", "outcome")),
    Reading("loom_gateway_cache_hits", "Cache hits by cache (l1: verified tokens, l2: JWKS "
            "keys, introspection, basic).", _caches(True), kind="counter", label="cache"),
    Reading("loom_gateway_cache_misses", "Cache misses by cache (each one did the work the "
            "cache saves).", _caches(False), kind="counter", label="cache"),
    Reading("loom_gateway_jwks_fetches", "JWKS documents fetched from identity providers.",
            _jwks("fetches"), kind="counter"),
    Reading("loom_gateway_jwks_fetch_errors", "JWKS fetches that failed.",
            _jwks("fetch_errors"), kind="counter"),
    Reading("loom_gateway_jwks_refused_by_cooldown", "Unknown key ids answered without a "
            "fetch (within the cooldown).", _jwks("refused_by_cooldown"), kind="counter"),
    Reading("loom_gateway_introspection_calls", "Calls to the token introspection endpoint.",
            _introspection_calls, kind="counter"),
    Reading("loom_gateway_rate_limited", "Requests refused by the rate limiter (429).",
            "ratelimit.limited", kind="counter"),
    Reading("loom_gateway_rate_limit_allowed", "Requests the rate limiter let through.",
            "ratelimit.allowed", kind="counter"),
    Reading("loom_gateway_rate_limit_buckets", "Token buckets held (one per limited key).",
            "ratelimit.buckets"),
)


class GatewayMetrics:
    """loom-gateway's registry (its own, never the process-global one)."""

    def __init__(self, stats: Callable[[], Stats] = dict,
                 readings: tuple[Reading, ...] = GATEWAY_READINGS) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._requests = Counter(
            "loom_gateway_requests", "Requests answered by the gateway, by route, HTTP method "
            "and result (status class).", ["route", "method", "result"],
            registry=self.registry)
        self._latency = Histogram(
            "loom_gateway_request_duration_seconds", "Time from a request's head to its "
            "answer, by route.", ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._introspection = Histogram(
            "loom_gateway_introspection_duration_seconds", "Token introspection round trips, "
            "by result (active, inactive, error).", ["result"], buckets=PROVIDER_BUCKETS,
            registry=self.registry)
        self.registry.register(_Readings(stats, readings))
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def observe_request(self, route: str | None, method: str, status: int,
                        seconds: float) -> None:
        """One answered request. `route` is the configured route's name (None: no route)."""
        key = (route or "none", method if method in HTTP_METHODS else "other",
               f"{status // 100}xx")
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = (self._requests.labels(*key),
                                       self._latency.labels(key[0]))
        c[0].inc()
        c[1].observe(seconds)

    def observe_introspection(self, seconds: float, result: str) -> None:
        self._introspection.labels(result).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The body and Content-Type of a `/metrics` answer."""
        return generate_latest(self.registry), CONTENT_TYPE
