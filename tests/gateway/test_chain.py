"""Per-route methods, chains and fallback, 401 vs 403, guest mode and a custom method loaded
through its entry point, all built from a configuration file by `loom.gateway.auth.build`."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import jwt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from loom.gateway.auth import AuthFailure, AuthRequest, Chain, Identity, build
from loom.gateway.auth.fetch import HTTPSFetcher
from loom.gateway.config import ConfigError, GatewayConfig, RouteAuth, load
from tests.conftest import PKI
from tests.gateway.conftest import CLIENT_ID, CLIENT_SECRET, IdP

pytestmark = pytest.mark.timeout(60)

SECRET = b"hs256-secret-for-the-chain-tests-0123456789"
API_KEY = "chain-test-key-77"


def write_config(tmp_path: Path, idp: IdP | None = None, extra_auth: str = "",
                 chain: str = "[jwt, oauth, api_key]", require_any: str = "true") -> Path:
    (tmp_path / "hs.key").write_bytes(SECRET)
    (tmp_path / "hs.key").chmod(0o600)
    (tmp_path / "client.secret").write_text(CLIENT_SECRET + "\n")
    (tmp_path / "client.secret").chmod(0o600)
    url = idp.introspection_url if idp else "https://127.0.0.1:9/introspect"
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    f = tmp_path / "gateway.yaml"
    f.write_text(f"""
middleware:
  auth:
    jwt:
      issuers: [{{name: svc, issuer: "https://svc.example", algorithms: [HS256],
                 secret_file: hs.key}}]
      audience: loom
      roles_claim: roles
    oauth: {{introspection_url: "{url}", client_id: {CLIENT_ID},
             client_secret_file: client.secret, cache_ttl: 5m}}
    api_key: {{header: X-API-Key, keys: [{{key_sha256: {digest}, name: ci, roles: [reader]}}]}}
{extra_auth}
    chain: {chain}
    require_any: {require_any}
routes:
  - {{id: public, path: /public/*, upstream: loom}}
  - {{id: admin, path: /admin/*, upstream: loom,
     auth: {{require: true, methods: [jwt], roles: [loom-admin]}}}}
  - {{id: api, path: /api/*, upstream: loom, auth: {{require: true}}}}
upstreams:
  - {{name: loom, kind: http, endpoints: ["https://127.0.0.1:9"]}}
""")
    return f


def token(**claims: object) -> bytes:
    now = int(time.time())
    body = {"iss": "https://svc.example", "sub": "alice", "aud": "loom", "iat": now,
            "exp": now + 60, **claims}
    return jwt.encode(body, SECRET, algorithm="HS256").encode()


def req(*headers: tuple[bytes, bytes]) -> AuthRequest:
    return AuthRequest(tuple(headers), remote="127.0.0.1:5000")


def route(cfg: GatewayConfig, path: str) -> RouteAuth:
    r = cfg.route_for(path)
    assert r is not None
    return r.auth


async def chain_for(tmp_path: Path, fetcher: HTTPSFetcher | None, idp: IdP | None = None,
                    **kw: str) -> tuple[GatewayConfig, Chain]:
    cfg = load(write_config(tmp_path, idp, **kw), env={})
    return cfg, build(cfg, fetcher)


async def test_public_routes_need_nothing_and_private_ones_do(
        tmp_path: Path, fetcher: HTTPSFetcher) -> None:
    cfg, chain = await chain_for(tmp_path, fetcher)
    assert await chain.authenticate(route(cfg, "/public/x"), req()) is None
    # even a wrong credential is not looked at on a public route
    assert await chain.authenticate(route(cfg, "/public/x"),
                                    req((b"x-api-key", b"wrong"))) is None
    missing = await chain.authenticate(route(cfg, "/api/x"), req())
    assert isinstance(missing, AuthFailure) and missing.status == 401
    assert missing.challenge == 'Bearer realm="loom"'  # jwt and oauth: one challenge


async def test_chain_falls_back_to_the_next_method_only_when_a_credential_is_absent(
        tmp_path: Path, fetcher: HTTPSFetcher) -> None:
    cfg, chain = await chain_for(tmp_path, fetcher)
    api = route(cfg, "/api/x")
    who = await chain.authenticate(api, req((b"x-api-key", API_KEY.encode())))
    assert isinstance(who, Identity) and who.name == "apikey:ci"
    who = await chain.authenticate(api, req((b"authorization", b"Bearer " + token())))
    assert isinstance(who, Identity) and who.name == "svc:alice"
    # a bad token ends the chain even when a valid API key is also there
    bad = await chain.authenticate(api, req((b"authorization", b"Bearer " + token(aud="x")),
                                            (b"x-api-key", API_KEY.encode())))
    assert isinstance(bad, AuthFailure) and bad.status == 401
    assert bad.challenge is not None and 'error="invalid_token"' in bad.challenge


async def test_an_opaque_token_falls_through_to_introspection(
        tmp_path: Path, idp: IdP, fetcher: HTTPSFetcher) -> None:
    cfg, chain = await chain_for(tmp_path, fetcher, idp)
    idp.active["opaque-1"] = {"active": True, "sub": "dave", "scope": "reader"}
    who = await chain.authenticate(route(cfg, "/api/x"),
                                   req((b"authorization", b"Bearer opaque-1")))
    assert isinstance(who, Identity) and who.name == "oauth:dave" and who.method == "oauth"
    r = await chain.authenticate(route(cfg, "/api/x"),
                                 req((b"authorization", b"Bearer opaque-2")))
    assert isinstance(r, AuthFailure) and r.status == 401


async def test_403_for_a_caller_the_route_does_not_admit(
        tmp_path: Path, fetcher: HTTPSFetcher) -> None:
    cfg, chain = await chain_for(tmp_path, fetcher)
    admin = route(cfg, "/admin/x")
    # valid API key, but /admin accepts jwt only: authenticated, not admitted
    r = await chain.authenticate(admin, req((b"x-api-key", API_KEY.encode())))
    assert isinstance(r, AuthFailure) and r.status == 403
    # a JWT without the role
    r = await chain.authenticate(admin, req((b"authorization", b"Bearer " + token())))
    assert isinstance(r, AuthFailure) and r.status == 403
    who = await chain.authenticate(admin, req(
        (b"authorization", b"Bearer " + token(roles=["loom-admin"]))))
    assert isinstance(who, Identity) and who.roles == ("loom-admin",)
    r = await chain.authenticate(admin, req((b"x-api-key", b"wrong")))
    assert isinstance(r, AuthFailure) and r.status == 401


async def test_require_all_needs_every_method(
        tmp_path: Path, fetcher: HTTPSFetcher) -> None:
    cfg, chain = await chain_for(tmp_path, fetcher, chain="[jwt, api_key]", require_any="false")
    api = route(cfg, "/api/x")
    r = await chain.authenticate(api, req((b"x-api-key", API_KEY.encode())))
    assert isinstance(r, AuthFailure) and r.status == 401
    who = await chain.authenticate(api, req((b"x-api-key", API_KEY.encode()), (
        b"authorization", b"Bearer " + token(roles=["writer"]))))
    assert isinstance(who, Identity) and who.name == "svc:alice"
    assert who.roles == ("writer", "reader")


async def test_noop_is_guest_mode(
        tmp_path: Path, fetcher: HTTPSFetcher) -> None:
    cfg = load(write_config(tmp_path, extra_auth="    guest_roles: [reader]"),
               env={"AUTH_TYPE": "noop"})
    chain = build(cfg, fetcher)
    who = await chain.authenticate(route(cfg, "/admin/x"), req())
    assert isinstance(who, Identity) and who.name == "guest" and who.roles == ("reader",)
    assert any("noop" in w for w in cfg.warnings)


PLUGIN = """
    custom:
      shared_token: {header: X-Shared-Token, tokens: {erin: s3cret-token}}
"""


def install_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the example plugin the way an installed distribution does: a dist-info
    directory with an entry_points.txt on sys.path."""
    site = tmp_path / "site"
    dist = site / "loom_example_plugin-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: loom-example-plugin\n"
                                   "Version: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[loom.gateway.auth]\nshared_token = tests.gateway.plugin_example:factory\n")
    monkeypatch.syspath_prepend(str(site))


async def test_a_custom_method_from_its_entry_point(tmp_path: Path, fetcher: HTTPSFetcher,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    install_plugin(tmp_path, monkeypatch)
    cfg = load(write_config(tmp_path, extra_auth=PLUGIN, chain="[jwt, shared_token]"), env={})
    chain = build(cfg, fetcher)
    who = await chain.authenticate(route(cfg, "/api/x"),
                                   req((b"x-shared-token", b"s3cret-token")))
    assert isinstance(who, Identity) and who.name == "shared_token:erin"
    r = await chain.authenticate(route(cfg, "/api/x"), req((b"x-shared-token", b"nope")))
    assert isinstance(r, AuthFailure) and r.status == 401


async def test_a_custom_method_that_is_not_installed_stops_the_start(
        tmp_path: Path, fetcher: HTTPSFetcher) -> None:
    cfg = load(write_config(tmp_path, extra_auth=PLUGIN.replace("shared_token", "absent")),
               env={})
    with pytest.raises(ConfigError, match=r"middleware\.auth\.custom\.absent"):
        build(cfg, fetcher)


async def test_a_verify_listener_makes_the_certificate_the_identity(
        tmp_path: Path, fetcher: HTTPSFetcher, pki: PKI) -> None:
    f = write_config(tmp_path)
    doc = yaml.safe_load(f.read_text())
    doc["listeners"] = [{"name": "edge", "address": "127.0.0.1:0", "tls": {
        "cert_file": "c.pem", "key_file": "c.key", "client_auth": "verify",
        "ca_file": "ca.pem"}}]
    f.write_text(yaml.safe_dump(doc))
    cfg = load(f, env={})
    assert cfg.auth.mtls.enabled
    chain = build(cfg, fetcher)
    der = x509.load_pem_x509_certificate(pki.pair("admin")[0].read_bytes()).public_bytes(
        serialization.Encoding.DER)
    request = AuthRequest(((b"x-api-key", API_KEY.encode()),), peer_certificate=der)
    who = await chain.authenticate(route(cfg, "/api/x"), request, certificate_is_identity=True)
    assert isinstance(who, Identity) and who.method == "mtls"
    who = await chain.authenticate(route(cfg, "/api/x"), request)
    assert isinstance(who, Identity) and who.method == "api_key"
