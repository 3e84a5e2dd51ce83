"""JWT verification against a real local identity provider over HTTPS (SECURITY-CATALOGUE E1,
E2): the L1 verified-token cache, the L2 key cache and every refusal RFC 8725 asks for."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import time
from typing import Any

import jwt
import pytest
import trio
from cryptography.hazmat.primitives import serialization
from jwt.api_jws import PyJWS

from loom.gateway.auth.base import AuthFailure, AuthRequest, Identity
from loom.gateway.auth.fetch import HTTPSFetcher
from loom.gateway.auth.jwt import JwtAuthenticator
from loom.gateway.config import IssuerConfig, JwtConfig, parse
from tests.gateway.conftest import IdP, SigningKey, ec_key

pytestmark = pytest.mark.timeout(60)


def bearer(token: str | bytes) -> AuthRequest:
    raw = token.encode() if isinstance(token, str) else token
    return AuthRequest(((b"authorization", b"Bearer " + raw),))


def config(idp: IdP, **kw: Any) -> JwtConfig:
    issuer = IssuerConfig("idp", idp.issuer, ("RS256", "ES256"), jwks_url=idp.jwks_url)
    defaults: dict[str, Any] = {"enabled": True, "issuers": (issuer,), "audience": ("loom",),
                                "roles_claim": "roles", "leeway_s": 0.0, "jwks_cooldown_s": 60.0}
    defaults.update(kw)
    return JwtConfig(**defaults)


class Mono:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def verify_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every signature PyJWT verifies, counted inside PyJWT itself."""
    calls: list[str] = []
    original = PyJWS._verify_signature

    def counting(self: PyJWS, *args: Any, **kwargs: Any) -> None:
        calls.append("verify")
        original(self, *args, **kwargs)

    monkeypatch.setattr(PyJWS, "_verify_signature", counting)
    return calls


def refused(result: object, reason: str | None = None) -> AuthFailure:
    assert isinstance(result, AuthFailure), result
    assert result.status == 401
    assert result.challenge is not None and 'error="invalid_token"' in result.challenge
    if reason is not None:
        assert result.reason == reason
    return result


async def test_rs256_and_es256_tokens_give_the_issuer_scoped_identity(
        idp: IdP, fetcher: HTTPSFetcher) -> None:
    auth = JwtAuthenticator(config(idp, claims_to_headers={"sub": "X-User-ID"}), fetcher)
    for kid in ("rsa-1", "ec-1"):
        who = await auth.authenticate(bearer(idp.token(kid, roles=["reader", "writer"])))
        assert isinstance(who, Identity), who
        assert who.name == "idp:alice" and who.roles == ("reader", "writer")
        assert who.method == "jwt" and ("X-User-ID", "alice") in who.headers
    assert idp.calls["/jwks"] == 1  # both keys came in one fetch
    assert await auth.authenticate(AuthRequest(())) is None  # no credential: not ours


async def test_an_l1_hit_does_no_signature_verification(
        idp: IdP, fetcher: HTTPSFetcher, verify_calls: list[str]) -> None:
    auth = JwtAuthenticator(config(idp), fetcher)
    token = idp.token("ec-1")
    assert isinstance(await auth.authenticate(bearer(token)), Identity)
    assert len(verify_calls) == 1
    for _ in range(100):
        assert isinstance(await auth.authenticate(bearer(token)), Identity)
    assert len(verify_calls) == 1  # counted inside PyJWT: no verification at all on a hit
    stats = auth.statistics()
    assert stats.verifications == 1 and stats.l1.hits == 100 and stats.l1.entries == 1
    # a different token is a miss and is verified
    assert isinstance(await auth.authenticate(bearer(idp.token("ec-1"))), Identity)
    assert len(verify_calls) == 2


async def test_l1_never_serves_a_token_past_its_exp(idp: IdP, fetcher: HTTPSFetcher,
                                                    verify_calls: list[str]) -> None:
    wall = [time.time()]
    auth = JwtAuthenticator(config(idp), fetcher, wall=lambda: wall[0])
    token = idp.token("ec-1", exp=int(wall[0]) + 30)
    assert isinstance(await auth.authenticate(bearer(token)), Identity)
    wall[0] += 31  # the cache's clock passes exp: the entry is dropped, not served
    await auth.authenticate(bearer(token))
    assert auth.statistics().l1.expired == 1 and len(verify_calls) == 2


async def test_an_expired_token_is_refused_even_when_it_is_in_l1(
        idp: IdP, fetcher: HTTPSFetcher) -> None:
    auth = JwtAuthenticator(config(idp), fetcher)
    exp = int(time.time()) + 1
    token = idp.token("ec-1", exp=exp)
    assert isinstance(await auth.authenticate(bearer(token)), Identity)
    assert auth.statistics().l1.entries == 1
    await trio.sleep(max(0.0, exp - time.time()) + 0.05)
    refused(await auth.authenticate(bearer(token)), "token expired")
    assert auth.statistics().l1.entries == 0


async def test_a_new_kid_refetches_the_jwks_once(idp: IdP, fetcher: HTTPSFetcher,
                                                 signing_keys: list[SigningKey]) -> None:
    mono = Mono()
    auth = JwtAuthenticator(config(idp), fetcher, monotonic=mono)
    assert isinstance(await auth.authenticate(bearer(idp.token("rsa-1"))), Identity)
    assert idp.calls["/jwks"] == 1
    idp.keys.append(signing_keys[2])  # the provider rotates in rsa-2
    mono.now += 61  # past the cooldown since the first fetch
    async with trio.open_nursery() as nursery:  # concurrent misses share one fetch
        for _ in range(5):
            nursery.start_soon(auth.authenticate, bearer(idp.token("rsa-2")))
    assert isinstance(await auth.authenticate(bearer(idp.token("rsa-2"))), Identity)
    assert idp.calls["/jwks"] == 2
    # the withdrawn key stops verifying after the next refresh
    idp.keys = [k for k in idp.keys if k.kid != "rsa-1"]
    mono.now += 61
    await auth.authenticate(bearer(idp.token("ec-1", headers={"kid": "unknown-x"})))
    assert idp.calls["/jwks"] == 3
    refused(await auth.authenticate(bearer(jwt.encode(
        {"iss": idp.issuer, "sub": "a", "aud": "loom", "iat": int(time.time()),
         "exp": int(time.time()) + 60}, signing_keys[0].private, algorithm="RS256",
        headers={"kid": "rsa-1"}))), "unknown signing key")


async def test_the_key_set_is_refreshed_periodically(idp: IdP, fetcher: HTTPSFetcher,
                                                     signing_keys: list[SigningKey]) -> None:
    mono = Mono()
    auth = JwtAuthenticator(config(idp, jwks_refresh_s=600.0), fetcher, monotonic=mono)
    assert isinstance(await auth.authenticate(bearer(idp.token("rsa-1"))), Identity)
    keys = auth.issuers[idp.issuer][1]
    assert keys is not None and idp.calls["/jwks"] == 1
    mono.now += 599  # known kids within refresh_s: no fetch
    assert isinstance(await auth.authenticate(bearer(idp.token("rsa-1"))), Identity)
    assert idp.calls["/jwks"] == 1
    # the provider withdraws rsa-1 without any new kid appearing: refused after the refresh
    idp.keys = [k for k in idp.keys if k.kid != "rsa-1"]
    stale = jwt.encode({"iss": idp.issuer, "sub": "a", "aud": "loom", "iat": int(time.time()),
                        "exp": int(time.time()) + 60}, signing_keys[0].private,
                       algorithm="RS256", headers={"kid": "rsa-1"})
    mono.now += 1
    refused(await auth.authenticate(bearer(stale)), "unknown signing key")
    assert idp.calls["/jwks"] == 2 and keys.statistics().periodic == 1
    # a failing periodic refresh is retried after the cooldown, not on every request
    idp.down = True
    mono.now += 600
    for _ in range(50):
        assert isinstance(await auth.authenticate(bearer(idp.token("ec-1"))), Identity)
    assert idp.calls["/jwks"] == 3 and keys.statistics().fetch_errors == 1
    mono.now += 60
    assert isinstance(await auth.authenticate(bearer(idp.token("ec-1"))), Identity)
    assert idp.calls["/jwks"] == 4 and keys.statistics().periodic == 3


async def test_a_thousand_made_up_kids_refetch_at_most_once_per_cooldown(
        idp: IdP, fetcher: HTTPSFetcher) -> None:
    mono = Mono()
    auth = JwtAuthenticator(config(idp), fetcher, monotonic=mono)
    assert isinstance(await auth.authenticate(bearer(idp.token("ec-1"))), Identity)
    rng = random.Random(16)
    odd = ["../../../etc/passwd", "' OR '1'='1", "%00", "kid\x7f", "a" * 300, ""]
    for round_ in range(2):
        mono.now += 61
        for i in range(1000):
            kid = odd[i] if i < len(odd) else f"{rng.getrandbits(64):x}"
            refused(await auth.authenticate(bearer(idp.token("ec-1", headers={"kid": kid}))))
        assert idp.calls["/jwks"] == 2 + round_  # one refetch for the 1,000
    keys = auth.issuers[idp.issuer][1]
    assert keys is not None and keys.statistics().refused_by_cooldown == 1998


async def test_the_provider_down_still_serves_known_kids(idp: IdP,
                                                         fetcher: HTTPSFetcher) -> None:
    mono = Mono()
    auth = JwtAuthenticator(config(idp), fetcher, monotonic=mono)
    assert isinstance(await auth.authenticate(bearer(idp.token("rsa-1"))), Identity)
    idp.down = True
    mono.now += 61
    refused(await auth.authenticate(bearer(idp.token("rsa-1", headers={"kid": "new"}))))
    keys = auth.issuers[idp.issuer][1]
    assert keys is not None and keys.statistics().fetch_errors == 1
    assert keys.statistics().keys == 2  # kept
    for kid in ("rsa-1", "ec-1"):  # fresh tokens (not in L1), verified with the kept keys
        assert isinstance(await auth.authenticate(bearer(idp.token(kid))), Identity)


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _forge(header: dict[str, Any], claims: dict[str, Any], sign: Any) -> bytes:
    signing_input = _b64(json.dumps(header).encode()) + b"." + _b64(json.dumps(claims).encode())
    return signing_input + b"." + _b64(sign(signing_input))


async def test_rfc8725_refusals(idp: IdP, fetcher: HTTPSFetcher, verify_calls: list[str],
                                signing_keys: list[SigningKey]) -> None:
    """Catalogue E1: alg none (any spelling), HS256 signed with the RSA public key, unlisted
    algorithms, wrong iss, wrong aud, expired, missing exp, nbf in the future."""
    auth = JwtAuthenticator(config(idp), fetcher)
    now = int(time.time())
    good = {"iss": idp.issuer, "sub": "mallory", "aud": "loom", "iat": now, "exp": now + 300}
    for alg in ("none", "None", "NONE", "nOnE"):
        token = _forge({"alg": alg, "kid": "rsa-1"}, good, lambda _: b"")
        refused(await auth.authenticate(bearer(token)), "algorithm not allowed")
    pem = signing_keys[0].private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    confused = _forge({"alg": "HS256", "kid": "rsa-1"}, good,
                      lambda m: hmac.new(pem, m, hashlib.sha256).digest())
    refused(await auth.authenticate(bearer(confused)), "algorithm not allowed")
    ps = jwt.encode(good, signing_keys[0].private, algorithm="PS256", headers={"kid": "rsa-1"})
    refused(await auth.authenticate(bearer(ps)), "algorithm not allowed")
    # an RS256 header on an EC key's kid: the key is bound to ES256
    refused(await auth.authenticate(bearer(idp.token("rsa-1", headers={"kid": "ec-1"}))),
            "unknown signing key")
    refused(await auth.authenticate(bearer(idp.token(iss="https://evil.example/"))),
            "unknown issuer")
    refused(await auth.authenticate(bearer(idp.token(aud="someone-else"))), "wrong audience")
    refused(await auth.authenticate(bearer(idp.token(aud=None))), "missing required claim")
    refused(await auth.authenticate(bearer(idp.token(exp=now - 5))), "token expired")
    refused(await auth.authenticate(bearer(idp.token(exp=None))), "missing required claim")
    refused(await auth.authenticate(bearer(idp.token(nbf=now + 120))), "token not yet valid")
    refused(await auth.authenticate(bearer(idp.token(sub=None))), "token has no subject")
    tampered = idp.token("rsa-1")[:-4] + "AAAA"
    refused(await auth.authenticate(bearer(tampered)), "bad signature")
    refused(await auth.authenticate(bearer("a.b.c")), "malformed token")
    assert auth.statistics().l1.entries == 0  # nothing refused was cached


async def test_header_jku_jwk_and_x5u_are_never_followed(idp: IdP,
                                                         fetcher: HTTPSFetcher) -> None:
    """Catalogue E2: a token carrying its own key (jwk), a URL for keys (jku, x5u) is checked
    against the configured keys only; nothing is fetched from the URLs it names."""
    auth = JwtAuthenticator(config(idp), fetcher)
    attacker = ec_key("attacker")
    for extra in ({"jwk": attacker.public_jwk()},
                  {"jku": f"https://127.0.0.1:{idp.port}/evil-jwks"},
                  {"x5u": f"https://127.0.0.1:{idp.port}/evil-cert"}):
        now = int(time.time())
        token = jwt.encode({"iss": idp.issuer, "sub": "mallory", "aud": "loom", "iat": now,
                            "exp": now + 60}, attacker.private, algorithm="ES256",
                           headers={"kid": "ec-1", **extra})
        refused(await auth.authenticate(bearer(token)), "bad signature")
    assert set(idp.calls) == {"/jwks"}  # the evil URLs were never requested


async def test_keycloak_mode_discovers_keys_and_reads_realm_roles(
        idp: IdP, fetcher: HTTPSFetcher, tmp_path: Any) -> None:
    raw = {"middleware": {"auth": {"jwt": {
        "audience": "loom",
        "issuers": [{"name": "kc", "issuer": idp.issuer, "algorithms": ["RS256", "ES256"]}]}}}}
    cfg = parse(raw, env={"AUTH_TYPE": "keycloak"})
    assert cfg.auth.type == "keycloak" and cfg.auth.jwt.issuers[0].discovery
    auth = JwtAuthenticator(cfg.auth.jwt, fetcher)
    token = idp.token("ec-1", realm_access={"roles": ["loom-admin", "offline_access"]})
    who = await auth.authenticate(bearer(token))
    assert isinstance(who, Identity) and who.name == "kc:alice"
    assert who.roles == ("loom-admin", "offline_access")
    assert idp.calls["/realms/test/.well-known/openid-configuration"] == 1
    assert idp.calls["/jwks"] == 1


async def test_scope_roles_and_a_static_hs256_issuer() -> None:
    secret = b"a-static-secret-of-at-least-32-bytes!!"
    cfg = JwtConfig(enabled=True, roles_claim="scope", audience=("loom",), issuers=(
        IssuerConfig("svc", "https://svc.example", ("HS256",), secret=secret),))
    auth = JwtAuthenticator(cfg, None)
    now = int(time.time())
    claims = {"iss": "https://svc.example", "sub": "batch", "aud": "loom", "iat": now,
              "exp": now + 60, "scope": "read write"}
    who = await auth.authenticate(bearer(jwt.encode(claims, secret, algorithm="HS256")))
    assert isinstance(who, Identity) and who.name == "svc:batch"
    assert who.roles == ("read", "write")
    wrong = jwt.encode(claims, b"another-secret-of-at-least-32-bytes!!", algorithm="HS256")
    refused(await auth.authenticate(bearer(wrong)), "bad signature")


async def test_two_authorization_headers_are_ambiguous(idp: IdP,
                                                       fetcher: HTTPSFetcher) -> None:
    auth = JwtAuthenticator(config(idp), fetcher)
    t = idp.token().encode()
    r = await auth.authenticate(AuthRequest(((b"authorization", b"Bearer " + t),
                                             (b"authorization", b"Bearer " + t))))
    assert isinstance(r, AuthFailure) and r.status == 400
    r = await auth.authenticate(bearer(b"x" * 9000))
    refused(r, "malformed token")
    r = await auth.authenticate(bearer("opaque-token"))
    assert isinstance(r, AuthFailure) and r.fallthrough  # not a JWT: introspection's
