"""RFC 7662 introspection against the local provider over HTTPS, and the mutual-TLS identity
of a real certificate (SECURITY-CATALOGUE E2)."""

from __future__ import annotations

import hashlib
import time

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from loom.gateway.auth.base import AuthFailure, AuthRequest, Identity
from loom.gateway.auth.fetch import HTTPSFetcher, provider_context
from loom.gateway.auth.introspection import IntrospectionAuthenticator
from loom.gateway.auth.mtls import MtlsAuthenticator
from loom.gateway.config import ClientCertHeaders, MtlsConfig, OAuthConfig
from tests.conftest import PKI
from tests.gateway.conftest import CLIENT_ID, CLIENT_SECRET, IdP

pytestmark = pytest.mark.timeout(60)


def bearer(token: str) -> AuthRequest:
    return AuthRequest(((b"authorization", f"Bearer {token}".encode()),))


def oauth(idp: IdP, **kw: object) -> OAuthConfig:
    return OAuthConfig(True, "idp", idp.introspection_url, CLIENT_ID, CLIENT_SECRET.encode(),
                       cache_ttl_s=300.0, cache_size=2, **kw)  # type: ignore[arg-type]


async def test_introspection_results_are_cached_and_expire(idp: IdP,
                                                           fetcher: HTTPSFetcher) -> None:
    wall = [time.time()]
    auth = IntrospectionAuthenticator(oauth(idp), fetcher, wall=lambda: wall[0])
    idp.active["tok-a"] = {"active": True, "sub": "alice", "scope": "read write",
                           "exp": int(wall[0]) + 60}
    idp.active["tok-b"] = {"active": True, "username": "bob", "exp": int(wall[0]) + 3600}
    who = await auth.authenticate(bearer("tok-a"))
    assert isinstance(who, Identity) and who.name == "idp:alice"
    assert who.roles == ("read", "write") and who.method == "oauth"
    assert idp.calls["/introspect"] == 1
    assert idp.introspection_auth[0].startswith("Basic ")  # client credentials were sent
    for _ in range(10):
        assert await auth.authenticate(bearer("tok-a")) == who
    assert idp.calls["/introspect"] == 1
    # exp (60 s) comes before cache_ttl (300 s): the entry ends at exp
    wall[0] += 61
    r = await auth.authenticate(bearer("tok-a"))
    assert isinstance(r, AuthFailure) and r.status == 401  # asked again: exp has passed
    assert idp.calls["/introspect"] == 2
    # cache_ttl before exp: asked again after the TTL, and a revocation shows then
    assert isinstance(await auth.authenticate(bearer("tok-b")), Identity)
    idp.active["tok-b"] = {"active": False}
    assert isinstance(await auth.authenticate(bearer("tok-b")), Identity)  # within the TTL
    wall[0] += 301
    r = await auth.authenticate(bearer("tok-b"))
    assert isinstance(r, AuthFailure) and r.status == 401
    assert r.challenge is not None and 'error="invalid_token"' in r.challenge


async def test_concurrent_misses_for_one_token_make_one_call(idp: IdP,
                                                             fetcher: HTTPSFetcher) -> None:
    auth = IntrospectionAuthenticator(oauth(idp), fetcher)
    idp.active["tok-a"] = {"active": True, "sub": "alice", "exp": int(time.time()) + 60}
    idp.introspection_delay_s = 0.2
    results: list[object] = []

    async def one(token: str) -> None:
        results.append(await auth.authenticate(bearer(token)))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(one, "tok-a")
        for _ in range(5):  # an inactive token: shared too, and still never cached
            nursery.start_soon(one, "tok-x")
    assert idp.calls["/introspect"] == 2
    assert auth.statistics().shared == 23
    assert sum(isinstance(r, Identity) and r.name == "idp:alice" for r in results) == 20
    assert sum(isinstance(r, AuthFailure) and r.status == 401 for r in results) == 5
    assert auth.statistics().cached == 1
    # the request making the shared call goes away: its waiters get 503, never a pass
    idp.active["tok-c"] = {"active": True, "sub": "carol"}
    scopes: list[trio.CancelScope] = []

    async def first() -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            await auth.authenticate(bearer("tok-c"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await trio.sleep(0.05)  # its POST is in flight: the endpoint answers after 0.2 s
        nursery.start_soon(one, "tok-c")
        await trio.sleep(0.05)
        scopes[0].cancel()
    assert isinstance(results[-1], AuthFailure) and results[-1].status == 503
    assert results[-1].retry_after == 1
    assert auth.statistics().shared == 24
    idp.introspection_delay_s = 0.0  # the next request makes a call of its own
    who = await auth.authenticate(bearer("tok-c"))
    assert isinstance(who, Identity) and who.name == "idp:carol"


async def test_inactive_is_401_and_never_cached(idp: IdP, fetcher: HTTPSFetcher) -> None:
    auth = IntrospectionAuthenticator(oauth(idp), fetcher)
    for _ in range(3):
        r = await auth.authenticate(bearer("unknown-token"))
        assert isinstance(r, AuthFailure) and r.status == 401
    assert idp.calls["/introspect"] == 3 and auth.statistics().cached == 0
    idp.active["unknown-token"] = {"active": True, "sub": "carol"}
    assert isinstance(await auth.authenticate(bearer("unknown-token")), Identity)


async def test_the_cache_is_bounded_and_the_provider_down_is_503(
        idp: IdP, fetcher: HTTPSFetcher) -> None:
    auth = IntrospectionAuthenticator(oauth(idp), fetcher)
    for i in range(5):
        idp.active[f"t{i}"] = {"active": True, "sub": f"u{i}"}
        assert isinstance(await auth.authenticate(bearer(f"t{i}")), Identity)
    assert auth.statistics().cached == 2
    idp.down = True
    r = await auth.authenticate(bearer("t0"))  # evicted: asked, and the provider is down
    assert isinstance(r, AuthFailure) and r.status == 503 and r.retry_after == 1
    assert isinstance(await auth.authenticate(bearer("t4")), Identity)  # still cached


async def test_wrong_client_credentials_are_not_a_pass(idp: IdP,
                                                       fetcher: HTTPSFetcher) -> None:
    cfg = OAuthConfig(True, "idp", idp.introspection_url, CLIENT_ID, b"wrong")
    idp.active["tok"] = {"active": True, "sub": "alice"}
    r = await IntrospectionAuthenticator(cfg, fetcher).authenticate(bearer("tok"))
    assert isinstance(r, AuthFailure) and r.status == 503


async def test_mtls_identity_from_the_verified_certificate(pki: PKI) -> None:
    der = x509.load_pem_x509_certificate(pki.pair("admin")[0].read_bytes()).public_bytes(
        serialization.Encoding.DER)
    cert = x509.load_der_x509_certificate(der)
    auth = MtlsAuthenticator(MtlsConfig(True, ("ops",)), ClientCertHeaders(subject="X-S"))
    who = await auth.authenticate(AuthRequest((), peer_certificate=der))
    assert isinstance(who, Identity) and who.roles == ("ops",) and who.method == "mtls"
    headers = dict(who.headers)
    assert headers["X-S"] == cert.subject.rfc4514_string()
    assert headers["X-Client-Issuer"] == cert.issuer.rfc4514_string()
    assert int(headers["X-Client-Serial"], 16) == cert.serial_number
    assert headers["X-Client-Fingerprint"] == hashlib.sha256(der).hexdigest()
    assert await auth.authenticate(AuthRequest(())) is None


async def test_the_provider_context_verifies_against_the_configured_ca(idp: IdP,
                                                                       pki: PKI) -> None:
    idp.active["tok"] = {"active": True, "sub": "alice"}
    cfg = OAuthConfig(True, "idp", idp.introspection_url, CLIENT_ID, CLIENT_SECRET.encode())
    good = HTTPSFetcher(provider_context(pki.ca))
    wrong = HTTPSFetcher(provider_context(pki.other / "ca.pem"))
    try:
        ok = await IntrospectionAuthenticator(cfg, good).authenticate(bearer("tok"))
        assert isinstance(ok, Identity)
        r = await IntrospectionAuthenticator(cfg, wrong).authenticate(bearer("tok"))
        assert isinstance(r, AuthFailure) and r.status == 503  # unverified: never a pass
    finally:
        await good.aclose()
        await wrong.aclose()
