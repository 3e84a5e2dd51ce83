"""Disk faults through the node's test-only storage hook (loom/node/testhooks.py): a member is
restarted on its data with every fsync slowed by 5-50 ms, or with fsync failing from the Nth
call on. A node whose fsync fails must stop (the storage cannot promise durability any more)
rather than acknowledge what it could not make durable: its exit is expected and counted as
`disk-fail-stopped`; whether it lied is what the workloads' checkers see. Healing restarts it
with a healthy disk. `PowerLossNemesis` ("power") cuts the power of a majority or of all.
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any

import trio

from loom.chaos.cluster import STATUS_ERRORS, ChaosCluster
from loom.chaos.nemesis import Nemesis
from loom.client import open_client
from loom.node.testhooks import INJECTED
from loom.wire.errors import Timeout

ARM_FILE = "fsync-fail.armed"  # in the node's directory: its syncs fail once this exists
ANSWER_S = 15.0  # a restarted node answers within this (else the failure is armed anyway)
NUDGE_MAP = "chaos-disk"  # no workload reads it
NUDGE_S = 2.0
STOP_S = 10.0  # a node whose syncs fail, taking writes, stops within this


class DiskNemesis(Nemesis):
    name = "disk"

    def __init__(self, cluster: ChaosCluster, rng: random.Random) -> None:
        super().__init__(cluster, rng)
        self.hooked: list[str] = []
        self.failing = False
        self.log_from: dict[str, int] = {}  # a failing node: its log's size when it started

    async def inject(self) -> str | None:
        live = self.cluster.live()
        if not live:
            return None
        target = self.rng.choice(live)
        self.failing = self.rng.random() < 0.5
        n = self.cluster.nodes[target]
        armed = n.dir / ARM_FILE
        armed.unlink(missing_ok=True)
        if self.failing:
            hooks: dict[str, Any] = {"fsync_fail_file": str(armed)}
        else:
            hooks = {"fsync_delay_ms": self.rng.randint(5, 50)}
        await self.cluster.kill(target)
        self.log_from[target] = n.log.stat().st_size if n.log.exists() else 0
        await self.cluster.start(target, hooks)
        self.hooked.append(target)
        if not self.failing:
            return "disk-fsync-slow"
        self.cluster.expect_exit.add(target)  # until its next start
        # Armed only once the node answers: it has recovered its log and is taking the
        # workloads' appends, so its next sync fails (not at an uncertain count of syncs that a
        # restarted node under load may not reach within the hold).
        with trio.move_on_after(ANSWER_S):
            for _ in range(10_000):
                if not n.running or await self.cluster.status(target) is not None:
                    break
                await trio.sleep(0.1)
        armed.touch()
        return "disk-fsync-fail"

    async def heal(self) -> None:
        for nid in self.hooked:
            n = self.cluster.nodes[nid]
            if self.failing:
                await self._check_stopped(nid)
            if nid in self.cluster.members:
                await self.cluster.kill(nid)
                await self.cluster.start(nid)
            (n.dir / ARM_FILE).unlink(missing_ok=True)
        self.hooked.clear()

    async def _check_stopped(self, nid: str) -> None:
        """Wait (bounded) for the node whose syncs fail to stop; count the failures its log
        shows injected. It must exit with an error, never go on serving, never exit 0."""
        n = self.cluster.nodes[nid]
        proc = n.proc
        assert proc is not None
        errors = (Timeout, trio.TooSlowError, *STATUS_ERRORS)
        with trio.move_on_after(STOP_S):
            # writes of our own, replicated to (and synced by) every member: the node syncs
            # even when the workloads are quiet (after the run's end)
            with contextlib.suppress(*errors):
                async with open_client(self.cluster.endpoints, timeout=NUDGE_S,
                                       connect_timeout=NUDGE_S,
                                       **self.cluster.client_kwargs()) as c:
                    for i in range(10_000):
                        if proc.returncode is not None:
                            break
                        with contextlib.suppress(*errors), trio.fail_after(NUDGE_S):
                            await c.call_body("MAP_PUT", {"name": NUDGE_MAP, "key": "k",
                                                          "value": i})
                        await trio.sleep(0.2)
            for _ in range(10_000):  # without a client: only wait
                if proc.returncode is not None:
                    break
                await trio.sleep(0.2)
        injected = _count_since(n.log, self.log_from.get(nid, 0), INJECTED)
        self.outcomes["disk-fsync-fail-injected"] += injected
        code = proc.returncode
        if code is None:
            self.outcomes["disk-fail-not-reached"] += 1
        elif code == 1 and injected:
            self.outcomes["disk-fail-stopped"] += 1
        else:
            self.anomalies.append(f"disk: {nid} with failing fsyncs exited with code {code} "
                                  f"after {injected} injected failure(s); expected 1 after one")


def _count_since(path: Path, offset: int, text: str) -> int:
    """How many times `text` occurs in the file at `path` from byte `offset` on."""
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace").count(text)


class PowerLossNemesis(Nemesis):
    """Power loss: a majority of the members, or all of them, are restarted with the node's
    `power_loss` storage hook (what a node writes stays in its memory until it is fsynced), run
    under the workloads for the hold time, then lose power together: SIGKILLed at once, so each
    keeps on disk exactly what it fsynced. Healing starts them again with a healthy disk.
    Every acknowledged write was fsynced by a majority before it was acknowledged, so nothing
    acknowledged may be lost; a node that acknowledges before its fsync (the `ack_before_fsync`
    mutant) loses acknowledged writes here and the workloads' checkers see it."""

    name = "power"

    def __init__(self, cluster: ChaosCluster, rng: random.Random) -> None:
        super().__init__(cluster, rng)
        self.hooked: list[str] = []

    async def inject(self) -> str | None:
        members = list(self.cluster.members)
        live = self.cluster.live()
        if len(live) < len(members):
            return None  # a cut of every member only means something if they all run
        every = self.rng.random() < 0.5
        targets = members if every else self.rng.sample(members, len(members) // 2 + 1)
        for nid in targets:
            await self.cluster.kill(nid)
            await self.cluster.start(nid, {"power_loss": True})
        self.hooked = targets
        return "power-loss-all" if every else "power-loss-majority"

    async def heal(self) -> None:
        if not self.hooked:
            return
        await self.cluster.kill_all(self.hooked)
        for nid in self.hooked:
            if nid in self.cluster.members:
                await self.cluster.start(nid)
        self.hooked = []
