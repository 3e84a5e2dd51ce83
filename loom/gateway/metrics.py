"""The gateway's metrics wired to its parts.

`gateway_metrics(parts)` returns the registry (`loom.obs.gateway.GatewayMetrics`): `parts`
returns the chain and rate limiter in force, read at each scrape, so a reload that replaces
them is followed. The process calls `metrics.observe_request(route, method, status, seconds)`
once per answered request, `attach(metrics, chain)` on every chain it builds (the
introspection method reports each call's latency through it), and answers `GET /metrics` with
`metrics.render()` (body, content type)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from loom.gateway.auth.chain import Chain
from loom.gateway.auth.introspection import IntrospectionAuthenticator
from loom.gateway.ratelimit import RateLimiter
from loom.obs.gateway import GatewayMetrics

__all__ = ["Parts", "attach", "gateway_metrics", "statistics"]

Parts = Callable[[], tuple[Chain, RateLimiter | None]]


def statistics(chain: Chain, limiter: RateLimiter | None) -> dict[str, Any]:
    """The document GATEWAY_READINGS read: {"auth": ..., "ratelimit": ...}."""
    out: dict[str, Any] = {"auth": chain.statistics()}
    if limiter is not None:
        out["ratelimit"] = asdict(limiter.statistics())
    return out


def attach(metrics: GatewayMetrics, chain: Chain) -> None:
    """Point a (new) chain's timing hooks at the registry."""
    for method in chain.methods.values():
        if isinstance(method, IntrospectionAuthenticator):
            method.on_call = metrics.observe_introspection


def gateway_metrics(parts: Parts) -> GatewayMetrics:
    metrics = GatewayMetrics(lambda: statistics(*parts()))
    attach(metrics, parts()[0])
    return metrics
