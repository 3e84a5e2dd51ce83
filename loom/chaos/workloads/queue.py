"""Queues: every acknowledged push is polled exactly once, none twice, none invented.

Processes push unique values (QUEUE_PUSH) and poll (QUEUE_POLL without waiting); the final
phase drains what is left. An indeterminate poll may have taken an item the history never sees,
so acknowledged pushes missing at the end are an anomaly only beyond the number of
indeterminate polls (and are reported either way).
"""

from __future__ import annotations

import trio

from loom.chaos.history import CheckResult
from loom.chaos.workloads import Workload
from loom.client import AsyncClient

NAME = "chaos-queue"
DRAIN_ROUNDS = 1000  # final drain: at most this many QUEUE_DRAIN calls of up to 1000 items


class QueueWorkload(Workload):
    name = "queue"
    workers = 4

    async def worker(self, client: AsyncClient, process: str, deadline: float) -> None:
        n = 0
        pusher = process.endswith(("0", "2"))
        while self.going(deadline):
            n += 1
            if pusher or self.rng.random() < 0.3:
                v = f"{process}-{n}".encode()
                await self.run(process, "push", NAME, v,
                               lambda v=v: client.queue_push(NAME, v), write=True)
            else:
                await self.run(process, "poll", NAME, None, lambda: client.queue_poll(NAME),
                               write=True)
            await trio.sleep(self.pace_s)

    async def final(self, client: AsyncClient) -> None:
        for _ in range(DRAIN_ROUNDS):
            op = await self.run("final", "drain", NAME, None,
                                lambda: client.queue_drain(NAME, max_items=1000), write=True)
            if op.status != "ok" or not op.result:
                break

    def check(self) -> CheckResult:
        ops = self.history.of(self.name)
        pushed_ok = {o.value for o in ops if o.f == "push" and o.status == "ok"}
        pushed_any = {o.value for o in ops if o.f == "push" and o.status != "fail"}
        taken: list[bytes] = []
        for o in ops:
            if o.status != "ok":
                continue
            if o.f == "poll" and o.result is not None:
                taken.append(o.result)
            elif o.f == "drain":
                taken += list(o.result)
        anomalies: list[str] = []
        notes: list[str] = []
        counts: dict[bytes, int] = {}
        for v in taken:
            counts[v] = counts.get(v, 0) + 1
        twice = [v for v, c in counts.items() if c > 1]
        if twice:
            anomalies.append(f"queue: {len(twice)} items taken twice (e.g. {twice[:3]})")
        invented = [v for v in counts if v not in pushed_any]
        if invented:
            anomalies.append(f"queue: {len(invented)} items never pushed (e.g. {invented[:3]})")
        drained = any(o.f == "drain" and o.status == "ok" and not o.result for o in ops)
        if not drained:
            anomalies.append("queue: the final drain never reached an empty queue")
        missing = pushed_ok - counts.keys()
        info_polls = sum(o.f in ("poll", "drain") and o.status == "info" for o in ops)
        if missing:
            msg = (f"queue: {len(missing)} acknowledged pushes never taken, "
                   f"{info_polls} indeterminate polls")
            (anomalies if len(missing) > info_polls else notes).append(msg)
        return CheckResult(self.name, sum(o.status != "fail" for o in ops),
                           sum(o.status == "info" for o in ops), tuple(anomalies), tuple(notes))
