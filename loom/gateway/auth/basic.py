"""HTTP Basic with bcrypt hashes as `htpasswd -nbB` writes them (SECURITY-CATALOGUE E3).

bcrypt costs milliseconds of CPU by design, which an unauthenticated client could turn into a
denial of service. Three bounds keep it a cost, not a weapon:

- hashing runs in worker threads behind a `CapacityLimiter` of `max_concurrent_hashes`, so the
  event loop never blocks and at most that many cores burn on bcrypt;
- at most `max_waiting` requests wait for the limiter; beyond that the answer is 503 with
  Retry-After at once (no unbounded queue of pending hashes);
- a verified credential is cached for `cache_ttl` (bounded LRU of `cache_size`), keyed by a
  SHA-256 of user and password, so a legitimate client pays bcrypt once per TTL, not per request.
  Failures are never cached as successes, and a changed password misses the cache.

An unknown user is hashed against a dummy hash too, so the time taken does not tell which user
names exist. Passwords over 72 bytes are refused explicitly: bcrypt looks at 72 bytes only, and
comparing a truncated secret is how two different passwords come to verify (bcrypt 5 raises).
`$2y$` (PHP/Apache's spelling) is the same algorithm as `$2b$`; it is verified as `$2b$`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import bcrypt
import trio

from loom.gateway.auth.base import AuthFailure, AuthRequest, Identity, bad_request
from loom.gateway.config import BasicConfig, BasicUser

__all__ = ["BasicAuthenticator", "BasicStatistics"]

BCRYPT_MAX_BYTES = 72
MAX_CREDENTIAL_BYTES = 1024


@dataclass(frozen=True, slots=True)
class BasicStatistics:
    hashes: int  # bcrypt verifications run
    cache_hits: int
    busy: int  # refused with 503 because too many hashes were waiting
    cached: int  # entries in the verified-credential cache


class BasicAuthenticator:
    def __init__(self, config: BasicConfig, *, name: str = "basic", max_waiting: int = 64,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.config = config
        self.challenge: str | None = f'Basic realm="{config.realm}", charset="UTF-8"'
        self._users: dict[bytes, BasicUser] = {u.username.encode(): u for u in config.users}
        # A hash of a random password at the highest configured cost: an unknown user costs
        # what a real one costs (made once, here, not per request).
        cost = max((int(u.password_hash[4:6]) for u in config.users), default=5)
        self._dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))
        self._limiter = trio.CapacityLimiter(config.max_concurrent_hashes)
        self._max_waiting = max_waiting
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[float, Identity]] = OrderedDict()
        self._hashes = self._hits = self._busy = 0

    def statistics(self) -> BasicStatistics:
        return BasicStatistics(self._hashes, self._hits, self._busy, len(self._cache))

    def _fail(self, reason: str) -> AuthFailure:
        return AuthFailure(401, reason, self.challenge)

    async def authenticate(self, request: AuthRequest) -> Identity | AuthFailure | None:
        values = request.header_values("authorization")
        basic = [v for v in values if v[:6].lower() == b"basic "]
        if not basic:
            return None
        if len(values) > 1:
            return bad_request("more than one Authorization header")
        raw = basic[0][6:].strip()
        if len(raw) > MAX_CREDENTIAL_BYTES:
            return self._fail("invalid credentials")
        try:
            decoded = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError):
            return self._fail("invalid credentials")
        user, sep, password = decoded.partition(b":")
        if not sep or not user:
            return self._fail("invalid credentials")
        if len(password) > BCRYPT_MAX_BYTES:
            return self._fail("password longer than 72 bytes")
        return await self._verify(user, password)

    async def _verify(self, user: bytes, password: bytes) -> Identity | AuthFailure:
        key = hashlib.sha256(len(user).to_bytes(4, "big") + user + password).digest()
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None:
            if hit[0] > now:
                self._cache.move_to_end(key)
                self._hits += 1
                return hit[1]
            del self._cache[key]
        entry = self._users.get(user)
        stored = entry.password_hash if entry is not None else self._dummy
        if stored.startswith(b"$2y$"):
            stored = b"$2b$" + stored[4:]
        if self._limiter.statistics().tasks_waiting >= self._max_waiting:
            self._busy += 1
            return AuthFailure(503, "too many password checks in progress", retry_after=1)
        self._hashes += 1
        ok = await trio.to_thread.run_sync(bcrypt.checkpw, password, stored,
                                           limiter=self._limiter)
        if not ok or entry is None:
            return self._fail("invalid credentials")
        identity = Identity(f"basic:{entry.username}", entry.roles, self.name)
        self._cache[key] = (self._clock() + self.config.cache_ttl_s, identity)
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)
        return identity
