"""Counter, AtomicReference, ID generator, dedupe replay, ACL document, admin ops, limits."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from loom.state import Command, StateLimits
from loom.state.atomics import ID_EPOCH_MS, ID_SEQ_BITS
from loom.wire.errors import Status
from loom.wire.schema import INT64_MAX, INT64_MIN
from tests.state.helpers import Driver, state_part


@given(st.lists(st.tuples(st.sampled_from(["add", "inc", "dec", "set", "cas"]),
                          st.integers(INT64_MIN, INT64_MAX)), max_size=30))
@settings(max_examples=100, deadline=None)
def test_counter_never_wraps(steps: list[tuple[str, int]]) -> None:
    d = Driver()
    v = 0
    for op, x in steps:
        before = state_part(d.sm)
        if op == "add":
            out, new = d.do("COUNTER_ADD", name="c", delta=x), v + x
        elif op == "inc":
            out, new = d.do("COUNTER_INCREMENT", name="c"), v + 1
        elif op == "dec":
            out, new = d.do("COUNTER_DECREMENT", name="c"), v - 1
        elif op == "set":
            out, new = d.do("COUNTER_SET", name="c", value=x), x
        else:
            out = d.do("COUNTER_COMPARE_AND_SET", name="c", expected=v if x % 2 else x, value=x)
            new = x if (x % 2 or v == x) else v
        if INT64_MIN <= new <= INT64_MAX:
            assert out.status is Status.OK
            v = new
        else:
            assert out.status is Status.LIMIT_EXCEEDED and "overflow" in out.message
            assert state_part(d.sm) == before
        assert d.read("COUNTER_GET", name="c") == v


def test_dedupe_replays_original_outcome() -> None:
    d = Driver(StateLimits(dedupe_per_client=3, dedupe_clients=2, dedupe_idle_ms=10_000))
    c1 = d.cmd("COUNTER_INCREMENT", "alice/1", 1, name="c")
    assert d.apply_cmd(c1).value == 1
    assert d.apply_cmd(c1).value == 1  # retry: applied once
    assert d.read("COUNTER_GET", name="c") == 1
    # errors are replayed too
    d.ok("COUNTER_SET", name="big", value=INT64_MAX)
    c2 = d.cmd("COUNTER_INCREMENT", "alice/1", 2, name="big")
    first = d.apply_cmd(c2)
    assert first.status is Status.LIMIT_EXCEEDED
    d.ok("COUNTER_SET", name="big", value=0)
    assert d.apply_cmd(c2) == first
    # window: seq 1 is forgotten after 3 newer outcomes, and then refused, not re-applied
    for s in (3, 4, 5):
        d.apply_cmd(d.cmd("COUNTER_INCREMENT", "alice/1", s, name="c"))
    assert d.read("COUNTER_GET", name="c") == 4
    out = d.apply_cmd(c1)
    assert out.status is Status.CONFLICT and "deduplication window" in out.message
    assert d.read("COUNTER_GET", name="c") == 4
    # survives snapshot/restore
    d = d.restored()
    assert d.apply_cmd(d.cmd("COUNTER_INCREMENT", "alice/1", 5, name="c")).value == 4
    # max clients: the least recently active is evicted
    d.apply_cmd(d.cmd("COUNTER_INCREMENT", "bob/1", 1, name="c"))
    d.apply_cmd(d.cmd("COUNTER_INCREMENT", "carol/1", 1, name="c"))
    assert list(d.sm.dedupe.clients) == ["bob/1", "carol/1"]
    # idle clients are forgotten in log time
    d.now += 10_000
    d.ok("COUNTER_GET", name="c")
    assert list(d.sm.dedupe.clients) == []


def test_id_generator_unique_and_monotonic_when_time_goes_back() -> None:
    d = Driver()
    ids = []
    for dt in (0, 0, 5, -1000, 0, 1, -5):
        d.now += dt
        first = d.ok("ID_GEN_NEXT", name="g", count=3)
        ids += [first, first + 1, first + 2]
    assert ids == sorted(set(ids))
    assert ids[0] >> ID_SEQ_BITS == d.now - ID_EPOCH_MS + 999  # the time of the first call
    r = d.restored()
    assert r.ok("ID_GEN_NEXT", name="g") > ids[-1]


def test_atomic_ref() -> None:
    d = Driver(StateLimits(max_value_bytes=4))
    assert d.read("ATOMIC_REF_GET", name="r") is None
    assert d.ok("ATOMIC_REF_COMPARE_AND_SET", name="r", value=b"a") is True
    assert d.ok("ATOMIC_REF_COMPARE_AND_SET", name="r", expected=b"x", value=b"b") is False
    assert d.ok("ATOMIC_REF_COMPARE_AND_SET", name="r", expected=b"a", value=b"b") is True
    assert d.do("ATOMIC_REF_SET", name="r", value=b"12345").status is Status.TOO_LARGE
    d.ok("ATOMIC_REF_SET", name="r")
    assert d.read("ATOMIC_REF_GET", name="r") is None


def test_acl_document_and_admin() -> None:
    d = Driver(StateLimits(max_structures=3))
    assert d.read("ACL_GET") == {"version": 0, "policy": None}
    assert d.ok("ACL_SET", policy={"roles": {}}) == {"version": 1}
    out = d.do("ACL_SET", policy={"x": 1}, expected_version=0)
    assert out.status is Status.CONFLICT
    assert d.ok("ACL_SET", policy={"x": 1}, expected_version=1) == {"version": 2}
    assert d.read("ACL_GET") == {"version": 2, "policy": {"x": 1}}
    for n in ("b", "a"):
        d.ok("COUNTER_INCREMENT", name=n)
    d.ok("MAP_PUT", name="m", key="k", value=b"v")
    out = d.do("SET_ADD", name="s", member="x")
    assert out.status is Status.LIMIT_EXCEEDED and "max_structures" in out.message
    page = d.read("STRUCT_LIST", limit=2)
    assert page["structures"] == [{"category": "COUNTER", "name": "a"},
                                  {"category": "COUNTER", "name": "b"}]
    assert d.read("STRUCT_LIST", cursor=page["cursor"], limit=2) == {
        "structures": [{"category": "MAP", "name": "m"}], "cursor": None}
    assert d.read("STRUCT_LIST", category="MAP")["structures"] == [
        {"category": "MAP", "name": "m"}]
    stats = d.read("STRUCT_STATS", category="COUNTER", name="a")
    assert stats["ops"] == {"COUNTER_INCREMENT": 1} and stats["bytes"] > 0
    assert d.ok("STRUCT_DESTROY", category="COUNTER", name="a") is True
    assert d.ok("STRUCT_DESTROY", category="COUNTER", name="a") is False
    assert d.do("STRUCT_STATS", category="NOPE", name="a").status is Status.BAD_REQUEST
    assert d.read("COUNTER_GET", name="a") == 0
    assert d.ok("SET_ADD", name="s", member="x") is True


def test_read_never_mutates() -> None:
    d = Driver()
    d.ok("MAP_PUT", name="m", key="k", value=b"v", ttl_ms=10)
    before = d.sm.snapshot()
    d.now += 1000
    assert d.read("MAP_GET", name="m", key="k") is None
    assert d.read("MAP_SIZE", name="m") == 0
    assert d.sm.snapshot() == before
    assert d.sm.read(Command("MAP_PUT", {"name": "m", "key": "k", "value": b""}, d.now)).status \
        is Status.BAD_REQUEST
