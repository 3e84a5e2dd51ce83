from __future__ import annotations

import math

from loom.sim.linearizability import Op, check_history, check_key


def test_sequential_history_is_linearizable() -> None:
    ops = [Op("k", "put", "a", 0, 1), Op("k", "get", "a", 2, 3), Op("k", "put", "b", 4, 5),
           Op("k", "get", "b", 6, 7)]
    assert check_key(ops).ok is True


def test_stale_read_is_caught() -> None:
    ops = [Op("k", "put", "a", 0, 1), Op("k", "put", "b", 2, 3), Op("k", "get", "a", 4, 5)]
    assert check_key(ops).ok is False


def test_concurrent_ops_may_reorder() -> None:
    ops = [Op("k", "put", "a", 0, 10), Op("k", "get", None, 1, 2), Op("k", "get", "a", 3, 4)]
    assert check_key(ops).ok is True


def test_read_cannot_go_back_in_time() -> None:
    ops = [Op("k", "put", "a", 0, 10), Op("k", "get", "a", 1, 2), Op("k", "get", None, 3, 4)]
    assert check_key(ops).ok is False


def test_indeterminate_write_may_or_may_not_happen() -> None:
    seen = [Op("k", "put", "a", 0, math.inf), Op("k", "get", "a", 5, 6)]
    unseen = [Op("k", "put", "a", 0, math.inf), Op("k", "get", None, 5, 6)]
    assert check_key(seen).ok is True
    assert check_key(unseen).ok is True
    # but once observed it cannot vanish again
    flip = [*seen, Op("k", "get", None, 7, 8)]
    assert check_key(flip).ok is False


def test_value_never_written_is_caught_and_keys_are_independent() -> None:
    ops = [Op("a", "put", "1", 0, 1), Op("b", "get", "1", 2, 3), Op("a", "get", "1", 2, 3)]
    bad = check_history(ops)
    assert [r.key for r in bad] == ["b"] and bad[0].ok is False


def test_budget_makes_the_result_inconclusive() -> None:
    ops = [Op("k", "put", str(i), 0, 100) for i in range(12)] + [Op("k", "get", "x", 0, 100)]
    assert check_key(ops, budget=50).ok is None
