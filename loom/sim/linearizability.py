"""A linearizability checker for register histories (Wing & Gong search with Lowe's memo).

A history is checked per key (registers compose: a history is linearizable iff each key's
sub-history is). An operation is `put(v)` or `get() -> v`; `ret` is `math.inf` for an
operation whose outcome is unknown (client timeout): it may take effect at any point after
its call, or never. Search: repeatedly pick a "minimal" pending operation (one called before
every pending operation returned), apply it to the model, backtrack on failure; states
(set of linearized operations, register value) already explored are cached, so the search is
polynomial for the mostly-sequential histories a simulator produces. `budget` bounds it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Op:
    key: str
    kind: str  # "put" or "get"
    value: str | None  # put: the value written; get: the value observed (None: absent)
    call: float
    ret: float = math.inf  # inf: indeterminate

    def __post_init__(self) -> None:
        if self.kind not in ("put", "get"):
            raise ValueError(f"unknown op kind {self.kind!r}")
        if self.ret < self.call:
            raise ValueError("an operation returns after it is called")


@dataclass(frozen=True, slots=True)
class Result:
    ok: bool | None  # None: search budget exhausted (inconclusive)
    key: str = ""
    explored: int = 0


def check_key(ops: list[Op], budget: int = 500_000) -> Result:
    key = ops[0].key if ops else ""
    observed = {o.value for o in ops if o.kind == "get"}
    # an indeterminate get constrains nothing; an indeterminate put nobody observed can be
    # left out (linearizing it never helps a later read)
    ops = [
        o for o in ops
        if o.ret != math.inf or (o.kind == "put" and o.value in observed)
    ]
    ops.sort(key=lambda o: (o.call, o.ret))
    n = len(ops)
    required = 0
    for i, o in enumerate(ops):
        if o.ret != math.inf:
            required |= 1 << i
    calls = [o.call for o in ops]
    rets = [o.ret for o in ops]
    stack: list[tuple[int, str | None]] = [(0, None)]
    seen: set[tuple[int, str | None]] = {(0, None)}
    explored = 0
    while stack:
        done, state = stack.pop()
        if done & required == required:
            return Result(True, key, explored)
        explored += 1
        if explored > budget:
            return Result(None, key, explored)
        min_ret = math.inf
        for i in range(n):
            if not done >> i & 1 and rets[i] < min_ret:
                min_ret = rets[i]
        for i in range(n):
            if done >> i & 1:
                continue
            if calls[i] > min_ret:
                break  # sorted by call: nobody later is minimal either
            o = ops[i]
            if o.kind == "put":
                nxt = (done | 1 << i, o.value)
            elif o.value == state:
                nxt = (done | 1 << i, state)
            else:
                continue
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return Result(False, key, explored)


def check_history(ops: Iterable[Op], budget: int = 500_000) -> list[Result]:
    """Check every key; returns the non-linearizable or inconclusive keys' results."""
    per_key: dict[str, list[Op]] = defaultdict(list)
    for o in ops:
        per_key[o.key].append(o)
    bad = []
    for key in sorted(per_key):
        r = check_key(per_key[key], budget)
        if r.ok is not True:
            bad.append(r)
    return bad
