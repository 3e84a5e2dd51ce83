"""Registers: read, write and compare-and-set on a few map keys, checked for linearizability.

Each key is a register (MAP_GET / MAP_PUT / MAP_COMPARE_AND_SET on the map `chaos-reg`); every
written value is unique, so a read names the write it saw. Registers compose, so each key's
sub-history is checked on its own (loom.chaos.linear), indeterminate writes as "info" ops.
"""

from __future__ import annotations

import math
from typing import Any

import trio

from loom.chaos.history import CheckResult, Op
from loom.chaos.linear import RegOp, check_register
from loom.chaos.workloads import Workload
from loom.client import AsyncClient

MAP = "chaos-reg"
KEYS = ("r0", "r1", "r2")


class RegisterWorkload(Workload):
    name = "register"
    workers = 4

    async def worker(self, client: AsyncClient, process: str, deadline: float) -> None:
        seen: dict[str, bytes | None] = {}
        n = 0
        while self.going(deadline):
            n += 1
            key = self.rng.choice(KEYS)
            r = self.rng.random()
            if r < 0.5:
                op = await self.run(process, "read", key, None,
                                    lambda k=key: client.map_get(MAP, k), write=False)
                if op.status == "ok":
                    seen[key] = op.result
            elif r < 0.75 or seen.get(key) is None:
                v = f"{process}-{n}".encode()
                op = await self.run(process, "write", key, v,
                                    lambda k=key, v=v: client.map_put(MAP, k, v), write=True)
                if op.status == "ok":
                    seen[key] = v
            else:
                exp, v = seen[key], f"{process}-{n}".encode()
                assert exp is not None
                await self.run(process, "cas", key, (exp, v),
                               lambda k=key, e=exp, v=v: client.map_compare_and_set(MAP, k, e, v),
                               write=True)
                seen.pop(key, None)
            await trio.sleep(self.pace_s)

    async def final(self, client: AsyncClient) -> None:
        for key in KEYS:
            await self.run("final", "read", key, None,
                           lambda k=key: client.map_get(MAP, k), write=False)

    def check(self) -> CheckResult:
        ops = self.history.of(self.name)
        anomalies: list[str] = []
        notes: list[str] = []
        for key in KEYS:
            reg = [r for o in ops if o.key == key and (r := to_regop(o)) is not None]
            ok, explored = check_register(reg)
            if ok is False:
                anomalies.append(f"register {key}: {len(reg)} operations are not linearizable "
                                 f"({explored} states explored)")
            elif ok is None:
                notes.append(f"register {key}: inconclusive after {explored} states")
        return CheckResult(self.name, sum(o.status != "fail" for o in ops),
                           sum(o.status == "info" for o in ops), tuple(anomalies), tuple(notes))


def to_regop(o: Op) -> RegOp | None:
    """The checker's view of one recorded operation (None: it constrains nothing)."""
    if o.status == "fail":
        return None
    ret = o.ret if o.status == "ok" else math.inf
    if o.f == "read":
        return RegOp("read", o.result, o.call, ret) if o.status == "ok" else None
    if o.f == "write":
        return RegOp("write", o.value, o.call, ret)
    exp, new = o.value
    swapped: Any = bool(o.result) if o.status == "ok" else None
    return RegOp("cas", new, o.call, ret, expected=exp, ok=swapped)
