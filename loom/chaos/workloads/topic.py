"""Topics: per subscriber, sequence numbers strictly increase; gaps are reported as loss.

Publishers publish unique values (TOPIC_PUBLISH answers the message's sequence number);
subscribers follow the topic from its first message and, when a subscription ends (its node
was killed, paused or cut off), subscribe again from the last sequence number seen plus one.
The checker: within each subscriber's stream sequence numbers strictly increase; a delivered
message carries the value its publisher was answered for that number (and every subscriber sees
the same one); nothing never published is delivered; two acknowledged publishes never share a
number. Sequence numbers skipped in a stream, or named in a push's `lost` range, are loss: a
note, not an anomaly (a subscriber is fed from its node's memory, which a restart empties).
"""

from __future__ import annotations

from typing import Any

import trio

from loom.chaos.history import CheckResult
from loom.chaos.workloads import Workload
from loom.client import AsyncClient
from loom.client.errors import ClientError
from loom.wire.errors import LoomError

NAME = "chaos-topic"
RESUBSCRIBE_S = 0.2


class TopicWorkload(Workload):
    name = "topic"
    workers = 4

    async def worker(self, client: AsyncClient, process: str, deadline: float) -> None:
        if process.endswith(("0", "1")):
            await self._publish(client, process, deadline)
        else:
            await self._subscribe(client, process, deadline)

    async def _publish(self, client: AsyncClient, process: str, deadline: float) -> None:
        n = 0
        while self.going(deadline):
            n += 1
            v = f"{process}-{n}".encode()
            await self.run(process, "publish", NAME, v,
                           lambda v=v: client.topic_publish(NAME, v), write=True)
            await trio.sleep(self.pace_s * 2)

    async def _subscribe(self, client: AsyncClient, process: str, deadline: float) -> None:
        last = 0
        with trio.move_on_at(deadline + 2.0):  # a little past the publishers: the tail arrives
            while not self.history.full:
                try:
                    async with client.subscribe(NAME, from_seq=last + 1) as sub:
                        async for msg in sub:
                            self.history.record(self.name, process, "deliver", NAME, None,
                                                (msg.get("seq"), msg.get("value"),
                                                 msg.get("lost")))
                            if isinstance(msg.get("seq"), int):
                                last = max(last, msg["seq"])
                except (ClientError, LoomError, trio.TooSlowError):
                    pass
                await trio.sleep(RESUBSCRIBE_S)

    def check(self) -> CheckResult:
        ops = self.history.of(self.name)
        pubs = [o for o in ops if o.f == "publish"]
        acked: dict[int, Any] = {}
        anomalies: list[str] = []
        for o in pubs:
            if o.status == "ok":
                seq = o.result["seq"]
                if seq in acked:
                    anomalies.append(f"topic: two publishes answered seq {seq}")
                acked[seq] = o.value
        published = {o.value for o in pubs if o.status != "fail"}
        seen: dict[int, Any] = {}
        lost = 0
        streams: dict[str, int] = {}
        for o in ops:
            if o.f != "deliver":
                continue
            seq, value, _ = o.result  # a push's `lost` range also shows as a skip here
            prev = streams.get(o.process, 0)
            if seq <= prev:
                anomalies.append(f"topic: {o.process} got seq {seq} after {prev}")
            elif seq > prev + 1:
                lost += seq - prev - 1
            streams[o.process] = max(prev, seq)
            if value not in published:
                anomalies.append(f"topic: {o.process} got a message never published at {seq}")
            if seq in acked and acked[seq] != value:
                anomalies.append(f"topic: seq {seq} delivered as {value!r}, published as "
                                 f"{acked[seq]!r}")
            if seen.setdefault(seq, value) != value:
                anomalies.append(f"topic: subscribers disagree on seq {seq}")
        notes = (f"topic: {lost} messages lost to subscribers",) if lost else ()
        return CheckResult(self.name, sum(o.status != "fail" for o in ops),
                           sum(o.status == "info" for o in ops), tuple(anomalies[:20]), notes)
