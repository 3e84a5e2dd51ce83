"""OAuth 2.0 token introspection, RFC 7662 (SECURITY-CATALOGUE E2).

An opaque bearer token is POSTed (`token=...&token_type_hint=access_token`) to the provider's
introspection endpoint with the gateway's client credentials (HTTP Basic, RFC 6749 section
2.3.1). `active: true` gives an identity `<name>:<sub or username>`; `active: false` is 401.

Results are cached by the SHA-256 of the token for `cache_ttl`, never past the token's own
`exp`, bounded by `cache_size` (LRU). Only active results are cached: an inactive answer is
never stored, so it can never be served as active, and a token revoked at the provider stops
working within `cache_ttl` at the latest. The provider unreachable is 503, never a pass.

Concurrent misses for one token share one call (single flight): a burst of requests carrying
a token that is not cached yet, or whose entry just expired, costs the provider one POST, and
every waiter gets that call's answer. If the call is cancelled (its request went away), the
waiters get 503 with `Retry-After`, never a pass and never an unbounded wait. The flights in
progress are bounded by the requests in progress, which the listener bounds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import trio

from loom.gateway.auth.base import AuthFailure, AuthRequest, Identity, bad_request
from loom.gateway.auth.fetch import Fetch, FetchError
from loom.gateway.auth.jwt import roles_from
from loom.gateway.config import OAuthConfig

__all__ = ["IntrospectionAuthenticator", "IntrospectionStatistics"]


@dataclass(frozen=True, slots=True)
class IntrospectionStatistics:
    calls: int  # POSTs to the introspection endpoint
    cache_hits: int
    inactive: int
    errors: int
    cached: int
    shared: int = 0  # misses that waited for another request's call instead of making one


class _Flight:
    """One introspection call in progress; `result` is set before `done` unless cancelled."""

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: Identity | AuthFailure | None = None


class IntrospectionAuthenticator:
    def __init__(self, config: OAuthConfig, fetch: Fetch, *, name: str = "oauth",
                 wall: Callable[[], float] = time.time, realm: str = "loom") -> None:
        self.name = name
        self.config = config
        self._fetch = fetch
        self._wall = wall
        self.challenge: str | None = f'Bearer realm="{realm}"'
        self._invalid = f'Bearer realm="{realm}", error="invalid_token"'
        self._prefix = config.scheme.lower().encode() + b" "
        creds = f"{quote(config.client_id, safe='')}:".encode() + quote(
            config.client_secret.decode(), safe="").encode()
        self._auth = "Basic " + base64.b64encode(creds).decode()
        self._cache: OrderedDict[bytes, tuple[float, Identity]] = OrderedDict()
        self._flights: dict[bytes, _Flight] = {}
        self._calls = self._hits = self._inactive = self._errors = self._shared = 0
        # Told (seconds, result) after each call to the endpoint: the metrics' latency.
        self.on_call: Callable[[float, str], None] | None = None

    def statistics(self) -> IntrospectionStatistics:
        return IntrospectionStatistics(self._calls, self._hits, self._inactive, self._errors,
                                       len(self._cache), self._shared)

    def _fail(self, reason: str) -> AuthFailure:
        return AuthFailure(401, reason, f'{self._invalid}, error_description="{reason}"')

    async def authenticate(self, request: AuthRequest) -> Identity | AuthFailure | None:
        values = request.header_values(self.config.header)
        ours = [v for v in values if v[:len(self._prefix)].lower() == self._prefix]
        if not ours:
            return None
        if len(values) > 1:
            return bad_request(f"more than one {self.config.header} header")
        token = ours[0][len(self._prefix):].strip()
        if not token or len(token) > 8192 or not token.isascii() or not token.decode(
                "ascii").isprintable():
            return self._fail("malformed token")
        return await self.introspect(token)

    async def introspect(self, token: bytes) -> Identity | AuthFailure:
        key = hashlib.sha256(token).digest()
        now = self._wall()
        hit = self._cache.get(key)
        if hit is not None:
            if now < hit[0]:
                self._cache.move_to_end(key)
                self._hits += 1
                return hit[1]
            del self._cache[key]
        flight = self._flights.get(key)
        if flight is not None:
            self._shared += 1
            await flight.done.wait()
            if flight.result is not None:
                return flight.result
            return AuthFailure(503, "token introspection unavailable", retry_after=1)
        flight = self._flights[key] = _Flight()
        try:
            flight.result = await self._call(token, key, now)
            return flight.result
        finally:
            del self._flights[key]
            flight.done.set()

    async def _call(self, token: bytes, key: bytes, now: float) -> Identity | AuthFailure:
        body = urlencode({"token": token.decode("ascii"),
                          "token_type_hint": "access_token"}).encode()
        self._calls += 1
        t0 = time.monotonic()
        try:
            status, data = await self._fetch(
                "POST", self.config.introspection_url,
                (("authorization", self._auth), ("accept", "application/json"),
                 ("content-type", "application/x-www-form-urlencoded")), body)
            if status != 200:
                raise FetchError(f"introspection answered {status}")
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except (FetchError, ValueError):
            self._errors += 1
            if self.on_call is not None:
                self.on_call(time.monotonic() - t0, "error")
            return AuthFailure(503, "token introspection unavailable", retry_after=1)
        if self.on_call is not None:
            self.on_call(time.monotonic() - t0,
                         "active" if doc.get("active") is True else "inactive")
        if doc.get("active") is not True:
            self._inactive += 1
            return self._fail("token is not active")
        who = doc.get("sub") or doc.get("username")
        if not isinstance(who, str) or not who or not who.isprintable():
            return self._fail("token has no subject")
        exp = doc.get("exp")
        if isinstance(exp, int | float) and not isinstance(exp, bool):
            if not now < exp:
                return self._fail("token expired")
            until = min(now + self.config.cache_ttl_s, float(exp))
        else:
            until = now + self.config.cache_ttl_s
        roles = roles_from(doc.get(self.config.roles_claim)) if self.config.roles_claim else ()
        identity = Identity(f"{self.config.name}:{who}", roles, self.name, doc,
                            expires_at=float(exp) if isinstance(exp, int | float) else None)
        self._cache[key] = (until, identity)
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)
        return identity
