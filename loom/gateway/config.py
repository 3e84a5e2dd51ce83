"""The gateway's configuration: one schema for YAML and TOML, read into frozen dataclasses.

This module owns every rule about what a configuration may say (docs/gateway.md,
"Configuration"). Everything is checked at load, so a gateway that starts has a configuration
that means exactly one thing:

- an unknown key anywhere is refused (a misspelt `requre: true` must not silently mean "open");
- a route names an upstream that exists, and methods that are enabled;
- a secret written inline (`key`, `secret`, `client_secret`) is refused when the file is
  readable by every user of the machine; a secret file itself must not be world-readable;
- an issuer's algorithm list is explicit, never admits `none`, and never mixes the HMAC family
  with a public-key family (HS/RS confusion, RFC 8725 section 3.1);
- `AUTH_TYPE` in the environment wins over `middleware.auth.type`.

Each refusal is a `ConfigError` naming the dotted key (`middleware.auth.jwt.issuers[0].algorithms`).
`check(path)` gathers the problems instead of raising, for `loom-gateway check CONFIG`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import stat
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Literal
from urllib.parse import unquote

import yaml

from loom.security.attrs import ATTR_NAME_RE, MAX_ATTRS
from loom.security.tls import KeyPassphrase, TLSConfigError

__all__ = [
    "AUTH_TYPES",
    "BUILTIN_METHODS",
    "ApiKey",
    "ApiKeyConfig",
    "AuthConfig",
    "BasicConfig",
    "BasicUser",
    "ClientCertHeaders",
    "ConfigError",
    "GatewayConfig",
    "IssuerConfig",
    "JwtConfig",
    "Listener",
    "ListenerTLS",
    "MtlsConfig",
    "OAuthConfig",
    "RateLimitConfig",
    "Route",
    "RouteAuth",
    "TraceConfig",
    "Upstream",
    "UpstreamTLS",
    "check",
    "load",
    "parse",
    "parse_duration",
]

AuthType = Literal["noop", "auth0", "keycloak", "custom"]
AUTH_TYPES: tuple[str, ...] = ("noop", "auth0", "keycloak", "custom")
ClientAuth = Literal["none", "request", "require", "verify"]
BUILTIN_METHODS: tuple[str, ...] = ("api_key", "basic", "jwt", "oauth", "mtls")
HMAC_ALGS = frozenset({"HS256", "HS384", "HS512"})
PUBLIC_KEY_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                             "ES256", "ES384", "ES512", "EdDSA"})
MAX_CONFIG_BYTES = 1 << 20
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key


# ---------------------------------------------------------------------------------------------
# The schema, as values.


@dataclass(frozen=True, slots=True)
class ClientCertHeaders:
    """Where the verified client certificate's fields are forwarded to plain HTTP upstreams."""

    subject: str = "X-Client-Subject"
    issuer: str = "X-Client-Issuer"
    serial: str = "X-Client-Serial"
    fingerprint: str = "X-Client-Fingerprint"


@dataclass(frozen=True, slots=True)
class ListenerTLS:
    cert_file: Path
    key_file: Path
    client_auth: ClientAuth = "none"
    ca_file: Path | None = None
    client_cert_headers: ClientCertHeaders = ClientCertHeaders()
    passphrase: KeyPassphrase | None = None  # of an encrypted key_file (security/tls.py)


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    host: str
    port: int
    tls: ListenerTLS | None
    # This listener answers `GET /metrics` itself (the gateway's own Prometheus metrics) ahead
    # of the routes; put it on a loopback or `client_auth: verify` listener.
    metrics: bool = False

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    key_sha256: bytes  # 32 bytes; a plain `key:` is digested at load and never kept
    roles: tuple[str, ...] = ()
    rate_limit: float | None = None  # requests per second for this key (burst: the same)
    plain: bool = False  # given as `key:` (accepted with a warning)


@dataclass(frozen=True, slots=True)
class ApiKeyConfig:
    enabled: bool = False
    header: str | None = "X-API-Key"
    query_param: str | None = None
    keys: tuple[ApiKey, ...] = ()


@dataclass(frozen=True, slots=True)
class BasicUser:
    username: str
    password_hash: bytes  # bcrypt ($2y$/$2b$/$2a$), as `htpasswd -nbB` writes it
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class BasicConfig:
    enabled: bool = False
    realm: str = "Loom"
    users: tuple[BasicUser, ...] = ()
    cache_ttl_s: float = 60.0  # a verified credential is remembered this long
    cache_size: int = 1024
    max_concurrent_hashes: int = 2  # bcrypt runs in worker threads, at most this many at once


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    name: str  # the identity prefix: "<name>:<sub>"
    issuer: str  # the exact `iss` value
    algorithms: tuple[str, ...]
    jwks_url: str | None = None
    discovery: bool = False  # find jwks_uri at <issuer>/.well-known/openid-configuration
    secret: bytes | None = None  # HS* key, from `secret_file` (or `secret` in a private file)
    audience: tuple[str, ...] = ()  # overrides JwtConfig.audience when given
    roles_claim: str | None = None  # overrides JwtConfig.roles_claim when given


@dataclass(frozen=True, slots=True)
class JwtConfig:
    enabled: bool = False
    header: str = "Authorization"
    scheme: str = "Bearer"
    issuers: tuple[IssuerConfig, ...] = ()
    audience: tuple[str, ...] = ()
    claims_to_headers: Mapping[str, str] = field(default_factory=dict)
    # claim (dotted path) -> loom policy attribute, forwarded to loom upstreams as X-Auth-Attrs
    claims_to_attributes: Mapping[str, str] = field(default_factory=dict)
    roles_claim: str | None = None  # "roles", "scope", "realm_access.roles", ...
    leeway_s: float = 30.0
    require: tuple[str, ...] = ("exp", "iat")  # claims a token must carry
    cache_size: int = 10_000  # L1 verified tokens
    jwks_cooldown_s: float = 60.0  # L2: at most one refetch per issuer per cooldown
    jwks_refresh_s: float = 600.0  # L2: every key set refetched at least this often
    jwks_max_keys: int = 64
    max_token_bytes: int = 8192


@dataclass(frozen=True, slots=True)
class OAuthConfig:
    enabled: bool = False
    name: str = "oauth"  # identity prefix: "<name>:<sub or username>"
    introspection_url: str = ""
    client_id: str = ""
    client_secret: bytes = b""
    header: str = "Authorization"
    scheme: str = "Bearer"
    cache_ttl_s: float = 300.0
    cache_size: int = 10_000
    roles_claim: str | None = "scope"


@dataclass(frozen=True, slots=True)
class MtlsConfig:
    enabled: bool = False
    roles: tuple[str, ...] = ()  # given to every verified client certificate


@dataclass(frozen=True, slots=True)
class AuthConfig:
    type: AuthType = "custom"
    api_key: ApiKeyConfig = ApiKeyConfig()
    basic: BasicConfig = BasicConfig()
    jwt: JwtConfig = JwtConfig()
    oauth: OAuthConfig = OAuthConfig()
    mtls: MtlsConfig = MtlsConfig()
    custom: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    chain: tuple[str, ...] = ()
    require_any: bool = True
    guest_roles: tuple[str, ...] = ()
    # CA bundle for the identity provider's HTTPS (JWKS, discovery, introspection); None: the
    # system's trust store.
    provider_ca_file: Path | None = None

    def enabled_methods(self) -> tuple[str, ...]:
        on = [m for m in BUILTIN_METHODS if getattr(self, m).enabled]
        return (*on, *self.custom)

    def credential_carriers(self) -> tuple[frozenset[str], frozenset[str]]:
        """The header names (lower case) and query parameters that carry a credential some
        enabled method verifies: what `hide_credentials` removes before forwarding."""
        headers: set[str] = set()
        params: set[str] = set()
        if self.api_key.enabled:
            if self.api_key.header:
                headers.add(self.api_key.header.lower())
            if self.api_key.query_param:
                params.add(self.api_key.query_param)
        if self.basic.enabled:
            headers.add("authorization")
        if self.jwt.enabled:
            headers.add(self.jwt.header.lower())
        if self.oauth.enabled:
            headers.add(self.oauth.header.lower())
        return frozenset(headers), frozenset(params)


@dataclass(frozen=True, slots=True)
class RouteAuth:
    require: bool = False
    methods: tuple[str, ...] = ()  # empty: the auth chain
    roles: tuple[str, ...] = ()  # any of these, else 403; empty: any authenticated caller


@dataclass(frozen=True, slots=True)
class Route:
    id: str
    path: str  # exact, or a prefix ending in "/*"
    upstream: str
    auth: RouteAuth = RouteAuth()

    def matches(self, path: str) -> bool:
        if self.path.endswith("/*"):
            prefix = self.path[:-1]
            return path.startswith(prefix) or path == prefix[:-1]
        return path == self.path


@dataclass(frozen=True, slots=True)
class UpstreamTLS:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    passphrase: KeyPassphrase | None = None  # of an encrypted key_file (security/tls.py)


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    kind: Literal["loom", "http"]
    endpoints: tuple[str, ...]
    tls: UpstreamTLS = UpstreamTLS()
    # The credentials the gateway verified (Authorization, the API key's header and query
    # parameter) are not sent on; always so for a loom upstream, which never reads them.
    hide_credentials: bool = True


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    enabled: bool = False
    key: str = "identity"  # "header:NAME" | "identity" | "api_key" | "client_address"
    rate: float = 100.0  # tokens per second
    burst: float = 200.0  # bucket capacity
    max_buckets: int = 100_000
    idle_s: float = 600.0


@dataclass(frozen=True, slots=True)
class TraceConfig:
    """`trace`: OpenTelemetry traces (loom/obs/tracing.py), as loomd's `[trace]`; off when
    the section is absent."""

    endpoint: str  # OTLP/HTTP traces URL, e.g. "http://127.0.0.1:4318/v1/traces"
    service_name: str = "loom-gateway"
    sample_ratio: float = 1.0  # of the requests that arrive without a valid parent
    max_queue: int = 2048  # spans waiting for export; beyond, dropped
    export_timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    listeners: tuple[Listener, ...]
    auth: AuthConfig
    routes: tuple[Route, ...]
    upstreams: tuple[Upstream, ...]
    rate_limit: RateLimitConfig
    source: Path | None = None
    warnings: tuple[str, ...] = ()
    trace: TraceConfig | None = None  # None: no spans, no SDK object

    def route_for(self, path: str) -> Route | None:
        """The first route whose path matches, in file order; None for no route and for a
        path that is not canonical (`canonical_path`), which must be answered 400 or 404."""
        if not canonical_path(path):
            return None
        for r in self.routes:
            if r.matches(path):
                return r
        return None


def canonical_path(path: str) -> bool:
    """Whether a raw request path means one thing to every reader. Routes match the raw path,
    so a path that some component could read as another one is refused rather than matched:
    dot segments (`/public/../admin`), empty segments (`//admin`), a backslash, and a segment
    that percent-decodes to a dot segment (`/public/..%2Fadmin`, `/public/%2e%2e/admin`):
    the skip-auth bypasses of oauth2-proxy and others (SECURITY-CATALOGUE lesson 3). An
    encoded slash inside a segment stays legal: loomd reads `%2F` as part of a key."""
    if not path.startswith("/") or "\\" in path:
        return False
    segments = path[1:].split("/")
    if "" in segments[:-1]:
        return False
    for seg in segments:
        if "%" not in seg:  # no slash nor backslash in it: the segment is what it says
            if seg in (".", ".."):
                return False
            continue
        try:
            decoded = unquote(seg, errors="strict")
        except UnicodeDecodeError:
            return False
        if any(part in (".", "..") for part in re.split(r"[/\\]", decoded)):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Reading.


def parse_duration(value: object, key: str) -> float:
    """`5m`, `30s`, `250ms`, `1h`, `2d` or a number of seconds; never negative."""
    if isinstance(value, bool):
        raise ConfigError(key, "expected a duration like 30s or 5m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ConfigError(key, f"expected a duration like 30s or 5m, not {value!r}")
    if seconds < 0:
        raise ConfigError(key, "a duration cannot be negative")
    return seconds


class _Section:
    """One mapping of the file: typed getters by key, and a final `done()` that refuses every
    key nobody asked for (an unknown key names itself in full)."""

    def __init__(self, raw: object, key: str) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(key, f"expected a mapping, not {type(raw).__name__}")
        for k in raw:
            if not isinstance(k, str):
                raise ConfigError(key, f"key {k!r} is not a string")
        self.raw: Mapping[str, object] = raw
        self.key = key
        self.used: set[str] = set()

    def path(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def has(self, name: str) -> bool:
        return name in self.raw

    def get(self, name: str, default: object = None) -> object:
        self.used.add(name)
        return self.raw.get(name, default)

    def str_(self, name: str, default: str | None = None, *, required: bool = False) -> str:
        v = self.get(name, default)
        if v is None and not required and default is None:
            return ""
        if not isinstance(v, str) or (required and not v):
            raise ConfigError(self.path(name), "expected a non-empty string"
                              if required else "expected a string")
        return v

    def opt_str(self, name: str) -> str | None:
        v = self.get(name)
        if v is None:
            return None
        if not isinstance(v, str) or not v:
            raise ConfigError(self.path(name), "expected a non-empty string")
        return v

    def bool_(self, name: str, default: bool) -> bool:
        v = self.get(name, default)
        if not isinstance(v, bool):
            raise ConfigError(self.path(name), "expected true or false")
        return v

    def num(self, name: str, default: float, *, positive: bool = True) -> float:
        v = self.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise ConfigError(self.path(name), "expected a number")
        if positive and v <= 0:
            raise ConfigError(self.path(name), "must be greater than zero")
        return float(v)

    def int_(self, name: str, default: int) -> int:
        v = self.get(name, default)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ConfigError(self.path(name), "expected a positive integer")
        return v

    def duration(self, name: str, default: float) -> float:
        return parse_duration(self.get(name, default), self.path(name))

    def strs(self, name: str) -> tuple[str, ...]:
        v = self.get(name, [])
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
            raise ConfigError(self.path(name), "expected a list of non-empty strings")
        return tuple(v)

    def section(self, name: str) -> _Section:
        return _Section(self.get(name, {}), self.path(name))

    def items(self, name: str) -> Iterator[_Section]:
        v = self.get(name, [])
        if not isinstance(v, list):
            raise ConfigError(self.path(name), "expected a list")
        for i, item in enumerate(v):
            yield _Section(item, f"{self.path(name)}[{i}]")

    def done(self) -> None:
        unknown = sorted(set(self.raw) - self.used)
        if unknown:
            raise ConfigError(self.path(unknown[0]), "unknown key")


@dataclass
class _Ctx:
    base: Path  # relative file names are relative to the configuration's directory
    world_readable: bool  # the configuration file itself
    warnings: list[str]
    verify_listener: bool = False  # some listener has client_auth: verify

    def file(self, s: _Section, name: str, *, required: bool = False) -> Path | None:
        v = s.opt_str(name)
        if v is None:
            if required:
                raise ConfigError(s.path(name), "a file name is required")
            return None
        p = Path(v)
        return p if p.is_absolute() else self.base / p

    def secret(self, s: _Section, inline: str, from_file: str) -> bytes | None:
        """A secret given inline (only in a file no other user can read) or by file name (a
        file no other user can read). Both at once is ambiguous and refused."""
        if s.has(inline) and s.has(from_file):
            raise ConfigError(s.path(inline), f"give either {inline} or {from_file}, not both")
        if s.has(inline):
            value = s.str_(inline, required=True)
            if self.world_readable:
                raise ConfigError(s.path(inline), "a secret written inline in a world-readable "
                                  f"file; use {from_file} or chmod o-r the configuration")
            return value.encode()
        path = self.file(s, from_file)
        if path is None:
            return None
        key = s.path(from_file)
        try:
            mode = path.stat().st_mode
            data = path.read_bytes()
        except OSError as e:
            raise ConfigError(key, f"cannot read {path}: {e.strerror}") from None
        if mode & stat.S_IROTH:
            raise ConfigError(key, f"{path} is world-readable; chmod o-r it")
        data = data.strip()
        if not data:
            raise ConfigError(key, f"{path} is empty")
        return data


def _address(value: str, key: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ConfigError(key, f"expected host:port, not {value!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _listener(s: _Section, ctx: _Ctx) -> Listener:
    host, port = _address(s.str_("address", required=True), s.path("address"))
    tls: ListenerTLS | None = None
    if s.has("tls"):
        t = s.section("tls")
        mode = t.str_("client_auth", "none")
        if mode not in ("none", "request", "require", "verify"):
            raise ConfigError(t.path("client_auth"), "expected none, request, require or verify")
        ca = ctx.file(t, "ca_file")
        if mode != "none" and ca is None:
            raise ConfigError(t.path("ca_file"), f"client_auth {mode} needs a ca_file")
        h = t.section("client_cert_headers")
        d = ClientCertHeaders()
        headers = ClientCertHeaders(h.str_("subject", d.subject), h.str_("issuer", d.issuer),
                                    h.str_("serial", d.serial),
                                    h.str_("fingerprint", d.fingerprint))
        h.done()
        cert = ctx.file(t, "cert_file", required=True)
        keyf = ctx.file(t, "key_file", required=True)
        assert cert is not None and keyf is not None
        tls = ListenerTLS(cert, keyf, mode, ca, headers,  # type: ignore[arg-type]
                          _passphrase(t, ctx))
        t.done()
    out = Listener(s.str_("name", required=True), host, port, tls, s.bool_("metrics", False))
    s.done()
    return out


def _passphrase(t: _Section, ctx: _Ctx) -> KeyPassphrase | None:
    """`key_passphrase_file` or `key_passphrase_credential` (a systemd credential name): where
    an encrypted key_file's passphrase is read, at start and at every reload."""
    f, cred = ctx.file(t, "key_passphrase_file"), t.opt_str("key_passphrase_credential")
    if f is None and cred is None:
        return None
    try:
        return KeyPassphrase(f, cred)
    except TLSConfigError as e:
        raise ConfigError(t.path("key_passphrase_file" if cred is None else
                                 "key_passphrase_credential"), str(e)) from None


def _api_keys(s: _Section, ctx: _Ctx) -> ApiKeyConfig:
    keys: list[ApiKey] = []
    for k in s.items("keys"):
        name = k.str_("name", required=True)
        if k.has("key_sha256") and k.has("key"):
            raise ConfigError(k.path("key"), "give either key_sha256 or key, not both")
        plain = False
        if k.has("key_sha256"):
            hexd = k.str_("key_sha256", required=True).lower()
            if not re.fullmatch(r"[0-9a-f]{64}", hexd):
                raise ConfigError(k.path("key_sha256"), "expected 64 hexadecimal digits")
            digest = bytes.fromhex(hexd)
        else:
            raw = ctx.secret(k, "key", "key_file")
            if raw is None:
                raise ConfigError(k.path("key_sha256"), "each key needs key_sha256 (or key)")
            digest, plain = hashlib.sha256(raw).digest(), True
            ctx.warnings.append(f"{k.path('key')}: plain API key; store key_sha256 instead")
        rate = k.num("rate_limit", 0.0, positive=False) if k.has("rate_limit") else None
        if rate is not None and rate <= 0:
            raise ConfigError(k.path("rate_limit"), "must be greater than zero")
        keys.append(ApiKey(name, digest, k.strs("roles"), rate, plain))
        k.done()
    names = [k.name for k in keys]
    if len(set(names)) != len(names):
        raise ConfigError(s.path("keys"), "two keys have the same name")
    out = ApiKeyConfig(s.bool_("enabled", True), s.opt_str("header") if s.has("header")
                       else "X-API-Key", s.opt_str("query_param"), tuple(keys))
    if out.enabled and not out.header and not out.query_param:
        raise ConfigError(s.path("header"), "api_key needs a header or a query_param")
    s.done()
    return out


def _basic(s: _Section) -> BasicConfig:
    users: list[BasicUser] = []
    for u in s.items("users"):
        h = u.str_("password_hash", required=True)
        if not re.fullmatch(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}", h):
            raise ConfigError(u.path("password_hash"), "expected a bcrypt hash "
                              "(htpasswd -nbB USER PASSWORD writes one)")
        name = u.str_("username", required=True)
        if ":" in name:
            raise ConfigError(u.path("username"), "a user name cannot contain ':'")
        users.append(BasicUser(name, h.encode(), u.strs("roles")))
        u.done()
    realm = s.str_("realm", "Loom")
    if '"' in realm or "\\" in realm or not realm.isprintable():
        raise ConfigError(s.path("realm"), "a realm cannot contain quotes or backslashes")
    out = BasicConfig(s.bool_("enabled", True), realm, tuple(users),
                      s.duration("cache_ttl", 60.0), s.int_("cache_size", 1024),
                      s.int_("max_concurrent_hashes", 2))
    s.done()
    return out


def _algorithms(s: _Section) -> tuple[str, ...]:
    key = s.path("algorithms")
    if not s.has("algorithms"):
        raise ConfigError(key, "an explicit algorithm list is required")
    algs = s.strs("algorithms")
    if not algs:
        raise ConfigError(key, "an explicit algorithm list is required")
    for a in algs:
        if a.lower() == "none":
            raise ConfigError(key, "alg none is never accepted")
        if a not in HMAC_ALGS | PUBLIC_KEY_ALGS:
            raise ConfigError(key, f"unknown algorithm {a!r}")
    if set(algs) & HMAC_ALGS and set(algs) & PUBLIC_KEY_ALGS:
        raise ConfigError(key, "HS* and public-key algorithms mixed for one issuer "
                          "(algorithm confusion)")
    return algs


def _issuer(s: _Section, ctx: _Ctx, auth_type: str) -> IssuerConfig:
    algs = _algorithms(s)
    secret = ctx.secret(s, "secret", "secret_file")
    jwks_url = s.opt_str("jwks_url")
    discovery = s.bool_("discovery", auth_type in ("auth0", "keycloak") and jwks_url is None)
    iss = s.str_("issuer", required=True)
    hmac = bool(set(algs) & HMAC_ALGS)
    if hmac and secret is None:
        raise ConfigError(s.path("secret_file"), "HS algorithms need secret_file")
    if hmac and (jwks_url or discovery):
        raise ConfigError(s.path("jwks_url"), "an HS issuer takes a secret, not keys by URL")
    if not hmac and secret is not None:
        raise ConfigError(s.path("secret_file"), "a secret is only for HS algorithms")
    if not hmac and not jwks_url and not discovery:
        raise ConfigError(s.path("jwks_url"), "give jwks_url or discovery: true")
    for url, k in ((jwks_url, "jwks_url"), (iss if discovery else None, "issuer")):
        if url is not None and not url.startswith("https://"):
            raise ConfigError(s.path(k), "keys are fetched over https:// only")
    out = IssuerConfig(s.str_("name", required=True), iss, algs, jwks_url, discovery, secret,
                       s.strs("audience"), s.opt_str("roles_claim"))
    s.done()
    return out


def _jwt(s: _Section, ctx: _Ctx, auth_type: str) -> JwtConfig:
    issuers = tuple(_issuer(i, ctx, auth_type) for i in s.items("issuers"))
    for field_, what in (("name", "name"), ("issuer", "iss")):
        values = [getattr(i, field_) for i in issuers]
        if len(set(values)) != len(values):
            raise ConfigError(s.path("issuers"), f"two issuers have the same {what}")
    c2h = s.section("claims_to_headers")
    claims = {k: c2h.str_(k, required=True) for k in c2h.raw}
    c2h.done()
    c2a = s.section("claims_to_attributes")
    attributes = {k: c2a.str_(k, required=True) for k in c2a.raw}
    for k, a in attributes.items():
        if not ATTR_NAME_RE.fullmatch(a):
            raise ConfigError(c2a.path(k), "attribute names are [a-z][a-z0-9_]{0,31}")
    if len(set(attributes.values())) != len(attributes) or len(attributes) > MAX_ATTRS:
        raise ConfigError(s.path("claims_to_attributes"),
                          f"at most {MAX_ATTRS} attributes, each named once")
    c2a.done()
    roles_default = {"auth0": "permissions", "keycloak": "realm_access.roles"}.get(auth_type)
    out = JwtConfig(
        enabled=s.bool_("enabled", True), header=s.str_("header", "Authorization"),
        scheme=s.str_("scheme", "Bearer"), issuers=issuers, audience=s.strs("audience"),
        claims_to_headers=claims, claims_to_attributes=attributes,
        roles_claim=s.opt_str("roles_claim") or roles_default,
        leeway_s=s.duration("leeway", 30.0), require=s.strs("require") or ("exp", "iat"),
        cache_size=s.int_("cache_size", 10_000),
        jwks_cooldown_s=s.duration("jwks_cooldown", 60.0),
        jwks_refresh_s=s.duration("jwks_refresh", 600.0),
        jwks_max_keys=s.int_("jwks_max_keys", 64),
        max_token_bytes=s.int_("max_token_bytes", 8192))
    if out.enabled and not issuers:
        raise ConfigError(s.path("issuers"), "jwt is enabled with no issuer")
    if not 0 < out.jwks_cooldown_s <= out.jwks_refresh_s:
        raise ConfigError(s.path("jwks_refresh"),
                          "must be at least jwks_cooldown, which must be positive")
    if "exp" not in out.require:
        raise ConfigError(s.path("require"), "exp is always required (the L1 cache needs it)")
    if auth_type == "auth0" and out.enabled:
        for i, iss in enumerate(issuers):
            if not (iss.audience or out.audience):
                raise ConfigError(s.path(f"issuers[{i}].audience"),
                                  "AUTH_TYPE auth0 requires an audience (the API identifier)")
    s.done()
    return out


def _oauth(s: _Section, ctx: _Ctx) -> OAuthConfig:
    enabled = s.bool_("enabled", True)
    url = s.str_("introspection_url", required=enabled) if enabled or s.has(
        "introspection_url") else ""
    if url and not url.startswith("https://"):
        raise ConfigError(s.path("introspection_url"), "introspection is over https:// only")
    secret = ctx.secret(s, "client_secret", "client_secret_file")
    if enabled and secret is None:
        raise ConfigError(s.path("client_secret_file"), "introspection needs client credentials")
    out = OAuthConfig(enabled, s.str_("name", "oauth"), url,
                      s.str_("client_id", required=enabled), secret or b"",
                      s.str_("header", "Authorization"), s.str_("scheme", "Bearer"),
                      s.duration("cache_ttl", 300.0), s.int_("cache_size", 10_000),
                      s.opt_str("roles_claim") if s.has("roles_claim") else "scope")
    s.done()
    return out


def _auth(s: _Section, ctx: _Ctx, env_type: str | None) -> AuthConfig:
    file_type = s.str_("type", "custom")
    auth_type = env_type if env_type is not None else file_type
    if auth_type not in AUTH_TYPES:
        key = "AUTH_TYPE" if env_type is not None else s.path("type")
        raise ConfigError(key, f"expected one of {', '.join(AUTH_TYPES)}, not {auth_type!r}")
    api_key = _api_keys(s.section("api_key"), ctx) if s.has("api_key") else ApiKeyConfig()
    basic = _basic(s.section("basic")) if s.has("basic") else BasicConfig()
    jwt = _jwt(s.section("jwt"), ctx, auth_type) if s.has("jwt") else JwtConfig()
    oauth = _oauth(s.section("oauth"), ctx) if s.has("oauth") else OAuthConfig()
    m = s.section("mtls")
    # A listener with client_auth verify makes the certificate an identity: mtls is on.
    mtls = MtlsConfig(m.bool_("enabled", bool(m.raw) or ctx.verify_listener), m.strs("roles"))
    m.done()
    c = s.section("custom")
    custom: dict[str, Mapping[str, object]] = {}
    for name in c.raw:
        opts = c.section(name)
        if name in BUILTIN_METHODS:
            raise ConfigError(opts.key, "a custom method cannot reuse a built-in name")
        custom[name] = dict(opts.raw)
        opts.used.update(opts.raw)
    c.done()
    out = AuthConfig(auth_type, api_key, basic, jwt, oauth, mtls, custom,  # type: ignore[arg-type]
                     s.strs("chain"), s.bool_("require_any", True), s.strs("guest_roles"),
                     ctx.file(s, "provider_ca_file"))
    enabled = out.enabled_methods()
    for i, method in enumerate(out.chain):
        if method not in enabled:
            raise ConfigError(s.path(f"chain[{i}]"), f"method {method!r} is not enabled")
    if auth_type != "noop" and not enabled:
        ctx.warnings.append(f"{s.key}: no authentication method is enabled")
    s.done()
    return out


def _route(s: _Section, methods: tuple[str, ...], upstreams: set[str]) -> Route:
    path = s.str_("path", required=True)
    if not path.startswith("/") or "*" in path.removesuffix("/*"):
        raise ConfigError(s.path("path"), "expected /exact or /prefix/*")
    up = s.str_("upstream", required=True) if s.has("upstream") else ""
    if not up:
        raise ConfigError(s.path("upstream"), "a route needs an upstream")
    if up not in upstreams:
        raise ConfigError(s.path("upstream"), f"no upstream named {up!r}")
    auth = RouteAuth()
    if s.has("auth"):
        a = s.section("auth")
        auth = RouteAuth(a.bool_("require", True), a.strs("methods"), a.strs("roles"))
        for i, m in enumerate(auth.methods):
            if m not in methods:
                raise ConfigError(a.path(f"methods[{i}]"), f"method {m!r} is not enabled")
        if auth.roles and not auth.require:
            raise ConfigError(a.path("roles"), "roles on a route that does not require auth")
        a.done()
    out = Route(s.str_("id", required=True), path, up, auth)
    s.done()
    return out


def _upstream(s: _Section, ctx: _Ctx) -> Upstream:
    kind = s.str_("kind", "http")
    if kind not in ("loom", "http"):
        raise ConfigError(s.path("kind"), "expected loom or http")
    endpoints = s.strs("endpoints")
    if not endpoints:
        raise ConfigError(s.path("endpoints"), "at least one endpoint is required")
    for i, e in enumerate(endpoints):
        if not e.startswith(("https://", "http://")):
            raise ConfigError(s.path(f"endpoints[{i}]"), "expected an http(s):// URL")
        if kind == "loom" and not e.startswith("https://"):
            raise ConfigError(s.path(f"endpoints[{i}]"), "a loom upstream is https:// only")
    t = s.section("tls")
    tls = UpstreamTLS(ctx.file(t, "ca_file"), ctx.file(t, "cert_file"), ctx.file(t, "key_file"),
                      _passphrase(t, ctx))
    t.done()
    if kind == "loom" and (tls.cert_file is None or tls.key_file is None or tls.ca_file is None):
        raise ConfigError(s.path("tls"), "a loom upstream needs ca_file, cert_file and key_file "
                          "(mutual TLS with the gateway certificate)")
    hide = s.bool_("hide_credentials", True)
    if kind == "loom" and not hide:
        raise ConfigError(s.path("hide_credentials"), "a loom upstream never reads end-user "
                          "credentials: the gateway sends the identity (X-Auth-User) instead")
    out = Upstream(s.str_("name", required=True), kind, endpoints,  # type: ignore[arg-type]
                   tls, hide)
    s.done()
    return out


def _rate_limit(s: _Section) -> RateLimitConfig:
    key = s.str_("key", "identity")
    if not (key in ("identity", "api_key", "client_address")
            or (key.startswith("header:") and len(key) > len("header:"))):
        raise ConfigError(s.path("key"),
                          "expected header:NAME, identity, api_key or client_address")
    out = RateLimitConfig(s.bool_("enabled", True), key, s.num("rate", 100.0),
                          s.num("burst", 200.0), s.int_("max_buckets", 100_000),
                          s.duration("idle", 600.0))
    if out.burst < 1:
        raise ConfigError(s.path("burst"), "a burst below one admits nothing")
    s.done()
    return out


def _trace(s: _Section) -> TraceConfig:
    endpoint = s.str_("endpoint", required=True)
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError(s.path("endpoint"), "expected an http:// or https:// URL")
    ratio = s.num("sample_ratio", 1.0, positive=False)
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(s.path("sample_ratio"), "must be between 0 and 1")
    out = TraceConfig(endpoint, s.str_("service_name", "loom-gateway", required=True), ratio,
                      s.int_("max_queue", 2048), s.duration("export_timeout", 10.0))
    if out.export_timeout_s <= 0:
        raise ConfigError(s.path("export_timeout"), "must be greater than zero")
    s.done()
    return out


def parse(raw: object, *, base: Path = Path("."), world_readable: bool = False,
          env: Mapping[str, str] | None = None, source: Path | None = None,
          allow_insecure_guest: bool = False) -> GatewayConfig:
    """A configuration from an already-decoded document (YAML or TOML give the same shape).
    Guest mode (`noop`) is refused on a listener that is not loopback unless
    `allow_insecure_guest` (the `--allow-insecure-guest` flag): an open door must be local or
    deliberate (Redis's protected mode; SECURITY-CATALOGUE lesson 7)."""
    env = os.environ if env is None else env
    ctx = _Ctx(base, world_readable, [])
    top = _Section(raw if raw is not None else {}, "")
    listeners = tuple(_listener(s, ctx) for s in top.items("listeners"))
    names = [x.name for x in listeners]
    if len(set(names)) != len(names):
        raise ConfigError("listeners", "two listeners have the same name")
    ctx.verify_listener = any(x.tls is not None and x.tls.client_auth == "verify"
                              for x in listeners)
    mw = top.section("middleware")
    env_type = env.get("AUTH_TYPE")
    auth = _auth(mw.section("auth"), ctx, env_type.strip().lower() if env_type else None)
    mw.done()
    upstreams = tuple(_upstream(s, ctx) for s in top.items("upstreams"))
    up_names = {u.name for u in upstreams}
    if len(up_names) != len(upstreams):
        raise ConfigError("upstreams", "two upstreams have the same name")
    routes = tuple(_route(s, auth.enabled_methods(), up_names) for s in top.items("routes"))
    if len({r.id for r in routes}) != len(routes):
        raise ConfigError("routes", "two routes have the same id")
    rate = _rate_limit(top.section("rate_limit")) if top.has("rate_limit") else RateLimitConfig()
    trace = _trace(top.section("trace")) if top.has("trace") else None
    top.done()
    if auth.type == "noop":
        for i, lst in enumerate(listeners):
            if not lst.loopback and not allow_insecure_guest:
                raise ConfigError(f"listeners[{i}].address", "AUTH_TYPE noop (guest mode) on a "
                                  "non-loopback listener; use --allow-insecure-guest to force")
        ctx.warnings.append("AUTH_TYPE noop: every request passes as the guest identity")
    return GatewayConfig(listeners, auth, routes, upstreams, rate, source, tuple(ctx.warnings),
                         trace)


def _decode(path: Path, data: bytes) -> object:
    if path.suffix.lower() == ".toml":
        try:
            return tomllib.loads(data.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError("", f"{path}: not valid TOML: {e}") from None
    try:
        # safe_load: no Python object tags, so a configuration cannot run code.
        return yaml.safe_load(data)
    except yaml.YAMLError as e:
        raise ConfigError("", f"{path}: not valid YAML: {e}") from None


def load(path: Path | str, *, env: Mapping[str, str] | None = None,
         allow_insecure_guest: bool = False) -> GatewayConfig:
    """Read and check a configuration file (`.toml` is TOML, anything else YAML)."""
    path = Path(path)
    try:
        st = path.stat()
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError("", f"cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError("", f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
    return parse(_decode(path, data), base=path.parent,
                 world_readable=bool(st.st_mode & stat.S_IROTH), env=env, source=path,
                 allow_insecure_guest=allow_insecure_guest)


def check(path: Path | str, *, env: Mapping[str, str] | None = None,
          allow_insecure_guest: bool = False) -> list[str]:
    """The problems `load` would refuse the file for (empty when it is usable). Checking stops
    at the first problem: later keys may depend on it, so a second message could mislead."""
    try:
        cfg = load(path, env=env, allow_insecure_guest=allow_insecure_guest)
    except ConfigError as e:
        return [str(e)]
    # A custom method's plugin must be installed (it is loaded, and its options checked, at
    # start; here only its presence, so that checking runs no plugin code).
    return [f"middleware.auth.custom.{name}: no installed plugin provides {name!r}"
            for name in cfg.auth.custom
            if not entry_points(group="loom.gateway.auth", name=name)]
