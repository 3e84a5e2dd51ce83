"""Linearizability of read / write / compare-and-set registers (Wing & Gong with Lowe's memo).

The one register checker: the chaos register workload's histories (with compare-and-set) and,
through loom/sim/linearizability.py, the simulator's put/get histories. The model:

- `write(v)` sets the register; `read() -> v` observes it (None: absent);
- `cas(exp, new) -> True` requires the register to equal `exp` and sets it to `new`;
  `cas(exp, new) -> False` requires it to differ from `exp` and changes nothing;
- an indeterminate write or CAS (`ret` infinite) may take effect at any point after its call
  (with the CAS rule: it sets `new` only where the register equals `exp`) or never.

Search: repeatedly pick a minimal pending operation (called before every pending operation
returned), apply it to the model, backtrack on failure; (linearized set, value) states already
explored are cached. `budget` bounds the states explored: past it the answer is None
(inconclusive, never an anomaly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Value = bytes | None


@dataclass(frozen=True, slots=True)
class RegOp:
    kind: str  # "read" | "write" | "cas"
    value: Value  # read: observed; write: written; cas: the new value
    call: float
    ret: float = math.inf  # inf: indeterminate (reads are never indeterminate: drop them)
    expected: Value = None  # cas only
    ok: bool | None = None  # cas only: whether it swapped; None when indeterminate


def check_register(ops: list[RegOp], budget: int = 200_000) -> tuple[bool | None, int]:
    """(linearizable?, states explored) for one register's history."""
    observed = {o.value for o in ops if o.kind == "read" and o.ret != math.inf}
    observed |= {o.expected for o in ops if o.kind == "cas" and o.ok is True}
    last_refused = max((o.call for o in ops if o.kind == "cas" and o.ok is False),
                       default=-math.inf)
    # An indeterminate read constrains nothing. An indeterminate write of a value nobody
    # observed can be left out: linearizing it never helps a later read or successful CAS.
    # It can help a refused CAS (the register must differ from the expected value), so one
    # called before a refused CAS stays.
    ops = [o for o in ops if o.ret != math.inf or (
        o.kind != "read" and (o.value in observed or o.call < last_refused))]
    ops.sort(key=lambda o: (o.call, o.ret))
    n = len(ops)
    required = 0
    for i, o in enumerate(ops):
        if o.ret != math.inf:
            required |= 1 << i
    calls = [o.call for o in ops]
    rets = [o.ret for o in ops]
    start: tuple[int, Value] = (0, None)
    stack = [start]
    seen = {start}
    explored = 0
    while stack:
        done, state = stack.pop()
        if done & required == required:
            return True, explored
        explored += 1
        if explored > budget:
            return None, explored
        first = 0  # the first operation not yet linearized in this state
        while done >> first & 1:
            first += 1
        min_ret = math.inf
        for i in range(first, n):
            if not done >> i & 1 and rets[i] < min_ret:
                min_ret = rets[i]
            if calls[i] > min_ret:
                break
        for i in range(first, n):
            if done >> i & 1:
                continue
            if calls[i] > min_ret:
                break  # sorted by call: nobody later is minimal either
            possible, nxt = _step(ops[i], state)
            if not possible:
                continue
            key = (done | 1 << i, nxt)
            if key not in seen:
                seen.add(key)
                stack.append(key)
    return False, explored


def _step(o: RegOp, state: Value) -> tuple[bool, Value]:
    """(whether `o` can happen with the register at `state`, the register after it)."""
    if o.kind == "write":
        return True, o.value
    if o.kind == "read":
        return o.value == state, state
    if o.ok is True:
        return state == o.expected, o.value
    if o.ok is False:
        return state != o.expected, state
    return True, o.value if state == o.expected else state  # indeterminate CAS
