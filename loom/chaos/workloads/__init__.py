"""Workloads: each issues operations through the project's client and checks its history.

A workload has `workers` concurrent processes (one client each, its own client id, so retries
are deduplicated per process), a `final` phase run after the cluster healed and converged
(reads that settle what the history left open), and a `check` that answers a CheckResult.
Every loop is bounded by the run's deadline and by the history's size limit.
"""

from __future__ import annotations

import random
from typing import Any

import trio

from loom.chaos.history import CheckResult, History
from loom.client import AsyncClient


class Workload:
    name = ""
    workers = 2
    pace_s = 0.01  # pause between one process's operations (the machine is shared)

    def __init__(self, rng: random.Random, history: History) -> None:
        self.rng = rng
        self.history = history

    async def setup(self, client: AsyncClient) -> None:
        """Before the nemeses start (the cluster is healthy)."""

    async def worker(self, client: AsyncClient, process: str, deadline: float) -> None:
        raise NotImplementedError

    async def final(self, client: AsyncClient) -> None:
        """After heal and convergence: read what the checker needs."""

    def check(self) -> CheckResult:
        raise NotImplementedError

    async def run(self, process: str, f: str, key: str, value: Any, coro: Any, *,
                  write: bool) -> Any:
        return await self.history.run(self.name, process, f, key, value, coro, write=write)

    def going(self, deadline: float) -> bool:
        return trio.current_time() < deadline and not self.history.full


def all_workloads() -> dict[str, type[Workload]]:
    from loom.chaos.workloads.counter import CounterWorkload
    from loom.chaos.workloads.lock import LockWorkload
    from loom.chaos.workloads.queue import QueueWorkload
    from loom.chaos.workloads.register import RegisterWorkload
    from loom.chaos.workloads.sets import SetWorkload
    from loom.chaos.workloads.topic import TopicWorkload

    return {w.name: w for w in (RegisterWorkload, CounterWorkload, QueueWorkload, SetWorkload,
                                LockWorkload, TopicWorkload)}
