"""Sets: every acknowledged add is present at the end, and nothing else but attempted adds.

Processes add unique members (SET_ADD) and sometimes ask SET_CONTAINS for one of their own
acknowledged members (which must answer true: members are never removed). The final phase
reads every page of SET_MEMBERS.
"""

from __future__ import annotations

from typing import Any

import trio

from loom.chaos.history import CheckResult
from loom.chaos.workloads import Workload
from loom.client import AsyncClient

NAME = "chaos-set"
PAGES = 10_000  # final read: at most this many pages


class SetWorkload(Workload):
    name = "set"
    workers = 2

    async def worker(self, client: AsyncClient, process: str, deadline: float) -> None:
        mine: list[str] = []
        n = 0
        while self.going(deadline):
            n += 1
            if mine and self.rng.random() < 0.2:
                m = self.rng.choice(mine)
                await self.run(process, "contains", m, None,
                               lambda m=m: client.call("SET_CONTAINS", name=NAME, member=m),
                               write=False)
            else:
                m = f"{process}-{n}"
                op = await self.run(process, "add", m, None,
                                    lambda m=m: client.call("SET_ADD", name=NAME, member=m),
                                    write=True)
                if op.status == "ok":
                    mine.append(m)
            await trio.sleep(self.pace_s)

    async def final(self, client: AsyncClient) -> None:
        members: list[str] = []
        cursor: str | None = None
        for _ in range(PAGES):
            body: dict[str, Any] = {"name": NAME, "cursor": cursor}
            op = await self.run("final", "page", NAME, cursor,
                                lambda b=body: client.call("SET_MEMBERS", **b), write=False)
            if op.status != "ok":
                return
            members += op.result["members"]
            cursor = op.result["cursor"]
            if cursor is None:
                await self.run("final", "members", NAME, None,
                               lambda m=members: _value(m), write=False)
                return

    def check(self) -> CheckResult:
        ops = self.history.of(self.name)
        acked = {o.key for o in ops if o.f == "add" and o.status == "ok"}
        tried = {o.key for o in ops if o.f == "add" and o.status != "fail"}
        anomalies = []
        finals = [o for o in ops if o.f == "members" and o.status == "ok"]
        if not finals:
            anomalies.append("set: the final read never succeeded")
        else:
            present = set(finals[-1].result)
            if lost := acked - present:
                anomalies.append(f"set: {len(lost)} acknowledged adds missing "
                                 f"(e.g. {sorted(lost)[:3]})")
            if extra := present - tried:
                anomalies.append(f"set: {len(extra)} members never added (e.g. "
                                 f"{sorted(extra)[:3]})")
        no = [o.key for o in ops if o.f == "contains" and o.status == "ok" and o.result is not True]
        if no:
            anomalies.append(f"set: SET_CONTAINS answered false for acknowledged {no[:3]}")
        return CheckResult(self.name, sum(o.status != "fail" for o in ops),
                           sum(o.status == "info" for o in ops), tuple(anomalies))


async def _value(v: list[str]) -> list[str]:
    return v
