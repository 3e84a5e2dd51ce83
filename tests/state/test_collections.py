"""SET, LIST and TOPIC against reference models; BATCH_EXECUTE atomicity."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from loom.state import StateLimits
from loom.wire.errors import Status
from tests.state.helpers import Driver, state_part

MEMBERS = st.sampled_from(["a", "b", "c", "d", "e", "f", "é"])


@given(st.lists(st.tuples(st.sampled_from(["add", "remove", "clear", "snap"]), MEMBERS),
                max_size=40), st.integers(1, 4))
@settings(max_examples=200, deadline=None)
def test_set_model_and_paging(steps: list[tuple[str, str]], limit: int) -> None:
    d = Driver(StateLimits(scan_budget=3))
    model: set[str] = set()
    for op, m in steps:
        if op == "add":
            assert d.ok("SET_ADD", name="s", member=m) == (m not in model)
            model.add(m)
        elif op == "remove":
            assert d.ok("SET_REMOVE", name="s", member=m) == (m in model)
            model.discard(m)
        elif op == "clear":
            assert d.ok("SET_CLEAR", name="s") == len(model)
            model.clear()
        else:
            d = d.restored()
        assert d.read("SET_SIZE", name="s") == len(model)
        assert d.read("SET_CONTAINS", name="s", member=m) == (m in model)
    got: list[str] = []
    cursor = None
    while True:
        page = d.read("SET_MEMBERS", name="s", cursor=cursor, limit=limit)
        got += page["members"]
        cursor = page["cursor"]
        if cursor is None:
            break
    assert got == sorted(model)


LIST_OPS = st.one_of(
    st.tuples(st.sampled_from(["pushl", "pushr"]), st.binary(max_size=2)),
    st.tuples(st.sampled_from(["popl", "popr", "snap"]), st.none()),
    st.tuples(st.just("set"), st.tuples(st.integers(-5, 5), st.binary(max_size=2))),
    st.tuples(st.just("trim"), st.tuples(st.integers(-6, 6), st.integers(-6, 6))),
)


@given(st.lists(LIST_OPS, max_size=40))
@settings(max_examples=200, deadline=None)
def test_list_model(steps: list[tuple[str, Any]]) -> None:
    d = Driver()
    model: list[bytes] = []
    for op, arg in steps:
        if op == "pushl":
            model.insert(0, arg)
            assert d.ok("LIST_PUSH_LEFT", name="l", value=arg) == len(model)
        elif op == "pushr":
            model.append(arg)
            assert d.ok("LIST_PUSH_RIGHT", name="l", value=arg) == len(model)
        elif op == "popl":
            assert d.ok("LIST_POP_LEFT", name="l") == (model.pop(0) if model else None)
        elif op == "popr":
            assert d.ok("LIST_POP_RIGHT", name="l") == (model.pop() if model else None)
        elif op == "set":
            i, v = arg
            out = d.do("LIST_SET", name="l", index=i, value=v)
            if -len(model) <= i < len(model):
                model[i] = v
                assert out.status is Status.OK
            else:
                assert out.status is Status.NOT_FOUND
        elif op == "trim":
            start, stop = arg
            n = len(model)
            lo = max(0, start + n if start < 0 else start)
            hi = min(n, (stop + n if stop < 0 else stop) + 1)
            kept = model[lo:hi] if lo < hi else []
            assert d.ok("LIST_TRIM", name="l", start=start, stop=stop) == n - len(kept)
            model = kept
        else:
            d = d.restored()
        assert d.read("LIST_RANGE", name="l", start=0, stop=-1) == model
        assert d.read("LIST_SIZE", name="l") == len(model)
        for i in (-1, 0, 2):
            assert d.read("LIST_GET", name="l", index=i) == (
                model[i] if -len(model) <= i < len(model) else None)


def test_topic_ring_and_since() -> None:
    d = Driver(StateLimits(topic_ring=3))
    assert d.sm.topic_since("t", 1, 10) == ([], 1)
    for i in range(1, 6):
        assert d.ok("TOPIC_PUBLISH", name="t", value=bytes([i])) == {"seq": i}
    assert d.sm.topic_since("t", 1, 10) == ([(3, b"\x03"), (4, b"\x04"), (5, b"\x05")], 3)
    assert d.sm.topic_since("t", 4, 1) == ([(4, b"\x04")], 3)
    assert d.sm.topic_since("t", 6, 10) == ([], 3)
    r = d.restored()
    assert r.ok("TOPIC_PUBLISH", name="t", value=b"x") == {"seq": 6}
    assert r.sm.topic_since("t", 0, 10)[1] == 4
    assert r.read("STRUCT_STATS", category="TOPIC", name="t")["size"] == 3


BATCHABLE = [
    ("MAP_PUT", {"name": "m", "key": "k", "value": b"v"}),
    ("MAP_DELETE", {"name": "m", "key": "a"}),
    ("QUEUE_PUSH", {"name": "q", "value": b"i"}),
    ("QUEUE_DRAIN", {"name": "q"}),
    ("SET_ADD", {"name": "s", "member": "x"}),
    ("LIST_PUSH_LEFT", {"name": "l", "value": b"i"}),
    ("LIST_POP_RIGHT", {"name": "l"}),
    ("TOPIC_PUBLISH", {"name": "t", "value": b"m"}),
    ("COUNTER_INCREMENT", {"name": "c"}),
    ("ATOMIC_REF_SET", {"name": "r", "value": b"z"}),
    ("ID_GEN_NEXT", {"name": "g"}),
    ("LATCH_TRY_SET_COUNT", {"name": "x", "count": 2}),
    ("LATCH_COUNT_DOWN", {"name": "x"}),
    ("MAP_CLEAR", {"name": "m"}),
    ("QUEUE_CLEAR", {"name": "q"}),
    ("SET_CLEAR", {"name": "s"}),
]
FAILING = [
    ("COUNTER_ADD", {"name": "c", "delta": 2**63 - 1}, Status.LIMIT_EXCEEDED),
    ("LIST_SET", {"name": "l", "index": 99, "value": b""}, Status.NOT_FOUND),
    ("QUEUE_PUSH", {"name": "full", "value": b""}, Status.LIMIT_EXCEEDED),
    ("LOCK_UNLOCK", {"name": "lk", "session_id": 1}, Status.NOT_FOUND),
]


@given(st.lists(st.sampled_from(BATCHABLE), max_size=6), st.sampled_from(FAILING),
       st.lists(st.sampled_from(BATCHABLE), max_size=3))
@settings(max_examples=200, deadline=None)
def test_failed_batch_changes_nothing(before: list[Any], bad: Any, after: list[Any]) -> None:
    d = Driver()
    d.ok("QUEUE_CREATE", name="full", capacity=1)
    d.ok("QUEUE_PUSH", name="full", value=b"")
    d.ok("COUNTER_ADD", name="c", delta=5)
    d.ok("MAP_PUT_ALL", name="m", entries={"a": b"1", "b": b"2"}, ttl_ms=100_000)
    d.ok("LIST_PUSH_LEFT", name="l", value=b"0")
    d.ok("QUEUE_PUSH", name="q", value=b"0")
    snap = state_part(d.sm)
    total = d.sm.core.total_bytes
    ops = [{"op": o, "b": b} for o, b in before] + [{"op": bad[0], "b": bad[1]}] + [
        {"op": o, "b": b} for o, b in after]
    out = d.do("BATCH_EXECUTE", ops=ops)
    assert out.status is bad[2]
    assert out.details["op_index"] == len(before)
    assert state_part(d.sm) == snap
    assert d.sm.core.total_bytes == total
    good = d.do("BATCH_EXECUTE", ops=[{"op": o, "b": b} for o, b in before + after] or [
        {"op": "COUNTER_INCREMENT", "b": {"name": "c"}}])
    assert good.status is Status.OK and len(good.value) == max(1, len(before) + len(after))
