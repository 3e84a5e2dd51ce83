"""COUNTER (signed 64-bit, never wraps), ATOMIC_REF (opaque bytes) and ID_GEN.

ID_GEN ids: (ms since ID_EPOCH_MS) << 22 | sequence. Per generator, `last` is the last id handed
out and the next id is max(last + 1, now_ms << 22), so ids are unique and increasing even when
the proposer's clock goes backwards (it never does for the log clock) or more than 2**22 ids are
taken in one millisecond (the sequence borrows from the next millisecond). `last` is replicated
and snapshotted, so ids stay unique across leader changes and restarts.
"""

from __future__ import annotations

from typing import Any

from loom.state.base import Family, Struct, canon
from loom.wire.errors import LimitExceeded
from loom.wire.schema import INT64_MAX, INT64_MIN

SCALAR_BYTES = 80
ID_EPOCH_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z
ID_SEQ_BITS = 22


class CounterS(Struct):
    __slots__ = ("value",)

    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    def size(self) -> int:
        return 1


class CounterFamily(Family[CounterS]):
    CATEGORY = "COUNTER"

    def new(self) -> CounterS:
        return CounterS()

    def _set(self, name: str, value: int) -> int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise LimitExceeded(f"counter {name} would overflow signed 64-bit: {value}")
        is_new = name not in self.items
        c = self.get_or_create(name)
        if is_new:
            self.core.charge(c, SCALAR_BYTES)
        old, c.value = c.value, value

        def undo() -> None:
            c.value = old

        self.core.record(undo)
        return value

    def _get(self, name: str) -> int:
        c = self.items.get(name)
        return 0 if c is None else c.value

    def op_COUNTER_GET(self, b: dict[str, Any]) -> int:
        """-> the value (0 if never set)."""
        return self._get(b["name"])

    def op_COUNTER_SET(self, b: dict[str, Any]) -> None:
        """-> None."""
        self._set(b["name"], b["value"])

    def op_COUNTER_INCREMENT(self, b: dict[str, Any]) -> int:
        """-> the new value; LIMIT_EXCEEDED on overflow (value unchanged)."""
        return self._set(b["name"], self._get(b["name"]) + 1)

    def op_COUNTER_DECREMENT(self, b: dict[str, Any]) -> int:
        """-> the new value; LIMIT_EXCEEDED on overflow (value unchanged)."""
        return self._set(b["name"], self._get(b["name"]) - 1)

    def op_COUNTER_ADD(self, b: dict[str, Any]) -> int:
        """-> the new value; LIMIT_EXCEEDED on overflow (value unchanged)."""
        return self._set(b["name"], self._get(b["name"]) + b["delta"])

    def op_COUNTER_COMPARE_AND_SET(self, b: dict[str, Any]) -> bool:
        """-> whether the value equalled expected (and is now value)."""
        if self._get(b["name"]) != b["expected"]:
            return False
        self._set(b["name"], b["value"])
        return True

    def dump(self) -> Any:
        return [[n, c.value, canon(c.ops)] for n, c in sorted(self.items.items())]

    def load(self, data: Any) -> None:
        for n, value, ops in data:
            c = CounterS()
            c.value, c.ops, c.nbytes = value, ops, SCALAR_BYTES
            self.core.total_bytes += SCALAR_BYTES
            self.items[n] = c


class RefS(Struct):
    __slots__ = ("value",)

    def __init__(self) -> None:
        super().__init__()
        self.value: bytes | None = None

    def size(self) -> int:
        return 0 if self.value is None else 1


class RefFamily(Family[RefS]):
    CATEGORY = "ATOMIC_REF"

    def new(self) -> RefS:
        return RefS()

    def _set(self, name: str, value: bytes | None) -> None:
        r = self.get_or_create(name)
        old = r.value
        delta = (0 if value is None else len(value)) - (0 if old is None else len(old))
        if r.nbytes == 0:
            delta += SCALAR_BYTES
        self.core.charge(r, delta)
        r.value = value

        def undo() -> None:
            r.value = old
            self.core.charge(r, -delta, check=False)

        self.core.record(undo)

    def _get(self, name: str) -> bytes | None:
        r = self.items.get(name)
        return None if r is None else r.value

    def op_ATOMIC_REF_GET(self, b: dict[str, Any]) -> bytes | None:
        """-> the value, None if unset."""
        return self._get(b["name"])

    def op_ATOMIC_REF_SET(self, b: dict[str, Any]) -> None:
        """-> None (absent value clears the reference)."""
        self._set(b["name"], b.get("value"))

    def op_ATOMIC_REF_COMPARE_AND_SET(self, b: dict[str, Any]) -> bool:
        """-> whether the value equalled expected (absent: unset) and is now value."""
        if self._get(b["name"]) != b.get("expected"):
            return False
        self._set(b["name"], b.get("value"))
        return True

    def dump(self) -> Any:
        return [[n, r.value, canon(r.ops)] for n, r in sorted(self.items.items())]

    def load(self, data: Any) -> None:
        for n, value, ops in data:
            r = RefS()
            r.value, r.ops = value, ops
            r.nbytes = SCALAR_BYTES + (0 if value is None else len(value))
            self.core.total_bytes += r.nbytes
            self.items[n] = r


class IdGenS(Struct):
    __slots__ = ("last",)

    def __init__(self) -> None:
        super().__init__()
        self.last = -1

    def size(self) -> int:
        return 1


class IdGenFamily(Family[IdGenS]):
    CATEGORY = "ID_GEN"

    def new(self) -> IdGenS:
        return IdGenS()

    def op_ID_GEN_NEXT(self, b: dict[str, Any]) -> int:
        """-> the first of `count` consecutive new ids (all unique within this generator).
        LIMIT_EXCEEDED if the 63-bit id space is exhausted."""
        name, count = b["name"], b.get("count", 1)
        is_new = name not in self.items
        g = self.items.get(name)
        floor = max(0, self.core.now - ID_EPOCH_MS) << ID_SEQ_BITS
        first = max(-1 if g is None else g.last, floor - 1) + 1
        if first + count - 1 > INT64_MAX:
            raise LimitExceeded(f"id generator {name} is exhausted")
        g = self.get_or_create(name)
        if is_new:
            self.core.charge(g, SCALAR_BYTES)
        old, g.last = g.last, first + count - 1

        def undo() -> None:
            g.last = old

        self.core.record(undo)
        return first

    def dump(self) -> Any:
        return [[n, g.last, canon(g.ops)] for n, g in sorted(self.items.items())]

    def load(self, data: Any) -> None:
        for n, last, ops in data:
            g = IdGenS()
            g.last, g.ops, g.nbytes = last, ops, SCALAR_BYTES
            self.core.total_bytes += SCALAR_BYTES
            self.items[n] = g
