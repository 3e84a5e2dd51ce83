"""Bearer JWTs from several issuers, verified by PyJWT (SECURITY-CATALOGUE E1, E2).

The order of checks, each refusal a 401 with `Bearer error="invalid_token"`:

1. the token from the configured header and scheme (bounded size);
2. L1 (`tokens.TokenCache`): a hit that has not reached its `exp` is the answer, with no
   signature verification;
3. the issuer, chosen by the unverified `iss`, must be configured (the unverified payload is
   read for that choice only, never trusted for anything else);
4. the header's `alg` must be in that issuer's allow-list (PyJWT checks again, since
   `algorithms=` is always passed); the key is the issuer's HS secret or its L2 key for `kid`
   (`jwks.KeySet`), bound to one algorithm; `jku`, `jwk` and `x5u` are never looked at;
5. PyJWT verifies the signature, `iss`, `aud` (when configured), `exp`, `nbf` and `iat` with
   the configured leeway, and that the required claims are present; `sub` must be a string.

The identity is `<issuer name>:<sub>`; roles come from `roles_claim` (a list, or a
space-separated string like OAuth's `scope`; a dotted name reaches into objects, as Keycloak's
`realm_access.roles`); `claims_to_headers` values are kept for plain HTTP upstreams.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt as pyjwt

from loom.gateway.auth.base import AuthFailure, AuthRequest, Identity, bad_request
from loom.gateway.auth.fetch import Fetch
from loom.gateway.auth.jwks import KeySet
from loom.gateway.auth.tokens import TokenCache, TokenCacheStatistics
from loom.gateway.config import IssuerConfig, JwtConfig
from loom.security.attrs import MAX_VALUE

__all__ = ["JwtAuthenticator", "JwtStatistics", "claim", "roles_from"]

MAX_ROLES = 64


@dataclass(frozen=True, slots=True)
class JwtStatistics:
    verifications: int  # signatures verified (L1 misses that reached PyJWT)
    refused: int
    l1: TokenCacheStatistics


def claim(claims: Mapping[str, Any], path: str) -> object:
    """A claim by name, or by a dotted path into nested objects (`realm_access.roles`). A
    claim whose own name contains dots (Auth0's namespaced URLs) is found by its full name."""
    if path in claims:
        return claims[path]
    value: object = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def roles_from(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        items: list[object] = list(value.split())
    elif isinstance(value, list):
        items = value
    else:
        return ()
    return tuple(r for r in items if isinstance(r, str) and r and r.isprintable()
                 and "," not in r)[:MAX_ROLES]


def _header_value(value: object) -> str | None:
    if isinstance(value, bool):
        value = str(value).lower()
    if isinstance(value, int | float):
        value = str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    if isinstance(value, str) and value.isprintable() and len(value) <= 1024:
        return value
    return None


def attribute_value(value: object) -> str | None:
    """A claim as an X-Auth-Attrs value (loom/security/attrs.py's rules), or None: a claim
    that does not fit is left out, so a condition on it fails rather than matching a guess."""
    if isinstance(value, bool):
        value = str(value).lower()
    elif isinstance(value, int):
        value = str(value)
    if (isinstance(value, str) and 1 <= len(value) <= MAX_VALUE and value.isprintable()
            and value == value.strip() and "," not in value and "=" not in value):
        return value
    return None


class JwtAuthenticator:
    def __init__(self, config: JwtConfig, fetch: Fetch | None, *, name: str = "jwt",
                 wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 realm: str = "loom") -> None:
        self.name = name
        self.config = config
        self.challenge: str | None = f'Bearer realm="{realm}"'
        self._invalid = f'Bearer realm="{realm}", error="invalid_token"'
        self._prefix = config.scheme.lower().encode() + b" "
        self._wall = wall
        self.l1 = TokenCache(config.cache_size, clock=wall)
        self.issuers: dict[str, tuple[IssuerConfig, KeySet | None]] = {}
        for iss in config.issuers:
            keys = None
            if iss.secret is None:
                if fetch is None:
                    raise ValueError(f"issuer {iss.name} needs HTTPS to fetch its keys")
                keys = KeySet(iss, fetch, cooldown_s=config.jwks_cooldown_s,
                              refresh_s=config.jwks_refresh_s,
                              max_keys=config.jwks_max_keys, clock=monotonic)
            self.issuers[iss.issuer] = (iss, keys)
        self._verifications = self._refused = 0

    def statistics(self) -> JwtStatistics:
        return JwtStatistics(self._verifications, self._refused, self.l1.statistics())

    def _fail(self, reason: str) -> AuthFailure:
        self._refused += 1
        return AuthFailure(401, reason, f'{self._invalid}, error_description="{reason}"')

    def token(self, request: AuthRequest) -> bytes | AuthFailure | None:
        values = request.header_values(self.config.header)
        ours = [v for v in values if v[:len(self._prefix)].lower() == self._prefix]
        if not ours:
            return None
        if len(values) > 1:
            return bad_request(f"more than one {self.config.header} header")
        token = ours[0][len(self._prefix):].strip()
        if not token or len(token) > self.config.max_token_bytes:
            return self._fail("malformed token")
        if token.count(b".") != 2:  # not a JWS compact serialisation: perhaps an opaque token
            f = self._fail("not a JWT")
            return AuthFailure(f.status, f.reason, f.challenge, fallthrough=True)
        return token

    async def authenticate(self, request: AuthRequest) -> Identity | AuthFailure | None:
        token = self.token(request)
        if token is None or isinstance(token, AuthFailure):
            return token
        cached = self.l1.get(token)
        if cached is not None:
            return cached
        return await self.verify(token)

    async def verify(self, token: bytes) -> Identity | AuthFailure:
        """The long way: choose the issuer and the key, verify, remember in L1."""
        try:
            header = pyjwt.get_unverified_header(token)
            unverified = pyjwt.decode(token, options={"verify_signature": False})
        except pyjwt.InvalidTokenError:
            return self._fail("malformed token")
        iss = unverified.get("iss")
        entry = self.issuers.get(iss) if isinstance(iss, str) else None
        if entry is None:
            return self._fail("unknown issuer")
        issuer, keys = entry
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            return self._fail("algorithm not allowed")
        if kid is not None and not isinstance(kid, str):
            return self._fail("malformed token")
        key: Any
        if keys is None:
            key = issuer.secret
        else:
            key = await keys.key(kid, alg)
            if key is None:
                return self._fail("unknown signing key")
        audience = issuer.audience or self.config.audience
        self._verifications += 1
        try:
            claims: dict[str, Any] = pyjwt.decode(
                token, key, algorithms=list(issuer.algorithms),
                audience=list(audience) if audience else None, issuer=issuer.issuer,
                leeway=self.config.leeway_s,
                options={"require": list(self.config.require), "verify_aud": bool(audience),
                         "strict_aud": False})
        except pyjwt.InvalidTokenError as e:
            return self._fail(_reason(e))
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or not sub.isprintable():
            return self._fail("token has no subject")
        exp = claims["exp"]
        roles_claim = issuer.roles_claim or self.config.roles_claim
        headers = tuple((h, v) for c, h in self.config.claims_to_headers.items()
                        if (v := _header_value(claim(claims, c))) is not None)
        attrs = tuple((a, v) for c, a in self.config.claims_to_attributes.items()
                      if (v := attribute_value(claim(claims, c))) is not None)
        identity = Identity(f"{issuer.name}:{sub}",
                            roles_from(claim(claims, roles_claim)) if roles_claim else (),
                            self.name, claims, headers, float(exp), attrs=attrs)
        self.l1.put(token, identity, float(exp))
        return identity


def _reason(e: pyjwt.InvalidTokenError) -> str:
    # Fixed strings only: never echo a token or a claim back.
    for kind, text in ((pyjwt.ExpiredSignatureError, "token expired"),
                       (pyjwt.ImmatureSignatureError, "token not yet valid"),
                       (pyjwt.InvalidAudienceError, "wrong audience"),
                       (pyjwt.InvalidIssuerError, "wrong issuer"),
                       (pyjwt.MissingRequiredClaimError, "missing required claim"),
                       (pyjwt.InvalidSignatureError, "bad signature"),
                       (pyjwt.InvalidAlgorithmError, "algorithm not allowed")):
        if isinstance(e, kind):
            return text
    return "invalid token"
