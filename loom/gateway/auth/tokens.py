"""L1: the verified-token cache of the OIDC layer (SECURITY-CATALOGUE E2).

A token whose signature and claims were verified once is remembered, keyed by the SHA-256 of
the token (the token itself is never kept), until its own `exp` and never a moment longer: no
leeway is added here, and an entry is checked against the clock on every hit, so an expired
token is refused even while it is still in the cache. A hit skips signature verification
entirely; that is the point, and `statistics().hits` counts it. Entries are bounded; the least
recently used goes first.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from loom.gateway.auth.base import Identity

__all__ = ["TokenCache", "TokenCacheStatistics"]


@dataclass(frozen=True, slots=True)
class TokenCacheStatistics:
    entries: int
    hits: int  # answered without verification
    misses: int  # not in the cache: verified (or refused) the long way
    expired: int  # found but past exp: dropped, verified again
    evicted: int  # dropped to stay within max_entries


class TokenCache:
    def __init__(self, max_entries: int, *, clock: Callable[[], float] = time.time) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be > 0")
        self.max_entries = max_entries
        self._clock = clock  # wall-clock seconds, the unit of `exp`
        self._entries: OrderedDict[bytes, tuple[float, Identity]] = OrderedDict()
        self._hits = self._misses = self._expired = self._evicted = 0

    @staticmethod
    def key(token: bytes) -> bytes:
        return hashlib.sha256(token).digest()

    def get(self, token: bytes) -> Identity | None:
        k = self.key(token)
        entry = self._entries.get(k)
        if entry is None:
            self._misses += 1
            return None
        if not self._clock() < entry[0]:
            del self._entries[k]
            self._expired += 1
            return None
        self._entries.move_to_end(k)
        self._hits += 1
        return entry[1]

    def put(self, token: bytes, identity: Identity, expires_at: float) -> None:
        if not self._clock() < expires_at:
            return
        self._entries[self.key(token)] = (expires_at, identity)
        self._entries.move_to_end(self.key(token))
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self._evicted += 1

    def statistics(self) -> TokenCacheStatistics:
        return TokenCacheStatistics(len(self._entries), self._hits, self._misses,
                                    self._expired, self._evicted)
