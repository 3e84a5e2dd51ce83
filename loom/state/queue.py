"""QUEUE: FIFO of bytes items with an optional capacity (QUEUE_CREATE).

Invariants: len(items) <= capacity when a capacity is set (a later, smaller capacity only stops
pushes until the queue drains below it); nbytes == sum(len(item) + ITEM_OVERHEAD) + QUEUE_BYTES.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from loom.state.base import Family, Struct, canon
from loom.state.command import Outcome
from loom.wire.errors import LimitExceeded

ITEM_OVERHEAD = 48
QUEUE_BYTES = 200


class QueueS(Struct):
    __slots__ = ("capacity", "items")

    def __init__(self) -> None:
        super().__init__()
        self.items: deque[bytes] = deque()
        self.capacity: int | None = None

    def size(self) -> int:
        return len(self.items)


class QueueFamily(Family[QueueS]):
    CATEGORY = "QUEUE"

    def new(self) -> QueueS:
        return QueueS()

    def _queue(self, name: str) -> QueueS:
        is_new = name not in self.items
        q = self.get_or_create(name)
        if is_new:
            self.core.charge(q, QUEUE_BYTES)
        return q

    def _take(self, name: str, q: QueueS, n: int) -> list[bytes]:
        """Journaled: remove and return up to n head items."""
        out = [q.items.popleft() for _ in range(min(n, len(q.items)))]
        if out:
            freed = sum(len(v) + ITEM_OVERHEAD for v in out)
            self.core.charge(q, -freed, check=False)
            self.core.touch(self.CATEGORY, name)

            def undo() -> None:
                q.items.extendleft(reversed(out))
                self.core.charge(q, freed, check=False)

            self.core.record(undo)
        return out

    def op_QUEUE_PUSH(self, b: dict[str, Any]) -> int:
        """-> the queue size after the push. LIMIT_EXCEEDED when at capacity."""
        name, value = b["name"], b["value"]
        q = self._queue(name)
        if q.capacity is not None and len(q.items) >= q.capacity:
            raise LimitExceeded(f"queue {name} is full (capacity {q.capacity})")
        self.core.check_entries("queue", name, len(q.items) + 1)
        self.core.charge(q, len(value) + ITEM_OVERHEAD)
        q.items.append(value)
        self.core.touch(self.CATEGORY, name)

        def undo() -> None:
            q.items.pop()
            self.core.charge(q, -(len(value) + ITEM_OVERHEAD), check=False)

        self.core.record(undo)
        return len(q.items)

    def op_QUEUE_POLL(self, b: dict[str, Any]) -> Any:
        """-> the head item (bytes); None when empty and timeout_ms is 0; else waiting."""
        q = self.items.get(b["name"])
        if q is None or not q.items:
            return Outcome.waiting() if b.get("timeout_ms", 0) > 0 else None
        return self._take(b["name"], q, 1)[0]

    def op_QUEUE_DRAIN(self, b: dict[str, Any]) -> list[bytes]:
        """-> up to `max` head items, oldest first."""
        q = self.items.get(b["name"])
        return [] if q is None else self._take(b["name"], q, b.get("max", 100))

    def op_QUEUE_CLEAR(self, b: dict[str, Any]) -> int:
        """-> the number of items removed. O(1) journal."""
        q = self.items.get(b["name"])
        if q is None or not q.items:
            return 0
        old, n, freed = q.items, len(q.items), q.nbytes - QUEUE_BYTES
        q.items = deque()
        self.core.charge(q, -freed, check=False)
        self.core.touch(self.CATEGORY, b["name"])

        def undo() -> None:
            q.items = old
            self.core.charge(q, freed, check=False)

        self.core.record(undo)
        return n

    def op_QUEUE_CREATE(self, b: dict[str, Any]) -> dict[str, int]:
        """-> {"capacity": n, "size": current size}; creates the queue or changes its capacity."""
        q = self._queue(b["name"])
        old, q.capacity = q.capacity, b["capacity"]

        def undo() -> None:
            q.capacity = old

        self.core.record(undo)
        self.core.touch(self.CATEGORY, b["name"])
        return {"capacity": b["capacity"], "size": len(q.items)}

    def op_QUEUE_PEEK(self, b: dict[str, Any]) -> bytes | None:
        """-> the head item or None."""
        q = self.items.get(b["name"])
        return q.items[0] if q is not None and q.items else None

    def op_QUEUE_SIZE(self, b: dict[str, Any]) -> int:
        """-> number of items."""
        q = self.items.get(b["name"])
        return 0 if q is None else len(q.items)

    def dump(self) -> Any:
        return [[n, q.capacity, list(q.items), canon(q.ops)] for n, q in sorted(self.items.items())]

    def load(self, data: Any) -> None:
        for n, capacity, items, ops in data:
            q = QueueS()
            q.capacity, q.items, q.ops = capacity, deque(items), ops
            q.nbytes = QUEUE_BYTES + sum(len(v) + ITEM_OVERHEAD for v in items)
            self.core.total_bytes += q.nbytes
            self.items[n] = q
