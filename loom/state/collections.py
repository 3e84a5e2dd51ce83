"""SET (members in key order, paged by cursor) and LIST (deque with index access).

Set invariants: set(members) == set(index); index is sorted, so SET_MEMBERS pages cost
O(log n + page). List: LIST_RANGE answers at most LIST_RANGE_MAX items.
"""

from __future__ import annotations

from collections import deque
from itertools import islice
from typing import Any

from sortedcontainers import SortedList  # type: ignore[import-untyped]

from loom.state.base import Family, Struct, canon, page_sorted
from loom.wire.errors import NotFound

MEMBER_OVERHEAD = 110
ITEM_OVERHEAD = 48
STRUCT_BYTES = 200
LIST_RANGE_MAX = 1000


class SetS(Struct):
    __slots__ = ("index", "members")

    def __init__(self) -> None:
        super().__init__()
        self.members: dict[str, None] = {}
        self.index = SortedList()

    def size(self) -> int:
        return len(self.members)


class SetFamily(Family[SetS]):
    CATEGORY = "SET"

    def new(self) -> SetS:
        return SetS()

    def op_SET_ADD(self, b: dict[str, Any]) -> bool:
        """-> whether the member was new."""
        name, m = b["name"], b["member"]
        is_new = name not in self.items
        s = self.items.get(name)
        if s is not None and m in s.members:
            return False
        cost = len(m) + MEMBER_OVERHEAD + (STRUCT_BYTES if is_new else 0)
        self.core.check_grow(cost)
        s = self.get_or_create(name)
        self.core.check_entries("set", name, len(s.members) + 1)
        self.core.charge(s, cost)
        s.members[m] = None
        s.index.add(m)

        def undo() -> None:
            del s.members[m]
            s.index.remove(m)
            self.core.charge(s, -cost, check=False)

        self.core.record(undo)
        return True

    def op_SET_REMOVE(self, b: dict[str, Any]) -> bool:
        """-> whether the member was present."""
        s = self.items.get(b["name"])
        m = b["member"]
        if s is None or m not in s.members:
            return False
        del s.members[m]
        s.index.remove(m)
        self.core.charge(s, -(len(m) + MEMBER_OVERHEAD), check=False)

        def undo() -> None:
            s.members[m] = None
            s.index.add(m)
            self.core.charge(s, len(m) + MEMBER_OVERHEAD, check=False)

        self.core.record(undo)
        return True

    def op_SET_CLEAR(self, b: dict[str, Any]) -> int:
        """-> number of members removed. O(1) journal."""
        s = self.items.get(b["name"])
        if s is None or not s.members:
            return 0
        saved, freed = (s.members, s.index), s.nbytes - STRUCT_BYTES
        s.members, s.index = {}, SortedList()
        self.core.charge(s, -freed, check=False)

        def undo() -> None:
            s.members, s.index = saved
            self.core.charge(s, freed, check=False)

        self.core.record(undo)
        return len(saved[0])

    def op_SET_CONTAINS(self, b: dict[str, Any]) -> bool:
        """-> whether member is present."""
        s = self.items.get(b["name"])
        return s is not None and b["member"] in s.members

    def op_SET_SIZE(self, b: dict[str, Any]) -> int:
        """-> number of members."""
        s = self.items.get(b["name"])
        return 0 if s is None else len(s.members)

    def op_SET_MEMBERS(self, b: dict[str, Any]) -> dict[str, Any]:
        """-> {"members": [in order], "cursor": str | None (None: no more pages)}."""
        s = self.items.get(b["name"])
        if s is None:
            return {"members": [], "cursor": None}
        members, cursor = page_sorted(s.index, b.get("cursor"), b["limit"],
                                      self.core.limits.scan_budget, lambda k: True)
        return {"members": members, "cursor": cursor}

    def dump(self) -> Any:
        return [[n, list(s.index), canon(s.ops)] for n, s in sorted(self.items.items())]

    def load(self, data: Any) -> None:
        for n, members, ops in data:
            s = SetS()
            s.members, s.ops = dict.fromkeys(members), ops
            s.index = SortedList(members)
            s.nbytes = STRUCT_BYTES + sum(len(m) + MEMBER_OVERHEAD for m in members)
            self.core.total_bytes += s.nbytes
            self.items[n] = s


class ListS(Struct):
    __slots__ = ("items",)

    def __init__(self) -> None:
        super().__init__()
        self.items: deque[bytes] = deque()

    def size(self) -> int:
        return len(self.items)


def _cost(v: bytes) -> int:
    return len(v) + ITEM_OVERHEAD


class ListFamily(Family[ListS]):
    CATEGORY = "LIST"

    def new(self) -> ListS:
        return ListS()

    def _push(self, b: dict[str, Any], left: bool) -> int:
        name, v = b["name"], b["value"]
        is_new = name not in self.items
        cost = _cost(v) + (STRUCT_BYTES if is_new else 0)
        self.core.check_grow(cost)
        lst = self.get_or_create(name)
        self.core.check_entries("list", name, len(lst.items) + 1)
        self.core.charge(lst, cost)
        if left:
            lst.items.appendleft(v)
        else:
            lst.items.append(v)

        def undo() -> None:
            if left:
                lst.items.popleft()
            else:
                lst.items.pop()
            self.core.charge(lst, -cost, check=False)

        self.core.record(undo)
        return len(lst.items)

    def _pop(self, b: dict[str, Any], left: bool) -> bytes | None:
        lst = self.items.get(b["name"])
        if lst is None or not lst.items:
            return None
        v = lst.items.popleft() if left else lst.items.pop()
        self.core.charge(lst, -_cost(v), check=False)

        def undo() -> None:
            if left:
                lst.items.appendleft(v)
            else:
                lst.items.append(v)
            self.core.charge(lst, _cost(v), check=False)

        self.core.record(undo)
        return v

    def op_LIST_PUSH_LEFT(self, b: dict[str, Any]) -> int:
        """-> the new length."""
        return self._push(b, True)

    def op_LIST_PUSH_RIGHT(self, b: dict[str, Any]) -> int:
        """-> the new length."""
        return self._push(b, False)

    def op_LIST_POP_LEFT(self, b: dict[str, Any]) -> bytes | None:
        """-> the first item, None if empty."""
        return self._pop(b, True)

    def op_LIST_POP_RIGHT(self, b: dict[str, Any]) -> bytes | None:
        """-> the last item, None if empty."""
        return self._pop(b, False)

    def op_LIST_GET(self, b: dict[str, Any]) -> bytes | None:
        """-> the item at index (negative from the end), None if out of range."""
        lst = self.items.get(b["name"])
        n = 0 if lst is None else len(lst.items)
        i = b["index"] + n if b["index"] < 0 else b["index"]
        return lst.items[i] if lst is not None and 0 <= i < n else None

    def op_LIST_SET(self, b: dict[str, Any]) -> None:
        """-> None; NOT_FOUND if index is out of range."""
        lst = self.items.get(b["name"])
        n = 0 if lst is None else len(lst.items)
        i = b["index"] + n if b["index"] < 0 else b["index"]
        if lst is None or not 0 <= i < n:
            raise NotFound(f"index {b['index']} out of range for list {b['name']} ({n} items)")
        old, new = lst.items[i], b["value"]
        self.core.charge(lst, len(new) - len(old))
        lst.items[i] = new

        def undo() -> None:
            lst.items[i] = old
            self.core.charge(lst, len(old) - len(new), check=False)

        self.core.record(undo)

    @staticmethod
    def _bounds(n: int, start: int, stop: int) -> tuple[int, int]:
        """Inclusive Redis-style bounds -> a half-open [lo, hi) clipped to [0, n)."""
        lo = max(0, start + n if start < 0 else start)
        hi = min(n, (stop + n if stop < 0 else stop) + 1)
        return lo, max(lo, hi)

    def op_LIST_RANGE(self, b: dict[str, Any]) -> list[bytes]:
        """-> items start..stop inclusive (negative from the end), at most 1000."""
        lst = self.items.get(b["name"])
        if lst is None:
            return []
        lo, hi = self._bounds(len(lst.items), b["start"], b["stop"])
        return list(islice(lst.items, lo, min(hi, lo + LIST_RANGE_MAX)))

    def op_LIST_SIZE(self, b: dict[str, Any]) -> int:
        """-> number of items."""
        lst = self.items.get(b["name"])
        return 0 if lst is None else len(lst.items)

    def op_LIST_TRIM(self, b: dict[str, Any]) -> int:
        """-> number of items removed; keeps start..stop inclusive. O(1) journal."""
        lst = self.items.get(b["name"])
        if lst is None:
            return 0
        lo, hi = self._bounds(len(lst.items), b["start"], b["stop"])
        old, old_bytes = lst.items, lst.nbytes
        lst.items = deque(islice(old, lo, hi))
        self.core.charge(lst, STRUCT_BYTES + sum(map(_cost, lst.items)) - old_bytes, check=False)

        def undo() -> None:
            self.core.charge(lst, old_bytes - lst.nbytes, check=False)
            lst.items = old

        self.core.record(undo)
        return len(old) - len(lst.items)

    def dump(self) -> Any:
        return [[n, list(lst.items), canon(lst.ops)] for n, lst in sorted(self.items.items())]

    def load(self, data: Any) -> None:
        for n, items, ops in data:
            lst = ListS()
            lst.items, lst.ops = deque(items), ops
            lst.nbytes = STRUCT_BYTES + sum(map(_cost, items))
            self.core.total_bytes += lst.nbytes
            self.items[n] = lst
