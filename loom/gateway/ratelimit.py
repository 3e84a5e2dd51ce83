"""Rate limits by identity: token buckets, pure (no clock, no I/O: `now` is an argument).

A bucket holds at most `burst` tokens and gains `rate` per second; a request takes one token or
is refused with the time until one is there (429, `Retry-After`). Buckets are keyed by what the
configuration says (`bucket_key`): a header, the authenticated identity, the API key's name or
the client address; an API key's own `rate_limit` gives its bucket its own rate.

Memory is bounded two ways, both without forgiving anyone:

- a bucket untouched for `idle_s` is dropped. `idle_s` is raised to at least the time a bucket
  takes to refill from empty (burst / rate), so a dropped bucket was full anyway: dropping it
  is the same as keeping it;
- beyond `max_buckets`, the least recently used bucket is dropped (counted in `evicted`): under
  a flood of distinct keys, the oldest quiet client is the one reset.

Buckets live in an OrderedDict in order of last use, so eviction looks at the front only:
O(1) amortised per request.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from loom.gateway.auth.base import Identity

__all__ = ["RateLimitStatistics", "RateLimiter", "Verdict", "bucket_key"]


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    limit: float  # the bucket's burst
    remaining: int  # whole tokens left after this request
    retry_after_s: float  # 0 when allowed: else the wait until one token is there
    reset_s: float  # the wait until the bucket is full again
    window_s: float  # burst / rate: the policy's window

    def headers(self) -> list[tuple[str, str]]:
        """`RateLimit` / `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers) and, when
        refused, `Retry-After` in whole seconds (rounded up, never 0)."""
        out = [("RateLimit-Policy", f'"default";q={int(self.limit)};w={math.ceil(self.window_s)}'),
               ("RateLimit", f'"default";r={self.remaining};t={math.ceil(self.reset_s)}')]
        if not self.allowed:
            out.append(("Retry-After", str(max(1, math.ceil(self.retry_after_s)))))
        return out


@dataclass(frozen=True, slots=True)
class RateLimitStatistics:
    buckets: int
    allowed: int
    limited: int
    idle_dropped: int
    evicted: int  # dropped before idle because max_buckets was reached


@dataclass(slots=True)
class _Bucket:
    tokens: float
    last: float
    rate: float
    burst: float


def bucket_key(spec: str, identity: Identity | None,
               headers: Sequence[tuple[bytes, bytes]], remote: str) -> str:
    """The bucket a request counts against. `spec` is `header:NAME`, `identity`, `api_key` or
    `client_address`; a request without the named thing counts against its client address.
    For `header:NAME` the identity's forwarded header (claims_to_headers) wins over the
    request's own, which the client controls."""
    host = remote.rpartition(":")[0] if ":" in remote else remote
    address = "addr:" + host.strip("[]")
    if spec.startswith("header:"):
        name = spec.removeprefix("header:")
        if identity is not None:
            for h, v in identity.headers:
                if h.lower() == name.lower():
                    return f"h:{v}"
        raw = name.lower().encode()
        values = [v for k, v in headers if k == raw]
        return f"h:{values[0].decode('latin-1')}" if len(values) == 1 else address
    if spec == "identity":
        return f"id:{identity.name}" if identity is not None else address
    if spec == "api_key":
        return f"key:{identity.api_key}" if identity and identity.api_key else address
    return address


class RateLimiter:
    def __init__(self, rate: float, burst: float, *, max_buckets: int = 100_000,
                 idle_s: float = 600.0) -> None:
        if not (rate > 0 and burst >= 1 and max_buckets > 0 and idle_s >= 0):
            raise ValueError("rate > 0, burst >= 1, max_buckets > 0 and idle_s >= 0 required")
        self.rate = rate
        self.burst = burst
        self.max_buckets = max_buckets
        self.idle_s = idle_s
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._allowed = self._limited = self._idle = self._evicted = 0

    def statistics(self) -> RateLimitStatistics:
        return RateLimitStatistics(len(self._buckets), self._allowed, self._limited,
                                   self._idle, self._evicted)

    def check(self, key: str, now: float, *, rate: float | None = None,
              burst: float | None = None) -> Verdict:
        """Take one token from `key`'s bucket at time `now` (seconds, monotonic). `rate` and
        `burst` override the defaults for this key (a per-key limit; burst defaults to one
        second's worth of the key's rate)."""
        self._expire(now)
        b = self._buckets.get(key)
        r = rate if rate is not None else self.rate
        cap = burst if burst is not None else (max(1.0, r) if rate is not None else self.burst)
        if b is None or b.rate != r or b.burst != cap:
            b = _Bucket(cap, now, r, cap)
            self._buckets[key] = b
            while len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
                self._evicted += 1
        else:
            b.tokens = min(b.burst, b.tokens + max(0.0, now - b.last) * b.rate)
            b.last = now
            self._buckets.move_to_end(key)
        # The epsilon absorbs float rounding: ten refills of 0.1 make 0.9999999999999999, and
        # without it a sustained rate comes out about 5% under the configured one.
        if b.tokens >= 1 - 1e-9:
            b.tokens = max(0.0, b.tokens - 1)
            self._allowed += 1
            allowed, wait = True, 0.0
        else:
            self._limited += 1
            allowed, wait = False, (1 - b.tokens) / b.rate
        return Verdict(allowed, b.burst, int(b.tokens), wait, (b.burst - b.tokens) / b.rate,
                       b.burst / b.rate)

    def _expire(self, now: float) -> None:
        while self._buckets:
            key, b = next(iter(self._buckets.items()))
            if now - b.last < max(self.idle_s, b.burst / b.rate):
                return
            del self._buckets[key]
            self._idle += 1
