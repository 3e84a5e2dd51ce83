"""A topic subscription's receiving end (AsyncClient.subscribe)."""

from __future__ import annotations

from typing import Any

import anyio

from loom.wire.errors import LimitExceeded


class Subscription:
    """Async iterator over a topic's pushed payloads, in arrival order.

    Payloads are what the server pushes (a message with its per-topic `seq`, or a gap notice
    naming the range of sequence numbers that was lost). `last_seq` is the highest `seq` seen,
    so a consumer can subscribe again with `from_seq=last_seq + 1` after an error.
    """

    def __init__(self, topic: str, request_id: int, buffer: int) -> None:
        self.topic = topic
        self.request_id = request_id
        self.last_seq: int | None = None
        self._send, self._recv = anyio.create_memory_object_stream[Any](buffer)
        self._error: BaseException | None = None
        self._ended = False

    @property
    def ended(self) -> bool:
        """No more payloads will be added (they may still be buffered)."""
        return self._ended

    def deliver(self, payload: Any) -> None:
        """Called by the connection's reader; never blocks it."""
        if self._ended:
            return
        try:
            self._send.send_nowait(payload)
        except anyio.WouldBlock:
            self.end(LimitExceeded(
                f"subscription to {self.topic!r}: consumer too slow, buffer full "
                f"(subscribe again with from_seq={(self.last_seq or 0) + 1})"))

    def end(self, error: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = True
        self._error = error
        self._send.close()

    def close(self) -> None:
        """The consumer is done: end the subscription and drop what is buffered."""
        self.end(None)
        self._recv.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Any:
        try:
            payload = await self._recv.receive()
        except anyio.EndOfStream:
            if self._error is not None:
                raise self._error from None
            raise StopAsyncIteration from None
        if isinstance(payload, dict):
            seq = payload.get("seq")
            if isinstance(seq, int) and not isinstance(seq, bool):
                self.last_seq = seq
        return payload
