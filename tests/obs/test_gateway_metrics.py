"""loom-gateway's registry: auth outcomes per method, L1 and L2 cache hits and misses, JWKS
fetches, introspection calls and latency, rate-limit decisions and requests by route, read from
the real authentication chain against a real identity provider (HTTPS, JWKS, introspection)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loom.gateway.auth import AuthFailure, Identity
from loom.gateway.auth.fetch import HTTPSFetcher
from loom.gateway.auth.jwt import JwtAuthenticator
from loom.gateway.metrics import gateway_metrics
from loom.gateway.ratelimit import RateLimiter
from loom.obs.gateway import GATEWAY_READINGS
from loom.obs.metrics import CONTENT_TYPE, exported_names
from tests.gateway.conftest import IdP
from tests.gateway.test_chain import chain_for, req, route
from tests.gateway.test_jwt import config as jwks_config
from tests.obs.test_metrics import samples, value

pytestmark = pytest.mark.timeout(60)


async def test_the_gateway_registry_reads_the_real_chain(tmp_path: Path, idp: IdP,
                                                         fetcher: HTTPSFetcher) -> None:
    cfg, chain = await chain_for(tmp_path, fetcher, idp)
    chain.methods["jwt"] = JwtAuthenticator(jwks_config(idp), fetcher)  # keys from the JWKS
    limiter = RateLimiter(rate=1, burst=1)
    metrics = gateway_metrics(lambda: (chain, limiter))
    api = route(cfg, "/api/x")

    async def auth(*headers: tuple[bytes, bytes]) -> Identity | AuthFailure | None:
        return await chain.authenticate(api, req(*headers))

    t1, t2 = idp.token(), idp.token()  # one key, two tokens
    for t in (t1, t1, t2):
        assert isinstance(await auth((b"authorization", b"Bearer " + t.encode())), Identity)
    idp.active["opaque-1"] = {"active": True, "sub": "dave"}
    assert isinstance(await auth((b"authorization", b"Bearer opaque-1")), Identity)
    assert isinstance(await auth((b"authorization", b"Bearer opaque-1")), Identity)  # cached
    assert isinstance(await auth((b"authorization", b"Bearer opaque-2")), AuthFailure)
    assert isinstance(await auth((b"x-api-key", b"wrong")), AuthFailure)
    assert limiter.check("k", 0.0).allowed and not limiter.check("k", 0.0).allowed
    metrics.observe_request("api", "GET", 200, 0.003)
    metrics.observe_request(None, "BREW", 404, 0.0001)  # unbounded values fold into labels

    body, ctype = metrics.render()
    assert ctype == CONTENT_TYPE
    s = samples(body.decode())
    assert value(s, "loom_gateway_auth_total", method="jwt", outcome="ok") == 3
    assert value(s, "loom_gateway_auth_total", method="oauth", outcome="ok") == 2
    assert value(s, "loom_gateway_auth_total", method="oauth", outcome="unauthenticated") == 1
    assert value(s, "loom_gateway_auth_total", method="api_key",
                 outcome="unauthenticated") == 1
    # L1: t1 verified once then remembered; t2 verified. L2: t1's key fetched, then known.
    assert value(s, "loom_gateway_cache_hits_total", cache="l1") == 1
    assert value(s, "loom_gateway_cache_misses_total", cache="l1") == 2
    assert value(s, "loom_gateway_cache_misses_total", cache="l2") == 1
    assert value(s, "loom_gateway_cache_hits_total", cache="l2") == 1
    assert value(s, "loom_gateway_jwks_fetches_total") == 1 == idp.calls["/jwks"]
    assert value(s, "loom_gateway_cache_hits_total", cache="introspection") == 1
    assert value(s, "loom_gateway_introspection_calls_total") == 2 == idp.calls["/introspect"]
    assert value(s, "loom_gateway_introspection_duration_seconds_count", result="active") == 1
    assert value(s, "loom_gateway_introspection_duration_seconds_count",
                 result="inactive") == 1
    assert value(s, "loom_gateway_rate_limited_total") == 1
    assert value(s, "loom_gateway_rate_limit_allowed_total") == 1
    assert value(s, "loom_gateway_requests_total", route="api", method="GET",
                 result="2xx") == 1
    assert value(s, "loom_gateway_requests_total", route="none", method="other",
                 result="4xx") == 1
    assert value(s, "loom_gateway_request_duration_seconds_count", route="api") == 1
    # No token, user or key in any label; every sample is a defined name.
    text = body.decode()
    for secret in (t1, "dave", "opaque-1", "wrong", "alice"):
        assert secret not in text
    from loom.obs.gateway import GatewayMetrics

    known = exported_names(GatewayMetrics().registry, GATEWAY_READINGS)
    names = {n for n, _labels in s if not n.endswith("_created")}  # the library's own
    assert names <= known, names - known
