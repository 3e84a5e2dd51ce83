"""Topic reads over HTTP: server-sent events and long-poll, after TOPIC_SUBSCRIBE was allowed.

The dispatcher decides (ACL, audit) exactly as for a binary TOPIC_SUBSCRIBE; the `HttpSession`
then holds a `TopicFeed`, and this module turns it into a response.

Invariants:
- Replay from `from_seq` and registration happen in the node's one topic hub
  (node/topics.py), without yielding, so nothing published in between is missed or
  duplicated; what the topic's ring no longer holds is reported as `lost` ([first, last]
  sequence numbers), never silently skipped.
- A feed holds at most MAX_BUFFERED messages. A reader slower than the publishers overflows
  it: the long-poll answers what it has, the event stream ends after what it has, and the
  client resumes from the next sequence number (`Last-Event-ID`); the ring replays what it
  still holds, and reports the rest as lost.
- A feed is removed from the hub however its response ends (finally blocks).
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import trio

from loom.http import Request, Response, StreamingResponse
from loom.node.http_codec import json_response, one_header, reply_json
from loom.node.topics import REPLAY_LIMIT, Subscription, TopicHub
from loom.wire.errors import BadRequest, Unavailable

__all__ = ["MAX_BUFFERED", "TopicFeed", "long_poll", "sse_stream", "topic_response",
           "unless_gone"]

MAX_BUFFERED = REPLAY_LIMIT  # a resume's replay always fits
T = TypeVar("T")
MAX_WAIT_MS = 300_000


class TopicFeed:
    def __init__(self, topic: str, from_seq: int | None) -> None:
        self.topic = topic
        self.from_seq = from_seq
        self.buffer: deque[tuple[int, bytes]] = deque()
        self.lost: list[int] | None = None
        self.overflowed = False
        self.next_seq = from_seq or 0
        self._event = trio.Event()
        self._sub: Subscription | None = None

    def deliver(self, seq: int, value: bytes) -> None:
        if self.overflowed:
            return
        if len(self.buffer) >= MAX_BUFFERED:
            self.overflowed = True
        else:
            self.buffer.append((seq, value))
        self._event.set()

    def start(self, hub: TopicHub) -> None:
        """Replay from `from_seq` (if given) and listen, without yielding."""

        def lost(first: int, last: int) -> None:
            self.lost = [first, last]

        self._sub = hub.subscribe(self.topic, self.deliver, from_seq=self.from_seq, lost=lost)

    def stop(self, hub: TopicHub) -> None:
        if self._sub is not None:
            hub.unsubscribe(self._sub)
            self._sub = None

    async def wait(self) -> None:
        if not self.buffer and not self.overflowed:
            await self._event.wait()
        self._event = trio.Event()

    def take(self) -> list[dict[str, Any]]:
        out = [{"seq": seq, "value": value} for seq, value in self.buffer]
        if self.buffer:
            self.next_seq = self.buffer[-1][0] + 1
        self.buffer.clear()
        return out


async def long_poll(feed: TopicFeed, hub: TopicHub, wait_s: float) -> dict[str, Any]:
    """What the feed has, waiting up to `wait_s` for a first message."""
    try:
        if not feed.buffer and wait_s > 0:
            with trio.move_on_after(wait_s):
                await feed.wait()
        out: dict[str, Any] = {"topic": feed.topic, "messages": feed.take()}
    finally:
        feed.stop(hub)
    out["next_seq"] = feed.next_seq or None
    if feed.lost:
        out["lost"] = feed.lost
    if feed.overflowed:
        out["truncated"] = True  # more came than one answer holds: ask again from next_seq
    return out


async def sse_stream(feed: TopicFeed, hub: TopicHub, keepalive_s: float,
                     max_s: float) -> AsyncIterator[bytes]:
    """Server-sent events: `id` is the sequence number (Last-Event-ID resumes after it), a
    comment every `keepalive_s` on a quiet stream (a gone client is found at that write)."""
    try:
        if feed.lost:
            yield b"event: lost\ndata: " + reply_json({"first": feed.lost[0],
                                                       "last": feed.lost[1]}) + b"\n\n"
        with trio.move_on_after(max_s):
            while True:
                for m in feed.take():
                    yield (b"id: %d\nevent: message\ndata: " % m["seq"]
                           + reply_json({"topic": feed.topic, **m}) + b"\n\n")
                if feed.overflowed:
                    return
                with trio.move_on_after(keepalive_s) as idle:
                    await feed.wait()
                if idle.cancelled_caught:
                    yield b": keepalive\n\n"
    finally:
        feed.stop(hub)


async def topic_response(request: Request, feed: TopicFeed, hub: TopicHub,
                         keepalive_s: float, max_stream_s: float
                         ) -> Response | StreamingResponse:
    """The answer to an allowed topic read: an event stream when the client accepts one
    (resuming after `Last-Event-ID`), else a long-poll of up to `wait_ms`."""
    accept = one_header(request, "accept", quiet=True) or b""
    if b"text/event-stream" in accept:
        last = one_header(request, "last-event-id", quiet=True)
        if last is not None:
            if not last.isdigit():
                raise BadRequest("Last-Event-ID must be a sequence number")
            feed.from_seq = int(last) + 1
        feed.start(hub)
        return StreamingResponse(200, [("content-type", "text/event-stream"),
                                       ("cache-control", "no-store")],
                                 sse_stream(feed, hub, keepalive_s, max_stream_s))
    wait_ms = 0
    for k, v in request.query_params():
        if k == "wait_ms":
            if not v.isdigit() or int(v) > MAX_WAIT_MS:
                raise BadRequest(f"wait_ms must be 0..{MAX_WAIT_MS}")
            wait_ms = int(v)
    feed.start(hub)
    result = await unless_gone(request, partial(long_poll, feed, hub, wait_ms / 1000))
    return json_response(200, {"result": result})


async def unless_gone(request: Request, wait: Callable[[], Awaitable[T]]) -> T:
    """Run a waiting request, cancelled if its client closes the connection meanwhile (as
    the binary protocol cancels a closed connection's waiters): a QUEUE_POLL then takes
    nothing for a client that is gone. The answer nobody will read is a 503."""
    result: list[T] = []

    async def run(cancel: trio.CancelScope) -> None:
        result.append(await wait())
        cancel.cancel()

    async with trio.open_nursery() as n:
        n.start_soon(run, n.cancel_scope)
        await request.client_gone()
        n.cancel_scope.cancel()
    if not result:
        raise Unavailable("the client closed the connection while the request waited")
    return result[0]
