"""Counters: increments retried through the client's session (client id + sequence number).

Every increment is COUNTER_ADD(+1), which answers the new value. Exactly-once retries mean:
- two acknowledged increments never answer the same value (a duplicate apply of one retried
  increment answers its first outcome again, from the replicated dedupe table);
- the final value is the acknowledged increments plus a subset of the indeterminate ones:
  acked <= final <= acked + indeterminate, and no acknowledged answer exceeds it;
- reads are monotonic in real time (a read that began after another ended sees at least as much).
"""

from __future__ import annotations

import trio

from loom.chaos.history import CheckResult, after_completed
from loom.chaos.workloads import Workload
from loom.client import AsyncClient

NAME = "chaos-counter"


class CounterWorkload(Workload):
    name = "counter"
    workers = 3

    async def worker(self, client: AsyncClient, process: str, deadline: float) -> None:
        while self.going(deadline):
            if self.rng.random() < 0.8:
                await self.run(process, "add", NAME, 1, lambda: client.counter_add(NAME, 1),
                               write=True)
            else:
                await self.run(process, "read", NAME, None, lambda: client.counter_get(NAME),
                               write=False)
            await trio.sleep(self.pace_s)

    async def final(self, client: AsyncClient) -> None:
        await self.run("final", "final", NAME, None, lambda: client.counter_get(NAME),
                       write=False)

    def check(self) -> CheckResult:
        ops = self.history.of(self.name)
        adds = [o for o in ops if o.f == "add"]
        acked = [o for o in adds if o.status == "ok"]
        info = [o for o in adds if o.status == "info"]
        anomalies: list[str] = []
        answers: dict[int, int] = {}
        for o in acked:
            answers[o.result] = answers.get(o.result, 0) + 1
        dup = sorted(v for v, c in answers.items() if c > 1)
        if dup:
            anomalies.append(f"counter: {len(dup)} values answered to two increments "
                             f"(first {dup[:5]})")
        finals = [o.result for o in ops if o.f == "final" and o.status == "ok"]
        if not finals:
            anomalies.append("counter: the final read never succeeded")
        else:
            final = finals[-1]
            if not len(acked) <= final <= len(acked) + len(info):
                anomalies.append(f"counter: final value {final} outside [{len(acked)}, "
                                 f"{len(acked) + len(info)}] (acked, acked + indeterminate)")
            if answers and max(answers) > final:
                anomalies.append(f"counter: an increment answered {max(answers)} > final {final}")
        reads = [o for o in ops if o.f == "read" and o.status == "ok"]
        for o, best in after_completed(reads):
            if o.result < best:
                anomalies.append(f"counter: read {o.result} after a completed read of {best}")
                break
        return CheckResult(self.name, len([o for o in ops if o.status != "fail"]), len(info),
                           tuple(anomalies))
