"""Linearizability of the simulator's put/get histories, per key.

A history is checked per key (registers compose: a history is linearizable iff each key's
sub-history is). An operation is `put(v)` or `get() -> v`; `ret` is `math.inf` for an
operation whose outcome is unknown (client timeout): it may take effect at any point after
its call, or never. The search (Wing & Gong with Lowe's memo, bounded by `budget`) is the one
register checker of the project, loom/chaos/linear.py, which also checks the chaos harness's
histories (with compare-and-set); this module only maps the simulator's operations onto it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from loom.chaos.linear import RegOp, check_register


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
    """One key's history, checked by the one register checker (loom/chaos/linear.py: a put is
    a write, a get a read; an indeterminate get constrains nothing and is left out there)."""
    key = ops[0].key if ops else ""
    ok, explored = check_register(
        [RegOp("write" if o.kind == "put" else "read", _bytes(o.value), o.call, o.ret)
         for o in ops], budget)
    return Result(ok, key, explored)


def _bytes(v: str | None) -> bytes | None:
    return None if v is None else v.encode()


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
