"""The chaos checkers on hand-made histories: each accepts a correct one and names the anomaly
planted in a wrong one (a checker that cannot fail proves nothing)."""

from __future__ import annotations

import math
import random

import pytest

from loom.chaos.history import History, Op
from loom.chaos.linear import RegOp, check_register
from loom.chaos.workloads.counter import CounterWorkload
from loom.chaos.workloads.lock import LockWorkload, check_fenced
from loom.chaos.workloads.queue import QueueWorkload
from loom.chaos.workloads.register import RegisterWorkload
from loom.chaos.workloads.sets import SetWorkload
from loom.chaos.workloads.topic import TopicWorkload

INF = math.inf


# -- registers ----------------------------------------------------------------------------------

def test_sequential_register_history_is_linearizable() -> None:
    ops = [RegOp("write", b"a", 0, 1), RegOp("read", b"a", 2, 3),
           RegOp("cas", b"b", 4, 5, expected=b"a", ok=True), RegOp("read", b"b", 6, 7),
           RegOp("cas", b"c", 8, 9, expected=b"a", ok=False), RegOp("read", b"b", 10, 11)]
    assert check_register(ops)[0] is True


def test_stale_read_is_caught() -> None:
    ops = [RegOp("write", b"a", 0, 1), RegOp("write", b"b", 2, 3), RegOp("read", b"a", 4, 5)]
    assert check_register(ops)[0] is False


def test_concurrent_ops_may_linearize_either_way() -> None:
    ops = [RegOp("write", b"a", 0, 10), RegOp("read", None, 1, 2), RegOp("read", b"a", 3, 4),
           RegOp("write", b"b", 0, 10), RegOp("read", b"b", 5, 6)]
    assert check_register(ops)[0] is True


def test_cas_answers_must_agree_with_the_value() -> None:
    # the CAS says it swapped a -> c, yet a later read still sees a
    ops = [RegOp("write", b"a", 0, 1), RegOp("cas", b"c", 2, 3, expected=b"a", ok=True),
           RegOp("read", b"a", 4, 5)]
    assert check_register(ops)[0] is False
    # the CAS says it did not swap, though the register held its expected value
    ops = [RegOp("write", b"a", 0, 1), RegOp("cas", b"c", 2, 3, expected=b"a", ok=False)]
    assert check_register(ops)[0] is False


def test_indeterminate_write_may_or_may_not_have_happened() -> None:
    seen = [RegOp("write", b"a", 0, 1), RegOp("write", b"b", 2, INF), RegOp("read", b"b", 5, 6)]
    unseen = [RegOp("write", b"a", 0, 1), RegOp("write", b"b", 2, INF), RegOp("read", b"a", 5, 6)]
    assert check_register(seen)[0] is True
    assert check_register(unseen)[0] is True
    # ...but not before it was called
    early = [RegOp("write", b"a", 0, 1), RegOp("read", b"b", 2, 3), RegOp("write", b"b", 4, INF)]
    assert check_register(early)[0] is False


def test_indeterminate_cas_follows_the_cas_rule() -> None:
    ops = [RegOp("write", b"x", 0, 1), RegOp("cas", b"b", 2, INF, expected=b"a"),
           RegOp("read", b"b", 5, 6)]
    assert check_register(ops)[0] is False  # it expected a, the register held x


def test_register_workload_checks_recorded_operations() -> None:
    h = History()
    w = RegisterWorkload(random.Random(1), h)
    h.ops += [Op("register", "p0", "write", "r0", b"v1", 0, 1, "ok"),
              Op("register", "p1", "read", "r0", None, 2, 3, "ok", None)]
    r = w.check()
    assert not r.ok and "r0" in r.anomalies[0]
    h.ops[-1].result = b"v1"
    assert w.check().ok


# -- counters -----------------------------------------------------------------------------------

def counter_history(final: int, answers: list[int], info: int = 0) -> History:
    h = History()
    h.ops += [Op("counter", "p", "add", "c", 1, i, i + 0.5, "ok", a) for i, a in enumerate(answers)]
    h.ops += [Op("counter", "p", "add", "c", 1, 100 + i) for i in range(info)]
    h.ops.append(Op("counter", "final", "final", "c", None, 200, 201, "ok", final))
    return h


def test_counter_final_is_acked_plus_a_subset_of_indeterminate() -> None:
    assert CounterWorkload(random.Random(1), counter_history(3, [1, 2, 3])).check().ok
    assert CounterWorkload(random.Random(1), counter_history(4, [1, 2, 3], info=1)).check().ok
    lost = CounterWorkload(random.Random(1), counter_history(2, [1, 2, 3])).check()
    assert not lost.ok and "outside" in lost.anomalies[0]
    dup = CounterWorkload(random.Random(1), counter_history(4, [1, 2, 3])).check()
    assert not dup.ok  # one increment applied twice


def test_counter_catches_a_repeated_answer_and_a_read_going_back() -> None:
    r = CounterWorkload(random.Random(1), counter_history(3, [1, 1, 3], info=1)).check()
    assert any("two increments" in a for a in r.anomalies)
    h = counter_history(2, [1, 2])
    h.ops += [Op("counter", "q", "read", "c", None, 10, 11, "ok", 2),
              Op("counter", "q", "read", "c", None, 12, 13, "ok", 1)]
    assert any("read 1 after" in a for a in CounterWorkload(random.Random(1), h).check().anomalies)


# -- queues -------------------------------------------------------------------------------------

def queue_history(polled: list[bytes], drained: list[bytes], info_polls: int = 0) -> History:
    h = History()
    h.ops += [Op("queue", "p", "push", "q", v, i, i + 0.5, "ok", i) for i, v in
              enumerate([b"a", b"b", b"c"])]
    h.ops += [Op("queue", "c", "poll", "q", None, 10 + i, 10.5 + i, "ok", v)
              for i, v in enumerate(polled)]
    h.ops += [Op("queue", "c", "poll", "q", None, 30 + i) for i in range(info_polls)]
    h.ops += [Op("queue", "final", "drain", "q", None, 50, 51, "ok", drained),
              Op("queue", "final", "drain", "q", None, 52, 53, "ok", [])]
    return h


def test_queue_every_acked_push_taken_exactly_once() -> None:
    assert QueueWorkload(random.Random(1), queue_history([b"a"], [b"b", b"c"])).check().ok
    twice = QueueWorkload(random.Random(1), queue_history([b"a", b"a"], [b"b", b"c"])).check()
    assert any("twice" in a for a in twice.anomalies)
    invented = QueueWorkload(random.Random(1), queue_history([b"z"], [b"a", b"b", b"c"])).check()
    assert any("never pushed" in a for a in invented.anomalies)
    lost = QueueWorkload(random.Random(1), queue_history([b"a"], [b"b"])).check()
    assert any("never taken" in a for a in lost.anomalies)
    maybe = QueueWorkload(random.Random(1), queue_history([b"a"], [b"b"], info_polls=1)).check()
    assert maybe.ok and maybe.notes  # an indeterminate poll may have taken it


# -- sets ---------------------------------------------------------------------------------------

def test_set_acked_adds_present() -> None:
    h = History()
    h.ops += [Op("set", "p", "add", m, None, i, i + 0.5, "ok", True)
              for i, m in enumerate(["a", "b"])]
    h.ops.append(Op("set", "p", "add", "c", None, 5))
    h.ops.append(Op("set", "final", "members", "s", None, 9, 10, "ok", ["a", "b"]))
    assert SetWorkload(random.Random(1), h).check().ok
    h.ops[-1].result = ["a", "z"]
    r = SetWorkload(random.Random(1), h).check()
    assert any("missing" in a for a in r.anomalies)
    assert any("never added" in a for a in r.anomalies)


# -- fenced locks -------------------------------------------------------------------------------

def test_fenced_list_order_and_ownership() -> None:
    good = [b"5:p0:1", b"5:p0:2", b"9:p1:1", b"9:p1:2"]
    assert check_fenced(good, set(good), set(good)) == []
    back = [b"5:p0:1", b"9:p1:1", b"5:p0:2"]
    assert any("acted after" in a for a in check_fenced(back, set(back), set(back)))
    shared = [b"5:p0:1", b"5:p1:1"]
    assert any("used by" in a for a in check_fenced(shared, set(shared), set(shared)))
    assert any("missing" in a for a in check_fenced(good[:2], set(good), set(good)))


def test_lock_tokens_increase_in_real_time() -> None:
    h = History()
    h.ops += [Op("lock", "p0", "lock", "l", 1, 0, 1, "ok", 7),
              Op("lock", "p1", "lock", "l", 2, 2, 3, "ok", 4),
              Op("lock", "final", "list", "l", None, 9, 10, "ok", [])]
    r = LockWorkload(random.Random(1), h).check()
    assert any("granted after" in a for a in r.anomalies)


# -- topics -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("seqs", "ok", "lost"), [
    ([1, 2, 3], True, 0),
    ([1, 3], True, 1),  # a gap: loss, reported, not an anomaly
    ([1, 2, 2], False, 0),
    ([1, 3, 2], False, 1),
])
def test_topic_sequence_numbers_strictly_increase(seqs: list[int], ok: bool, lost: int) -> None:
    h = History()
    h.ops += [Op("topic", "pub", "publish", "t", f"v{s}".encode(), s, s + 0.5, "ok", {"seq": s})
              for s in (1, 2, 3)]
    h.ops += [Op("topic", "sub", "deliver", "t", None, 10 + i, 10 + i, "ok",
                 (s, f"v{s}".encode(), None)) for i, s in enumerate(seqs)]
    r = TopicWorkload(random.Random(1), h).check()
    assert r.ok is ok
    assert bool(r.notes) is (lost > 0)


def test_topic_delivery_must_match_the_published_value() -> None:
    h = History()
    h.ops += [Op("topic", "pub", "publish", "t", b"v1", 0, 1, "ok", {"seq": 1}),
              Op("topic", "sub", "deliver", "t", None, 2, 2, "ok", (1, b"other", None))]
    r = TopicWorkload(random.Random(1), h).check()
    assert any("never published" in a for a in r.anomalies)


def test_unseen_indeterminate_cas_can_explain_a_refused_cas() -> None:
    # the indeterminate CAS a -> b took effect, nobody read b, and a later CAS expecting a
    # was refused: linearizable (found by a chaos run, where the checker first called it not)
    ops = [RegOp("write", b"a", 0, 1), RegOp("cas", b"b", 2, INF, expected=b"a"),
           RegOp("cas", b"c", 5, 6, expected=b"a", ok=False)]
    assert check_register(ops)[0] is True
    without = [ops[0], ops[2]]
    assert check_register(without)[0] is False
