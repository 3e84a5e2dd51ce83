"""MAP against a reference model (dict + expiry times), with snapshot/restore mid-sequence."""

from __future__ import annotations

import fnmatch
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from loom.state import StateLimits
from loom.wire.errors import Status
from tests.state.helpers import Driver, state_part

KEYS = st.sampled_from(["a", "b", "c", "d", "e", "k1", "k2", "z"])
VALS = st.binary(max_size=4)
TTLS = st.one_of(st.none(), st.integers(1, 50))


class MapModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.d = Driver(StateLimits(housekeeping_budget=2, scan_budget=3))
        self.twin: Driver | None = None  # a machine restored from a snapshot, fed the same
        self.model: dict[str, tuple[bytes, int | None]] = {}

    def live(self) -> dict[str, bytes]:
        now = self.d.now
        return {k: v for k, (v, e) in self.model.items() if e is None or e > now}

    def do(self, op: str, **body: Any) -> Any:
        out = self.d.do(op, name="m", **body)
        if self.twin is not None:
            assert self.twin.do(op, name="m", **body) == out
        assert out.status is Status.OK, out
        return out.value

    def exp(self, ttl: int | None) -> int | None:
        return None if ttl is None else self.d.now + ttl

    @rule(k=KEYS, v=VALS, ttl=TTLS, ret=st.booleans())
    def put(self, k: str, v: bytes, ttl: int | None, ret: bool) -> None:
        old = self.live().get(k)
        r = self.do("MAP_PUT", key=k, value=v, ttl_ms=ttl, return_old=ret)
        assert r == (old if ret else None)
        self.model[k] = (v, self.exp(ttl))

    @rule(k=KEYS)
    def delete(self, k: str) -> None:
        assert self.do("MAP_DELETE", key=k) == (k in self.live())
        self.model.pop(k, None)

    @rule(k=KEYS, v=VALS, ttl=TTLS)
    def put_if_absent(self, k: str, v: bytes, ttl: int | None) -> None:
        absent = k not in self.live()
        assert self.do("MAP_PUT_IF_ABSENT", key=k, value=v, ttl_ms=ttl) == absent
        if absent:
            self.model[k] = (v, self.exp(ttl))

    @rule(k=KEYS, v=VALS)
    def replace(self, k: str, v: bytes) -> None:
        present = k in self.live()
        assert self.do("MAP_REPLACE", key=k, value=v) == present
        if present:
            self.model[k] = (v, None)

    @rule(k=KEYS, exp=VALS, v=VALS)
    def cas(self, k: str, exp: bytes, v: bytes) -> None:
        hit = self.live().get(k) == exp
        assert self.do("MAP_COMPARE_AND_SET", key=k, expected=exp, value=v) == hit
        if hit:
            self.model[k] = (v, None)

    @rule(k=KEYS, exp=VALS)
    def remove_if_equal(self, k: str, exp: bytes) -> None:
        hit = self.live().get(k) == exp
        assert self.do("MAP_REMOVE_IF_EQUAL", key=k, expected=exp) == hit
        if hit:
            del self.model[k]

    @rule(k=KEYS, ttl=st.integers(0, 50))
    def set_ttl(self, k: str, ttl: int) -> None:
        live = self.live()
        assert self.do("MAP_SET_TTL", key=k, ttl_ms=ttl) == (k in live)
        if k in live:
            self.model[k] = (live[k], self.exp(ttl or None))

    @rule(k=KEYS)
    def get_and_delete(self, k: str) -> None:
        assert self.do("MAP_GET_AND_DELETE", key=k) == self.live().get(k)
        self.model.pop(k, None)

    @rule(entries=st.dictionaries(KEYS, VALS, min_size=1, max_size=4), ttl=TTLS)
    def put_all(self, entries: dict[str, bytes], ttl: int | None) -> None:
        assert self.do("MAP_PUT_ALL", entries=entries, ttl_ms=ttl) == len(entries)
        for k, v in entries.items():
            self.model[k] = (v, self.exp(ttl))

    @rule()
    def clear(self) -> None:
        assert self.do("MAP_CLEAR") == len(self.live())
        self.model.clear()

    @rule(dt=st.integers(0, 30))
    def advance(self, dt: int) -> None:
        self.d.now += dt
        if self.twin is not None:
            self.twin.now += dt

    @precondition(lambda self: self.twin is None)
    @rule()
    def snapshot_restore(self) -> None:
        self.twin = self.d.restored()
        assert self.twin.sm.snapshot() == self.d.sm.snapshot()

    @invariant()
    def reads_agree(self) -> None:
        live = self.live()
        d = self.d
        assert d.read("MAP_SIZE", name="m") == len(live)
        keys: list[str] = []
        cursor = None
        for _ in range(100):
            page = d.read("MAP_KEYS", name="m", cursor=cursor, limit=2)
            keys += page["keys"]
            cursor = page["cursor"]
            if cursor is None:
                break
        assert keys == sorted(live)
        got = d.read("MAP_GET_ALL", name="m", keys=sorted({"a", "b", "k1", "z"}))
        assert got == {k: v for k, v in live.items() if k in {"a", "b", "k1", "z"}}
        for k, (_, e) in self.model.items():
            if k in live:
                ttl = d.read("MAP_GET_TTL", name="m", key=k)
                assert ttl == (None if e is None else e - d.now)
        if self.twin is not None:
            assert self.twin.sm.snapshot() == d.sm.snapshot()


MapModel.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestMapModel = MapModel.TestCase


def test_scan_matches_fnmatch_and_pages() -> None:
    d = Driver(StateLimits(scan_budget=5))
    keys = [f"{p}:{i}" for p in ("user", "order", "us") for i in range(12)]
    d.ok("MAP_PUT_ALL", name="m", entries={k: k.encode() for k in keys})
    for pattern in ("user:*", "*:1?", "[ou]*:[0-3]", "*s*:1", "*", "nomatch*"):
        seen: list[str] = []
        cursor = None
        while True:
            page = d.read("MAP_SCAN", name="m", match=pattern, cursor=cursor, limit=3)
            assert len(page["entries"]) <= 3
            seen += [k for k, v in page["entries"] if v == k.encode()]
            cursor = page["cursor"]
            if cursor is None:
                break
        assert seen == sorted(k for k in keys if fnmatch.fnmatchcase(k, pattern)), pattern


def test_scan_refuses_a_bad_pattern_even_on_a_missing_map() -> None:
    d = Driver(StateLimits())
    for name in ("absent", "m"):
        if name == "m":
            d.ok("MAP_PUT", name="m", key="k", value=b"v")
        out = d.sm.read(d.cmd("MAP_SCAN", name=name, match="[ab", limit=10))
        assert out.status is Status.BAD_REQUEST and "unterminated" in out.message, out


def test_cache_map_patterns_are_globs_checked_at_start() -> None:
    with pytest.raises(ValueError, match=r"state\.map_caches"):
        StateLimits(map_caches=(("cache.[z-a]", 3),))


def test_cache_map_evicts_least_recently_written() -> None:
    d = Driver(StateLimits(map_caches=(("cache.*", 3),)))
    for k in "abc":
        d.ok("MAP_PUT", name="cache.x", key=k, value=b"1")
    d.ok("MAP_PUT", name="cache.x", key="a", value=b"2")  # a becomes most recent
    d.ok("MAP_PUT", name="cache.x", key="d", value=b"1")  # evicts b
    assert d.read("MAP_KEYS", name="cache.x")["keys"] == ["a", "c", "d"]
    # An uncapped map with the same history keeps everything.
    for k in "abcd":
        d.ok("MAP_PUT", name="plain", key=k, value=b"1")
    assert d.read("MAP_SIZE", name="plain") == 4
    r = d.restored()
    r.ok("MAP_PUT", name="cache.x", key="e", value=b"1")  # evicts c (recency survives restore)
    assert r.read("MAP_KEYS", name="cache.x")["keys"] == ["a", "d", "e"]


def test_map_limits_refuse_cleanly() -> None:
    d = Driver(StateLimits(max_entries=2, max_value_bytes=8))
    d.ok("MAP_PUT", name="m", key="a", value=b"1")
    d.ok("MAP_PUT", name="m", key="b", value=b"1")
    before = state_part(d.sm)
    out = d.do("MAP_PUT", name="m", key="c", value=b"1")
    assert out.status is Status.LIMIT_EXCEEDED and "map m is full" in out.message
    out = d.do("MAP_PUT", name="m", key="a", value=b"123456789")
    assert out.status is Status.TOO_LARGE
    out = d.do("MAP_PUT_ALL", name="m", entries={"a": b"x", "c": b"y"})
    assert out.status is Status.LIMIT_EXCEEDED
    assert state_part(d.sm) == before
    assert d.read("MAP_GET", name="m", key="a") == b"1"


def test_total_bytes_limit() -> None:
    d = Driver(StateLimits(max_total_bytes=2000))
    n = 0
    while (out := d.do("MAP_PUT", name="m", key=f"k{n}", value=b"x" * 100)).status is Status.OK:
        n += 1
    assert out.status is Status.LIMIT_EXCEEDED and "max_total_bytes" in out.message
    assert 5 < n < 20
    assert d.read("MAP_SIZE", name="m") == n
    d.ok("MAP_CLEAR", name="m")
    assert d.sm.core.total_bytes == 0
