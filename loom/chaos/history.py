"""The history of one run: every operation a workload issued, with its call and return times.

An operation is `ok` (acknowledged, `result` holds the answer), `fail` (definitely not applied:
the server refused it, or the client never got it to a server) or `info` (indeterminate: a
write whose outcome the client could not learn; it may take effect at any point after its call,
or never). Times are `trio.current_time()` seconds; `ret` is infinite for `info` operations.

The client's own error classes decide `fail` against `info` (loom.client: IndeterminateError
is a Timeout); reads that fail are just `fail`, as a read that was not answered changed nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from loom.client.errors import ClientError
from loom.wire.errors import LoomError, Timeout


@dataclass(slots=True)
class Op:
    workload: str
    process: str
    f: str  # operation kind, e.g. "read", "write", "cas", "add", "push", "poll"
    key: str
    value: Any
    call: float
    ret: float = math.inf
    status: str = "info"  # "ok" | "fail" | "info"
    result: Any = None
    error: str = ""


@dataclass
class History:
    limit: int = 1_000_000  # operations recorded at most; beyond it workers stop issuing
    ops: list[Op] = field(default_factory=list)

    @property
    def full(self) -> bool:
        return len(self.ops) >= self.limit

    def of(self, workload: str) -> list[Op]:
        return [o for o in self.ops if o.workload == workload]

    async def run(self, workload: str, process: str, f: str, key: str, value: Any,
                  call: Callable[[], Awaitable[Any]], *, write: bool) -> Op:
        """Invoke `call`, record the operation and its outcome, and answer the record."""
        op = Op(workload, process, f, key, value, trio.current_time())
        self.ops.append(op)
        try:
            op.result = await call()
        except (Timeout, trio.TooSlowError) as e:  # IndeterminateError is a Timeout
            op.error = f"{type(e).__name__}: {e}"
            if write:
                return op  # info: ret stays infinite
            op.status, op.ret = "fail", trio.current_time()
            return op
        except (LoomError, ClientError) as e:
            op.status, op.ret, op.error = "fail", trio.current_time(), f"{type(e).__name__}: {e}"
            return op
        op.status, op.ret = "ok", trio.current_time()
        return op

    def record(self, workload: str, process: str, f: str, key: str, value: Any,
               result: Any) -> Op:
        """An observation that is not a request (e.g. a pushed topic message): ok at once."""
        now = trio.current_time()
        op = Op(workload, process, f, key, value, now, now, "ok", result)
        self.ops.append(op)
        return op

    def save(self, path: Path) -> None:
        with path.open("w", encoding="utf-8") as f:
            for o in self.ops:
                f.write(json.dumps({
                    "workload": o.workload, "process": o.process, "f": o.f, "key": o.key,
                    "value": _plain(o.value), "call": round(o.call, 6),
                    "ret": None if o.ret == math.inf else round(o.ret, 6), "status": o.status,
                    "result": _plain(o.result), "error": o.error}) + "\n")


def after_completed(ops: list[Op]) -> Iterator[tuple[Op, int]]:
    """Each op (in call order) with the largest integer result of any op that returned before
    it was called (-1 when none did): what real time says it must not go below (a counter's
    reads, a lock's fencing tokens)."""
    by_call = sorted(ops, key=lambda o: o.call)
    by_ret = sorted(ops, key=lambda o: o.ret)
    best, j = -1, 0
    for o in by_call:
        while j < len(by_ret) and by_ret[j].ret < o.call:
            best = max(best, by_ret[j].result)
            j += 1
        yield o, best


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", "backslashreplace")
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What a workload's checker found: operations it checked, anomalies (each a sentence)."""

    workload: str
    checked: int
    indeterminate: int
    anomalies: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # not anomalies: e.g. topic messages reported lost

    @property
    def ok(self) -> bool:
        return not self.anomalies
