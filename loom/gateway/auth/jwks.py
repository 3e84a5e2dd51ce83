"""L2: one issuer's signing keys, fetched over HTTPS and kept long-term (SECURITY-CATALOGUE E2).

- Keys are fetched on first need and then kept; a token naming a `kid` we do not hold causes a
  refetch, at most one per `cooldown_s` for this issuer, whatever the number of distinct unknown
  kids: a flood of made-up kids costs the identity provider one request per cooldown.
- Concurrent misses share one fetch (a lock; the waiters look again when it is done).
- The set is also refreshed every `refresh_s` (`jwks_refresh`, 10 minutes by default), so a key
  the provider withdrew stops verifying within that time even when no unknown kid ever arrives.
  The request that finds the set due refreshes it; requests meanwhile go on with the keys held
  (they never wait for a periodic refresh). A failed refresh is retried after `cooldown_s`, not
  on every request.
- A failed fetch keeps the keys we have: the provider being down does not log anyone out.
  A successful fetch replaces the set, so a key the provider withdrew stops verifying.
- Only what the configuration allows is kept: public keys (`oct` symmetric keys in a JWKS are
  ignored: that is the HS/RS confusion door), `use` other than `enc`, an algorithm in the
  issuer's allow-list, at most `max_keys`. The token header's `jku`, `jwk` and `x5u` are never
  read anywhere: the keys come from the configured URL only.
- With `discovery`, `jwks_uri` comes from `<issuer>/.well-known/openid-configuration`, whose
  `issuer` must equal the configured one exactly (OIDC Discovery section 4.3).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio
from jwt import PyJWK
from jwt.exceptions import PyJWKError

from loom.gateway.auth.fetch import Fetch, FetchError
from loom.gateway.config import IssuerConfig

__all__ = ["KeySet", "KeySetStatistics"]

log = logging.getLogger(__name__)
_DEFAULT_ALG = {"RSA": "RS256", "OKP": "EdDSA"}
_EC_ALG = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


@dataclass(frozen=True, slots=True)
class KeySetStatistics:
    keys: int
    fetches: int  # JWKS requests made (discovery requests are not counted here)
    discovery_fetches: int
    fetch_errors: int
    refused_by_cooldown: int  # unknown kids answered without a fetch
    hits: int = 0  # L2 hits: the token's key was known
    misses: int = 0  # L2 misses: unknown key (a fetch, or a refusal within the cooldown)
    periodic: int = 0  # refreshes started because the set was older than refresh_s


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


class KeySet:
    def __init__(self, issuer: IssuerConfig, fetch: Fetch, *, cooldown_s: float = 60.0,
                 refresh_s: float = 600.0, max_keys: int = 64,
                 clock: Callable[[], float] = time.monotonic) -> None:
        assert refresh_s >= cooldown_s > 0
        self.issuer = issuer
        self._fetch = fetch
        self.cooldown_s = cooldown_s
        self.refresh_s = refresh_s
        self.max_keys = max_keys
        self._clock = clock
        self._keys: dict[str, PyJWK] = {}
        self._jwks_uri = issuer.jwks_url
        self._last_attempt = -math.inf
        self._fetched_at = -math.inf  # last successful fetch; -inf: never (the first need fetches)
        self._lock = trio.Lock()
        self._fetches = self._discoveries = self._errors = self._refused = 0
        self._hits = self._misses = self._periodic = 0

    def statistics(self) -> KeySetStatistics:
        return KeySetStatistics(len(self._keys), self._fetches, self._discoveries,
                                self._errors, self._refused, self._hits, self._misses,
                                self._periodic)

    def _due(self) -> bool:
        now = self._clock()
        return (self._fetched_at > -math.inf and now - self._fetched_at >= self.refresh_s
                and now - self._last_attempt >= self.cooldown_s)

    def _lookup(self, kid: str | None, alg: str) -> PyJWK | None:
        if kid is None:
            # No kid: acceptable only when exactly one key could have signed it.
            candidates = [k for k in self._keys.values() if k.algorithm_name == alg]
            return candidates[0] if len(candidates) == 1 else None
        key = self._keys.get(kid)
        return key if key is not None and key.algorithm_name == alg else None

    async def key(self, kid: str | None, alg: str) -> PyJWK | None:
        """The key that may verify a token with this header, refetching at most once per
        cooldown when it is unknown; None when there is none."""
        if self._due() and not self._lock.locked():
            async with self._lock:
                if self._due():
                    self._last_attempt = self._clock()
                    self._periodic += 1
                    await self.refresh()
        found = self._lookup(kid, alg)
        if found is not None or (kid is not None and kid in self._keys):
            self._hits += found is not None
            return found  # known kid with another algorithm: a refetch would not help
        self._misses += 1
        async with self._lock:
            found = self._lookup(kid, alg)
            if found is not None:
                return found
            if self._clock() - self._last_attempt < self.cooldown_s:
                self._refused += 1
                return None
            self._last_attempt = self._clock()
            await self.refresh()
            return self._lookup(kid, alg)

    async def refresh(self) -> bool:
        """Fetch the key set now (no cooldown check); True when it was replaced."""
        try:
            if self._jwks_uri is None:
                self._jwks_uri = await self._discover()
            self._fetches += 1
            status, body = await self._fetch("GET", self._jwks_uri, (), b"")
            if status != 200:
                raise FetchError(f"JWKS answered {status}")
            keys = self._parse(body)
        except (FetchError, ValueError) as e:
            self._errors += 1
            log.warning("issuer %s: keys not refreshed (%s); keeping %d known keys",
                        self.issuer.name, e, len(self._keys))
            return False
        self._keys = keys
        self._fetched_at = self._clock()
        return True

    async def _discover(self) -> str:
        self._discoveries += 1
        status, body = await self._fetch("GET", discovery_url(self.issuer.issuer), (), b"")
        if status != 200:
            raise FetchError(f"discovery answered {status}")
        doc = json.loads(body)
        if not isinstance(doc, dict) or doc.get("issuer") != self.issuer.issuer:
            raise ValueError("discovery document names another issuer")
        uri = doc.get("jwks_uri")
        if not isinstance(uri, str) or not uri.startswith("https://"):
            raise ValueError("discovery document has no https jwks_uri")
        return uri

    def _parse(self, body: bytes) -> dict[str, PyJWK]:
        doc = json.loads(body)
        items = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise ValueError("not a JWK set")
        keys: dict[str, PyJWK] = {}
        for jwk in items:
            if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
                continue
            if jwk.get("use", "sig") != "sig" or jwk.get("kty") not in ("RSA", "EC", "OKP"):
                continue
            alg = jwk.get("alg") or (_EC_ALG.get(jwk.get("crv", "")) if jwk["kty"] == "EC"
                                     else _DEFAULT_ALG.get(jwk["kty"]))
            if alg not in self.issuer.algorithms:
                continue
            try:
                keys[jwk["kid"]] = PyJWK(jwk, algorithm=alg)
            except PyJWKError:
                continue
            if len(keys) >= self.max_keys:
                break
        return keys
