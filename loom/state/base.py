"""Shared machinery of the structure families: the apply context, the undo journal, cursors.

Atomicity. Every mutation of replicated state made while handling a command goes through a
primitive that first checks every limit (so a refused command changes nothing) and then pushes
an undo closure on `Core.undo`. If the command (or any inner op of a BATCH_EXECUTE) fails, the
machine runs the closures in reverse order and the state is exactly as before, except for the
one documented wart of cache maps (map.py: a rolled-back write may refresh a key's recency).
Housekeeping done before a command (expiries) is committed on its own and never rolled back.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import cbor2
from sortedcontainers import SortedList  # type: ignore[import-untyped]

from loom.state.limits import StateLimits
from loom.wire.errors import BadRequest, LimitExceeded

Undo = Callable[[], None]

# The categories whose structures live in the state machine (STRUCT_* accept exactly these).
CATEGORIES = (
    "MAP", "QUEUE", "SET", "LIST", "TOPIC", "COUNTER", "LOCK", "SEMAPHORE", "LATCH",
    "ATOMIC_REF", "ID_GEN",
)


class Struct:
    """Base of every structure: its estimated size in bytes and per-op apply counts."""

    __slots__ = ("nbytes", "ops")

    def __init__(self) -> None:
        self.nbytes = 0
        self.ops: dict[str, int] = {}

    def size(self) -> int:
        return 0


class Core:
    """State shared by the families: clock, index, principal, registry, byte budget, undo
    journal."""

    def __init__(self, limits: StateLimits) -> None:
        self.limits = limits
        self.now = 0  # log clock: max time_ms seen by apply (never goes backwards)
        self.index = 0  # log index of the command being applied
        self.principal = ""  # principal of the command being applied (Command.principal)
        self.total_bytes = 0  # sum of Struct.nbytes
        self.registry = SortedList()  # (category, name) of every structure
        self.undo: list[Undo] = []
        # Structures changed by the current apply (including side effects such as a session
        # expiry releasing locks): the node wakes waiters on these.
        self.changed: dict[tuple[str, str], None] = {}

    def record(self, fn: Undo) -> None:
        self.undo.append(fn)

    def rollback(self) -> None:
        undo, self.undo = self.undo, []
        for fn in reversed(undo):
            fn()

    def charge(self, s: Struct, delta: int, check: bool = True) -> None:
        """Add delta to s's estimated bytes; refuses growth over max_total_bytes. No journal:
        callers journal the mutation whose undo charges the inverse."""
        if check and delta > 0 and self.total_bytes + delta > self.limits.max_total_bytes:
            raise LimitExceeded(
                f"state is full: {self.total_bytes + delta} estimated bytes would exceed "
                f"max_total_bytes {self.limits.max_total_bytes}")
        self.total_bytes += delta
        s.nbytes += delta

    def check_grow(self, delta: int) -> None:
        if delta > 0 and self.total_bytes + delta > self.limits.max_total_bytes:
            raise LimitExceeded(
                f"state is full: {self.total_bytes + delta} estimated bytes would exceed "
                f"max_total_bytes {self.limits.max_total_bytes}")

    def register(self, cat: str, name: str) -> None:
        if len(self.registry) >= self.limits.max_structures:
            raise LimitExceeded(
                f"too many structures (max_structures {self.limits.max_structures})")
        self.registry.add((cat, name))
        self.record(lambda: self.registry.remove((cat, name)))

    def unregister(self, cat: str, name: str) -> None:
        self.registry.remove((cat, name))
        self.record(lambda: self.registry.add((cat, name)))

    def touch(self, cat: str, name: str) -> None:
        self.changed[(cat, name)] = None

    def check_entries(self, kind: str, name: str, n: int) -> None:
        if n > self.limits.max_entries:
            raise LimitExceeded(f"{kind} {name} is full (max_entries {self.limits.max_entries})")


S = TypeVar("S", bound=Struct)


class Family(Generic[S]):
    """A category's structures by name; creation and destruction keep the registry true."""

    CATEGORY = ""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.items: dict[str, S] = {}

    def new(self) -> S:
        raise NotImplementedError

    def new_for(self, name: str) -> S:
        """A new structure for `name` (families with per-name configuration override)."""
        return self.new()

    def get(self, name: str) -> S | None:
        return self.items.get(name)

    def get_or_create(self, name: str) -> S:
        s = self.items.get(name)
        if s is None:
            s = self.new_for(name)
            self.core.register(self.CATEGORY, name)
            self.items[name] = s
            self.core.record(lambda: self._drop(name))
        return s

    def _drop(self, name: str) -> None:
        s = self.items.pop(name)
        self.core.total_bytes -= s.nbytes

    def destroy(self, name: str) -> bool:
        """Remove a structure (STRUCT_DESTROY); families with cross references override."""
        s = self.items.pop(name, None)
        if s is None:
            return False
        self.core.unregister(self.CATEGORY, name)
        self.core.total_bytes -= s.nbytes

        def undo() -> None:
            self.items[name] = s
            self.core.total_bytes += s.nbytes

        self.core.record(undo)
        return True

    # Snapshots: each family turns its structures into plain CBOR values and back.
    def dump(self) -> Any:
        raise NotImplementedError

    def dump_cbor(self) -> Iterator[bytes]:
        """`cbor2.dumps(self.dump())` in pieces whose concatenation is exactly that; a family
        holding large structures overrides it to encode them a batch at a time."""
        yield cbor2.dumps(self.dump())

    def load(self, data: Any) -> None:
        raise NotImplementedError


def cbor_array_head(n: int) -> bytes:
    """The head of a definite-length CBOR array of `n` items, in the shortest form (as
    cbor2 writes it), so that a head followed by the items' encodings equals the array's."""
    if n < 24:
        return bytes((0x80 | n,))
    for info, width in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * width):
            return bytes((0x80 | info,)) + n.to_bytes(width, "big")
    raise ValueError("array too long for CBOR")


def canon(d: dict[Any, Any]) -> dict[Any, Any]:
    """A dict in key order, for snapshots: insertion order of non-semantic dicts may differ
    after an undo, and snapshots must be byte-identical whatever the history."""
    return dict(sorted(d.items()))


def encode_cursor(key: str) -> str:
    """An opaque cursor: the last key returned (pages resume strictly after it)."""
    return base64.urlsafe_b64encode(key.encode("utf-8", "surrogatepass")).decode("ascii")


def decode_cursor(cursor: str | None) -> str | None:
    if cursor is None or cursor == "":
        return None
    try:
        return base64.urlsafe_b64decode(cursor.encode("ascii")).decode("utf-8", "surrogatepass")
    except (ValueError, binascii.Error, UnicodeError):
        raise BadRequest("invalid cursor") from None


def page_sorted(
    keys: Any, cursor: str | None, limit: int, budget: int,
    accept: Callable[[str], bool],
) -> tuple[list[str], str | None]:
    """One page of `keys` (a SortedList of str) after the cursor, in order.

    Examines at most `budget` keys (O(log n + budget) work): the page may be short, and the
    returned cursor (None when the end was reached) resumes after the last key examined.
    """
    after = decode_cursor(cursor)
    start = 0 if after is None else keys.bisect_right(after)
    out: list[str] = []
    last: str | None = None
    examined = 0
    for k in keys.islice(start, start + budget):
        examined += 1
        last = k
        if accept(k):
            out.append(k)
            if len(out) >= limit:
                break
    done = start + examined >= len(keys)
    return out, (None if done or last is None else encode_cursor(last))
