"""The configuration schema: the issue's example in YAML and TOML, and every refusal naming
its key."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import yaml

from loom.gateway.config import ConfigError, canonical_path, check, load, parse, parse_duration

DIGEST = hashlib.sha256(b"production-key").hexdigest()
HASH = "$2y$05$QDyNJ3es5/D5c5Jx3tmQ5u1Vehi2Ez9TU8rd1FQ74yer1YH2ashl6"


def example() -> dict[str, Any]:
    """The shape of issue #16's example, with every placeholder filled in."""
    return {
        "listeners": [{"name": "https", "address": "127.0.0.1:8443", "tls": {
            "cert_file": "gw.pem", "key_file": "gw.key", "client_auth": "verify",
            "ca_file": "ca.pem", "client_cert_headers": {
                "subject": "X-Client-Subject", "issuer": "X-Client-Issuer",
                "serial": "X-Client-Serial", "fingerprint": "X-Client-Fingerprint"}}}],
        "middleware": {"auth": {
            "api_key": {"enabled": True, "header": "X-API-Key", "query_param": "api_key",
                        "keys": [{"key_sha256": DIGEST, "name": "production",
                                  "rate_limit": 1000, "roles": ["data-writer"]}]},
            "basic": {"enabled": True, "realm": "API Access",
                      "users": [{"username": "admin", "password_hash": HASH}]},
            "jwt": {"enabled": True, "header": "Authorization", "scheme": "Bearer",
                    "issuers": [{"name": "idp", "issuer": "https://idp.example/",
                                 "jwks_url": "https://idp.example/jwks",
                                 "algorithms": ["RS256", "ES256"]}],
                    "audience": "loom", "claims_to_headers": {"sub": "X-User-ID"},
                    "roles_claim": "roles"},
            "oauth": {"enabled": True, "introspection_url": "https://idp.example/introspect",
                      "client_id": "gateway", "client_secret_file": "client.secret",
                      "cache_ttl": "5m", "cache_size": 10000},
            "chain": ["jwt", "api_key"],
            "require_any": True}},
        "routes": [{"id": "public", "path": "/public/*", "upstream": "loom"},
                   {"id": "api", "path": "/api/*", "upstream": "loom",
                    "auth": {"require": True, "methods": ["jwt", "api_key"]}}],
        "upstreams": [{"name": "loom", "kind": "loom", "endpoints": ["https://127.0.0.1:7443"],
                       "tls": {"ca_file": "ca.pem", "cert_file": "gateway.pem",
                               "key_file": "gateway.key"}}],
        "rate_limit": {"enabled": True, "key": "header:X-User-ID", "rate": 100, "burst": 200},
    }


@pytest.fixture
def secret_dir(tmp_path: Path) -> Path:
    (tmp_path / "client.secret").write_text("s3cret\n")
    (tmp_path / "client.secret").chmod(0o600)
    return tmp_path


def write(d: Path, doc: dict[str, Any], name: str = "gw.yaml", mode: int = 0o644) -> Path:
    f = d / name
    if name.endswith(".toml"):
        f.write_text(tomli_w.dumps(doc))
    else:
        f.write_text(yaml.safe_dump(doc))
    f.chmod(mode)
    return f


def refused(d: Path, doc: dict[str, Any], key: str, *, mode: int = 0o644,
            env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        load(write(d, doc, mode=mode), env=env or {})
    assert e.value.key == key, str(e.value)
    assert str(e.value).startswith(key)
    problems = check(d / "gw.yaml", env=env or {})
    assert problems == [str(e.value)]
    return str(e.value)


def test_the_example_reads_the_same_from_yaml_and_toml(secret_dir: Path) -> None:
    y = load(write(secret_dir, example()), env={})
    t = load(write(secret_dir, example(), "gw.toml"), env={})
    assert y.auth == t.auth and y.routes == t.routes and y.listeners == t.listeners
    assert y.upstreams == t.upstreams and y.rate_limit == t.rate_limit
    assert y.auth.oauth.cache_ttl_s == 300 and y.auth.oauth.client_secret == b"s3cret"
    assert y.auth.api_key.keys[0].key_sha256 == bytes.fromhex(DIGEST)
    assert y.auth.jwt.audience == ("loom",) and y.auth.type == "custom"
    tls = y.listeners[0].tls
    assert tls is not None and tls.ca_file == secret_dir / "ca.pem"
    route = y.route_for("/api/v1/kv")
    assert route is not None and route.id == "api" and route.auth.require
    assert y.route_for("/public") is not None and y.route_for("/other") is None
    assert check(secret_dir / "gw.yaml", env={}) == []


def test_unknown_keys_are_refused_by_name(secret_dir: Path) -> None:
    doc = example()
    doc["middleware"]["auth"]["jwt"]["issuers"][0]["algoritms"] = ["RS256"]
    refused(secret_dir, doc, "middleware.auth.jwt.issuers[0].algoritms")
    doc = example()
    doc["routes"][1]["auth"]["requre"] = True
    refused(secret_dir, doc, "routes[1].auth.requre")
    doc = example()
    doc["listners"] = []
    refused(secret_dir, doc, "listners")


def test_routes_need_an_existing_upstream(secret_dir: Path) -> None:
    doc = example()
    del doc["routes"][0]["upstream"]
    refused(secret_dir, doc, "routes[0].upstream")
    doc = example()
    doc["routes"][1]["upstream"] = "elsewhere"
    refused(secret_dir, doc, "routes[1].upstream")
    doc = example()
    doc["routes"][1]["auth"]["methods"] = ["jwt", "basic-auth"]
    refused(secret_dir, doc, "routes[1].auth.methods[1]")


def test_inline_secrets_only_in_a_file_nobody_else_can_read(secret_dir: Path) -> None:
    doc = example()
    oauth = doc["middleware"]["auth"]["oauth"]
    del oauth["client_secret_file"]
    oauth["client_secret"] = "inline-secret"
    msg = refused(secret_dir, doc, "middleware.auth.oauth.client_secret")
    assert "world-readable" in msg and "inline-secret" not in msg
    cfg = load(write(secret_dir, doc, mode=0o600), env={})
    assert cfg.auth.oauth.client_secret == b"inline-secret"
    doc = example()
    (secret_dir / "client.secret").chmod(0o644)
    refused(secret_dir, doc, "middleware.auth.oauth.client_secret_file")


def test_algorithm_lists_are_explicit_without_none_or_confusion(secret_dir: Path) -> None:
    for algs in (["RS256", "none"], ["None"], ["HS256", "RS256"], [], ["XS256"]):
        doc = example()
        doc["middleware"]["auth"]["jwt"]["issuers"][0]["algorithms"] = algs
        refused(secret_dir, doc, "middleware.auth.jwt.issuers[0].algorithms")
    doc = example()
    del doc["middleware"]["auth"]["jwt"]["issuers"][0]["algorithms"]
    refused(secret_dir, doc, "middleware.auth.jwt.issuers[0].algorithms")


def test_auth_type_from_the_environment_wins(secret_dir: Path) -> None:
    doc = example()
    doc["middleware"]["auth"]["type"] = "custom"
    assert load(write(secret_dir, doc), env={"AUTH_TYPE": "keycloak"}).auth.type == "keycloak"
    refused(secret_dir, doc, "AUTH_TYPE", env={"AUTH_TYPE": "ldap"})
    doc["middleware"]["auth"]["type"] = "magic"
    refused(secret_dir, doc, "middleware.auth.type")
    # auth0's convention: the API identifier is the audience, and it is required
    doc = example()
    del doc["middleware"]["auth"]["jwt"]["audience"]
    refused(secret_dir, doc, "middleware.auth.jwt.issuers[0].audience",
            env={"AUTH_TYPE": "auth0"})


def test_guest_mode_refuses_a_non_loopback_listener(secret_dir: Path) -> None:
    doc = example()
    doc["listeners"][0]["address"] = "0.0.0.0:8443"
    refused(secret_dir, doc, "listeners[0].address", env={"AUTH_TYPE": "noop"})
    cfg = load(secret_dir / "gw.yaml", env={"AUTH_TYPE": "noop"}, allow_insecure_guest=True)
    assert cfg.auth.type == "noop"
    doc["listeners"][0]["address"] = "[::1]:8443"
    assert load(write(secret_dir, doc), env={"AUTH_TYPE": "noop"}).listeners[0].loopback


def test_durations() -> None:
    assert parse_duration("5m", "k") == 300 and parse_duration("250ms", "k") == 0.25
    assert parse_duration(12, "k") == 12 and parse_duration("1h", "k") == 3600
    for bad in ("5x", "-1s", True, "m"):
        with pytest.raises(ConfigError, match=r"^k:"):
            parse_duration(bad, "k")


def test_smaller_refusals() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"listeners": [{"name": "a", "address": "nohost"}]}, "listeners[0].address"),
        ({"listeners": [{"name": "a", "address": "127.0.0.1:1", "tls": {
            "cert_file": "c", "key_file": "k", "client_auth": "verify"}}]},
         "listeners[0].tls.ca_file"),
        ({"rate_limit": {"key": "cookie:x"}}, "rate_limit.key"),
        ({"middleware": {"auth": {"chain": ["jwt"]}}}, "middleware.auth.chain[0]"),
        ({"middleware": {"auth": {"basic": {"users": [
            {"username": "a", "password_hash": "plain"}]}}}},
         "middleware.auth.basic.users[0].password_hash"),
        ({"middleware": {"auth": {"jwt": {"issuers": [{
            "name": "x", "issuer": "http://idp", "discovery": True,
            "algorithms": ["RS256"]}]}}}}, "middleware.auth.jwt.issuers[0].issuer"),
        ({"upstreams": [{"name": "l", "kind": "loom", "endpoints": ["https://h:1"]}]},
         "upstreams[0].tls"),
        ({"middleware": {"auth": {"jwt": {"jwks_cooldown": "2m", "jwks_refresh": "1m",
                                          "issuers": [{"name": "x", "issuer": "https://idp",
                                                       "discovery": True,
                                                       "algorithms": ["RS256"]}]}}}},
         "middleware.auth.jwt.jwks_refresh"),
    ]
    for doc, key in cases:
        with pytest.raises(ConfigError) as e:
            parse(doc, env={})
        assert e.value.key == key, str(e.value)


def test_check_names_a_missing_plugin(tmp_path: Path) -> None:
    f = tmp_path / "gw.yaml"
    f.write_text("middleware: {auth: {custom: {not_installed: {}}}}\n")
    assert check(f, env={}) == [
        "middleware.auth.custom.not_installed: no installed plugin provides 'not_installed'"]
    (tmp_path / "bad.yaml").write_text("listeners: [\n")
    assert "not valid YAML" in check(tmp_path / "bad.yaml", env={})[0]


def test_routes_match_only_canonical_paths(secret_dir: Path) -> None:
    """A path some component could read as another one matches no route (the skip-auth
    bypasses of SECURITY-CATALOGUE lesson 3): /public/../admin must not be /public/*."""
    cfg = load(write(secret_dir, example()), env={})
    assert cfg.route_for("/public/x") is not None
    assert cfg.route_for("/public/users%2F1") is not None  # an encoded slash inside a key
    for path in ("/public/../api/x", "/public/./x", "/public//x", "/public/..%2Fapi",
                 "/public/%2e%2e/api", "/public/%2E%2e%5capi", "/public\\..\\api",
                 "/public/%ff%fe", "public/x"):
        assert canonical_path(path) is False, path
        assert cfg.route_for(path) is None, path
