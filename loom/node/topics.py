"""The node's topic subscribers: one hub, keyed by topic, the only owner of who hears what.

A TOPIC_PUBLISH applied by the log reaches exactly the subscribers of its topic (a dict
lookup), not every subscriber of every topic. Delivery is a synchronous call in the log
driver's turn, so a subscriber's `deliver` must never wait: connections queue the push without
waiting and record what they had to drop as a lost range (connection.py).

Resuming (`from_seq`): the replay from the state machine's ring and the registration happen in
one call without yielding, so no message published in between can be missed or delivered
twice; what the ring no longer holds is reported through `lost(first, last)`.

Never below `from_seq`, never backwards: each subscription keeps the lowest sequence number it
may still receive (`next_seq`), and the hub skips anything under it. A node behind the topic
registers a resuming subscriber before it has applied `from_seq`; the messages it then applies
below `from_seq` were already seen by that consumer and are not pushed. Both doors (binary
subscriptions and the HTTP feeds) deliver only through here, so this is the one place the rule
lives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loom.wire.errors import Status

Deliver = Callable[[int, bytes], None]  # (seq, value)
REPLAY_LIMIT = 1024  # messages replayed to a resuming subscriber (the ring holds fewer)


@dataclass(frozen=True, slots=True)
class TopicStatistics:
    """topics: topics with at least one subscriber here; subscriptions: across them;
    published: messages applied since start; delivered: calls to a subscriber's deliver."""

    topics: int
    subscriptions: int
    published: int
    delivered: int


class Subscription:
    __slots__ = ("deliver", "next_seq", "topic")

    def __init__(self, topic: str, deliver: Deliver, next_seq: int) -> None:
        self.topic = topic
        self.deliver = deliver
        self.next_seq = next_seq  # invariant: nothing below this is ever delivered again

    def push(self, seq: int, value: bytes) -> bool:
        """Deliver `seq` unless it is below what this subscriber may still receive."""
        if seq < self.next_seq:
            return False
        self.next_seq = seq + 1
        self.deliver(seq, value)
        return True


class TopicHub:
    def __init__(self, state: Callable[[], Any]) -> None:
        self._state = state  # the state machine in force (its ring serves resumes)
        self._subs: dict[str, dict[Subscription, None]] = {}  # topic -> subscriptions, in order
        self._published = 0
        self._delivered = 0

    def subscribe(self, topic: str, deliver: Deliver, *, from_seq: int | None,
                  lost: Callable[[int, int], None]) -> Subscription:
        sub = Subscription(topic, deliver, max(from_seq or 0, 0))
        if from_seq is not None:
            msgs, first = self._state().topic_since(topic, from_seq, REPLAY_LIMIT)
            if max(from_seq, 1) < first:
                lost(max(from_seq, 1), first - 1)
            for seq, value in msgs:
                if sub.push(seq, value):
                    self._delivered += 1
        self._subs.setdefault(topic, {})[sub] = None
        return sub

    def unsubscribe(self, sub: Subscription) -> bool:
        subs = self._subs.get(sub.topic)
        if subs is None or sub not in subs:
            return False
        del subs[sub]
        if not subs:
            del self._subs[sub.topic]
        return True

    def publish(self, topic: str, seq: int, value: bytes) -> None:
        self._published += 1
        subs = self._subs.get(topic)
        if not subs:
            return
        for sub in list(subs):  # a deliver may unsubscribe (its connection closing)
            if sub.push(seq, value):
                self._delivered += 1

    def on_applied(self, applied: Any) -> None:
        """The log driver's apply callback: fan out a successful TOPIC_PUBLISH."""
        if applied.cmd.op == "TOPIC_PUBLISH" and applied.outcome.status is Status.OK:
            body = applied.cmd.body
            self.publish(body["name"], applied.outcome.value["seq"], body["value"])

    def statistics(self) -> TopicStatistics:
        return TopicStatistics(topics=len(self._subs),
                               subscriptions=sum(len(s) for s in self._subs.values()),
                               published=self._published, delivered=self._delivered)
