"""TOPIC: per-topic sequence numbers and a bounded ring of the most recent messages.

Invariants: `next_seq` is the sequence number the next message gets (the first is 1); the ring
holds the messages with seqs [next_seq - len(ring), next_seq), at most StateLimits.topic_ring.
Subscriptions themselves live in the node; it pushes each published message (seq from the
TOPIC_PUBLISH outcome) and resumes late subscribers with `topic_since`.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from loom.state.base import Core, Family, Struct, canon

MSG_OVERHEAD = 48
TOPIC_BYTES = 200


class TopicS(Struct):
    __slots__ = ("next_seq", "ring")

    def __init__(self, ring: int) -> None:
        super().__init__()
        self.next_seq = 1
        self.ring: deque[bytes] = deque(maxlen=ring)

    def size(self) -> int:
        return len(self.ring)

    def first_seq(self) -> int:
        return self.next_seq - len(self.ring)


class TopicFamily(Family[TopicS]):
    CATEGORY = "TOPIC"

    def __init__(self, core: Core) -> None:
        super().__init__(core)

    def new(self) -> TopicS:
        return TopicS(self.core.limits.topic_ring)

    def op_TOPIC_PUBLISH(self, b: dict[str, Any]) -> dict[str, int]:
        """-> {"seq": n}: the message's per-topic sequence number (1, 2, ...)."""
        name, value = b["name"], b["value"]
        is_new = name not in self.items
        t = self.get_or_create(name)
        dropped = t.ring[0] if t.ring and len(t.ring) == t.ring.maxlen else None
        delta = len(value) + MSG_OVERHEAD + (TOPIC_BYTES if is_new else 0)
        if dropped is not None:
            delta -= len(dropped) + MSG_OVERHEAD
        self.core.charge(t, delta)
        seq = t.next_seq
        t.ring.append(value)
        t.next_seq += 1
        self.core.touch(self.CATEGORY, name)

        def undo() -> None:
            t.ring.pop()
            if dropped is not None:
                t.ring.appendleft(dropped)
            t.next_seq -= 1
            self.core.charge(t, -delta, check=False)

        self.core.record(undo)
        return {"seq": seq}

    def since(self, name: str, from_seq: int, limit: int) -> tuple[list[tuple[int, bytes]], int]:
        """Messages with seq >= from_seq (at most `limit`, oldest first) as (seq, value), and
        the first seq still available (the next seq when the ring is empty). Messages in
        [from_seq, first_available) were lost to the ring's bound."""
        t = self.items.get(name)
        if t is None:
            return [], 1
        first = t.first_seq()
        start = max(from_seq, first)
        out = [(s, t.ring[s - first]) for s in range(start, min(t.next_seq, start + limit))]
        return out, first

    def dump(self) -> Any:
        return [[n, t.next_seq, list(t.ring), canon(t.ops)] for n, t in sorted(self.items.items())]

    def load(self, data: Any) -> None:
        for n, next_seq, ring, ops in data:
            t = self.new()
            t.next_seq, t.ops = next_seq, ops
            t.ring.extend(ring)
            t.nbytes = TOPIC_BYTES + sum(len(v) + MSG_OVERHEAD for v in ring)
            self.core.total_bytes += t.nbytes
            self.items[n] = t
