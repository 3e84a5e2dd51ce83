"""The gateway's metrics wired to its parts: `gateway_metrics(chain, limiter)` returns the
registry (`loom.obs.gateway.GatewayMetrics`) whose `render()` a `/metrics` handler answers
with, and whose `observe_request` the proxy calls once per answered request. The scrape-time
readings come from the chain's and the limiter's own statistics; introspection latency is
observed by the introspection method itself (its `on_call`)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from loom.gateway.auth.chain import Chain
from loom.gateway.auth.introspection import IntrospectionAuthenticator
from loom.gateway.ratelimit import RateLimiter
from loom.obs.gateway import GatewayMetrics

__all__ = ["gateway_metrics", "statistics"]


def statistics(chain: Chain, limiter: RateLimiter | None) -> dict[str, Any]:
    """The document GATEWAY_READINGS read: {"auth": ..., "ratelimit": ...}."""
    out: dict[str, Any] = {"auth": chain.statistics()}
    if limiter is not None:
        out["ratelimit"] = asdict(limiter.statistics())
    return out


def gateway_metrics(chain: Chain, limiter: RateLimiter | None = None) -> GatewayMetrics:
    metrics = GatewayMetrics(lambda: statistics(chain, limiter))
    for method in chain.methods.values():
        if isinstance(method, IntrospectionAuthenticator):
            method.on_call = metrics.observe_introspection
    return metrics
