"""Token buckets, pure, with the clock passed in: one noisy identity is limited while others
are not; per-key limits; header values; bounded memory that never forgives a debt."""

from __future__ import annotations

import pytest

from loom.gateway.auth.base import Identity
from loom.gateway.ratelimit import RateLimiter, bucket_key


def test_the_noisy_identity_is_limited_and_the_others_are_not() -> None:
    rl = RateLimiter(rate=10, burst=20)
    now = 0.0
    noisy = [rl.check("id:noisy", now).allowed for _ in range(50)]
    assert noisy.count(True) == 20 and noisy[20:] == [False] * 30
    for who in ("id:quiet-1", "id:quiet-2"):
        assert all(rl.check(who, now).allowed for _ in range(5))
    refused = rl.check("id:noisy", now)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(0.1)
    headers = dict(refused.headers())
    assert headers["Retry-After"] == "1"
    assert headers["RateLimit"] == '"default";r=0;t=2'
    assert headers["RateLimit-Policy"] == '"default";q=20;w=2'
    # tokens come back at the rate
    assert rl.check("id:noisy", now + 0.1).allowed
    assert not rl.check("id:noisy", now + 0.1).allowed
    s = rl.statistics()
    assert s.limited == 32 and s.buckets == 3


def test_sustained_rate_is_the_configured_rate() -> None:
    rl = RateLimiter(rate=100, burst=1)
    allowed = sum(rl.check("k", i * 0.001).allowed for i in range(10_000))  # 10 s at 1 kHz
    assert 995 <= allowed <= 1001


def test_per_key_limits() -> None:
    rl = RateLimiter(rate=1, burst=1)
    assert sum(rl.check("key:production", 0.0, rate=1000).allowed for _ in range(2000)) == 1000
    assert sum(rl.check("key:staging", 0.0).allowed for _ in range(10)) == 1


def test_idle_buckets_are_dropped_only_once_full_again() -> None:
    rl = RateLimiter(rate=1, burst=100, idle_s=5)  # refilling takes 100 s > idle_s
    for _ in range(100):
        rl.check("a", 0.0)
    assert not rl.check("a", 0.0).allowed
    rl.check("b", 50.0)  # 50 s later: "a" is idle but not full, so it is kept
    assert rl.statistics().buckets == 2
    assert rl.check("a", 50.0).remaining == 49  # its debt was remembered
    rl.check("b", 200.0)
    assert rl.statistics().buckets == 1 and rl.statistics().idle_dropped == 2  # a, old b


def test_memory_is_bounded_under_a_flood_of_keys() -> None:
    rl = RateLimiter(rate=1, burst=1, max_buckets=100)
    for i in range(10_000):
        rl.check(f"addr:10.0.{i // 256}.{i % 256}", 0.0)
    s = rl.statistics()
    assert s.buckets == 100 and s.evicted == 9_900


def test_bucket_keys() -> None:
    alice = Identity("idp:alice", (), "jwt", headers=(("X-User-ID", "alice"),))
    key = Identity("apikey:ci", (), "api_key", api_key="ci")
    spoof = ((b"x-user-id", b"bob"),)
    assert bucket_key("header:X-User-ID", alice, spoof, "10.0.0.1:5") == "h:alice"
    assert bucket_key("header:X-User-ID", None, spoof, "10.0.0.1:5") == "h:bob"
    assert bucket_key("header:X-User-ID", None, (), "10.0.0.1:5") == "addr:10.0.0.1"
    assert bucket_key("identity", alice, (), "10.0.0.1:5") == "id:idp:alice"
    assert bucket_key("identity", None, (), "[::1]:5") == "addr:::1"
    assert bucket_key("api_key", key, (), "10.0.0.1:5") == "key:ci"
    assert bucket_key("api_key", alice, (), "10.0.0.1:5") == "addr:10.0.0.1"
    assert bucket_key("client_address", alice, (), "10.0.0.1:5") == "addr:10.0.0.1"
