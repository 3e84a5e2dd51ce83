"""Fenced locks: two holders never act with the same or a decreasing fencing token.

Each process opens a session (its TTL outlives the run, so a hold ends only by unlocking),
takes the lock `chaos-lock` with LOCK_TRY_LOCK (the answer is the fencing token), acts twice on
the protected resource (appends "token:process:k" to the list `chaos-fenced`) and unlocks. A
lock answer lost in a fault is settled with LOCK_GET_OWNER; a process that cannot learn whether
it still holds the lock stops (the others then simply never get it).

The checker reads the whole list at the end: tokens never decrease along it, no token is
used by two processes, every acknowledged append is there exactly once and nothing else is;
acknowledged acquisitions answer distinct tokens, increasing in real-time order.
"""

from __future__ import annotations

import trio

from loom.chaos.history import CheckResult, after_completed
from loom.chaos.workloads import Workload
from loom.client import AsyncClient

LOCK = "chaos-lock"
FENCED = "chaos-fenced"
SESSION_TTL_MS = 3_600_000
SETTLE_TRIES = 20  # attempts to learn whether an indeterminate lock/unlock took effect
PAGE = 1000  # LIST_RANGE answers at most 1000 items
PAGES = 1000


class LockWorkload(Workload):
    name = "lock"
    workers = 3

    async def worker(self, client: AsyncClient, process: str, deadline: float) -> None:
        sid = 0
        while sid == 0 and self.going(deadline):
            op = await self.run(process, "session", LOCK, None,
                                lambda: client.session_open(ttl_ms=SESSION_TTL_MS), write=True)
            if op.status == "ok":
                sid = op.result["session_id"]
            else:
                await trio.sleep(0.2)
        while self.going(deadline):
            op = await self.run(process, "lock", LOCK, sid,
                                lambda: client.lock_try_lock(LOCK, sid), write=True)
            token, holds = (op.result, 1) if op.status == "ok" else (None, 0)
            if op.status == "info":
                settled = await self._owner(client, process, sid)
                if settled is None:
                    return
                token, holds = settled
            if token is not None:
                for k in (1, 2):
                    v = f"{token}:{process}:{k}".encode()
                    act = await self.run(process, "act", FENCED, v,
                                         lambda v=v: client.call("LIST_PUSH_RIGHT", name=FENCED,
                                                                 value=v), write=True)
                    if act.status != "ok":
                        break
                if not await self._release(client, process, sid, holds):
                    return
            await trio.sleep(self.pace_s + self.rng.random() * 0.05)

    async def _owner(self, client: AsyncClient, process: str, sid: int
                     ) -> tuple[int | None, int] | None:
        """(token, holds) if `sid` holds the lock, (None, 0) if not; None if unknowable."""
        for _ in range(SETTLE_TRIES):
            op = await self.run(process, "owner", LOCK, None,
                                lambda: client.call("LOCK_GET_OWNER", name=LOCK), write=False)
            if op.status == "ok":
                if op.result["session_id"] == sid:
                    return op.result["token"], op.result["holds"]
                return None, 0
            await trio.sleep(0.2)
        return None

    async def _release(self, client: AsyncClient, process: str, sid: int, holds: int) -> bool:
        for _ in range(SETTLE_TRIES):
            if holds <= 0:
                return True
            op = await self.run(process, "unlock", LOCK, sid,
                                lambda: client.lock_unlock(LOCK, sid), write=True)
            if op.status == "ok":
                holds = op.result
                continue
            if op.status == "fail" and op.error.startswith("Conflict"):
                return True  # not (or no longer) ours
            settled = await self._owner(client, process, sid)
            if settled is None:
                return False
            holds = settled[1]
        return holds <= 0

    async def final(self, client: AsyncClient) -> None:
        items: list[bytes] = []
        for i in range(PAGES):
            op = await self.run("final", "range", FENCED, i,
                                lambda i=i: client.call("LIST_RANGE", name=FENCED,
                                                        start=i * PAGE, stop=i * PAGE + PAGE - 1),
                                write=False)
            if op.status != "ok":
                return
            items += op.result
            if len(op.result) < PAGE:
                break
        await self.run("final", "list", FENCED, None, lambda: _value(items), write=False)

    def check(self) -> CheckResult:
        ops = self.history.of(self.name)
        anomalies: list[str] = []
        finals = [o for o in ops if o.f == "list" and o.status == "ok"]
        if not finals:
            anomalies.append("lock: the final read of the protected list never succeeded")
        else:
            anomalies += check_fenced(finals[-1].result,
                                      {o.value for o in ops if o.f == "act" and o.status == "ok"},
                                      {o.value for o in ops if o.f == "act" and o.status != "fail"})
        grants = sorted((o for o in ops if o.f == "lock" and o.status == "ok"
                         and o.result is not None), key=lambda o: o.call)
        tokens = [o.result for o in grants]
        if len(set(tokens)) != len(tokens):
            anomalies.append("lock: two acquisitions answered the same fencing token")
        for o, best in after_completed(grants):
            if o.result <= best:
                anomalies.append(f"lock: token {o.result} granted after token {best} was")
                break
        return CheckResult(self.name, sum(o.status != "fail" for o in ops),
                           sum(o.status == "info" for o in ops), tuple(anomalies))


def check_fenced(items: list[bytes], acked: set[bytes], tried: set[bytes]) -> list[str]:
    """Anomalies of the protected list: order of tokens, one process per token, no loss."""
    out: list[str] = []
    last = -1
    owner: dict[int, str] = {}
    for raw in items:
        token_s, process, _ = raw.decode().split(":")
        token = int(token_s)
        if token < last:
            out.append(f"lock: token {token} acted after token {last}")
            break
        if owner.setdefault(token, process) != process:
            out.append(f"lock: token {token} used by {owner[token]} and {process}")
            break
        last = token
    if len(set(items)) != len(items):
        out.append("lock: an action appears twice in the protected list")
    if lost := acked - set(items):
        out.append(f"lock: {len(lost)} acknowledged actions missing (e.g. {sorted(lost)[:3]})")
    if extra := set(items) - tried:
        out.append(f"lock: {len(extra)} actions never issued (e.g. {sorted(extra)[:3]})")
    return out


async def _value(v: list[bytes]) -> list[bytes]:
    return v
