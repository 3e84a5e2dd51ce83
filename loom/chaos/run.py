"""One chaos run: a fresh cluster, workloads and nemeses for `seconds`, heal, converge, check.

Every run is seeded: the cluster's size (3 or 5), `raft.lease_reads` on or off, the fault
schedule and the workloads' choices all come from the seed (timing is the real machine's, so
a repeated seed repeats the schedule, not the exact interleaving). Whatever happens, the
`finally` stops every process the run started. A run that found an anomaly (or failed) keeps
its directory: history.jsonl, each node's log and data directory.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from loom.chaos.cluster import ChaosCluster, ConvergeError
from loom.chaos.history import CheckResult, History
from loom.chaos.nemesis import FaultLog, Nemesis, all_nemeses
from loom.chaos.workloads import Workload, all_workloads
from loom.client import open_client

START_S = 60.0  # the fresh cluster elects a leader and converges within this
CONVERGE_S = 90.0  # after the final heal
FINAL_S = 60.0  # the workloads' final reads
CLIENT_TIMEOUT_S = 5.0  # each call, retries included
INJECT_S = 45.0  # one injection (a rolling restart of 5 nodes is the longest)
GAP_S = (0.5, 2.5)  # quiet time before each fault
HOLD_S = (1.0, 4.0)  # how long a fault stays in force


@dataclass
class RunReport:
    seed: int
    size: int
    lease_reads: bool
    seconds: float
    dir: Path
    network: str = ""  # which partition network, and why (cluster.network_note)
    faults: Counter[str] = field(default_factory=Counter)
    results: list[CheckResult] = field(default_factory=list)
    recovery_s: float = 0.0  # the slowest: from a heal to the next acknowledged write
    converge_s: float = 0.0  # from the final heal to convergence
    error: str = ""  # the run could not complete (the harness's or the cluster's failure)
    invariants: list[str] = field(default_factory=list)  # broken, as nemeses checked them
    mutant: str = ""

    @property
    def anomalies(self) -> list[str]:
        out = [a for r in self.results for a in r.anomalies] + self.invariants
        return [*out, self.error] if self.error else out


async def run_one(seed: int, seconds: float, base: Path, nemeses: Sequence[str],
                  workloads: Sequence[str], *, keep: bool = False,
                  network: str = "auto", mutant: str = "") -> RunReport:
    rng = random.Random(seed)
    size = rng.choice((3, 5))
    root = base / f"run-{seed}"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    report = RunReport(seed, size, rng.random() < 0.5, seconds, root, mutant=mutant)
    cluster = ChaosCluster(root, size, random.Random(rng.random()), report.lease_reads,
                           network, mutant)
    report.network = cluster.network_note
    history = History()
    try:
        async with trio.open_nursery() as nursery:
            try:
                await _run(report, cluster, history, rng, nemeses, workloads, nursery)
            except ConvergeError:
                with trio.move_on_after(30):
                    (root / "stats.json").write_text(
                        json.dumps(await cluster.diagnose(), indent=1, default=repr),
                        encoding="utf-8")
                raise
            finally:
                nursery.cancel_scope.cancel()  # the proxies, if any
    except Exception as e:  # the run could not complete: kept, reported, never hidden
        leaf = _leaf(e)
        report.error = f"{leaf}" if isinstance(leaf, ConvergeError) else \
            f"{type(leaf).__name__}: {leaf}"
        (root / "error.txt").write_text("".join(traceback.format_exception(e)),
                                        encoding="utf-8")
    finally:
        await cluster.aclose()
    exits = cluster.check_exits()
    report.error = "; ".join(x for x in (report.error, *exits) if x)
    history.save(root / "history.jsonl")
    if not report.anomalies and not keep:
        shutil.rmtree(root, ignore_errors=True)
    return report


async def _run(report: RunReport, cluster: ChaosCluster, history: History, rng: random.Random,
               nemeses: Sequence[str], workloads: Sequence[str], nursery: trio.Nursery) -> None:
    await cluster.setup(nursery)
    await cluster.wait_converged(START_S)
    wls: list[Workload] = [all_workloads()[w](random.Random(rng.random()), history)
                           for w in workloads]
    nems: list[Nemesis] = [all_nemeses()[n](cluster, random.Random(rng.random()))
                           for n in nemeses]
    for nem in nems:  # the same list: what a nemesis finds is reported even if the run fails
        nem.anomalies = report.invariants
    faults = FaultLog()
    report.faults = faults.kinds  # counted as they happen, also when the run fails later
    async with open_client(cluster.endpoints, timeout=START_S, **cluster.client_kwargs()) as c:
        for w in wls:
            await w.setup(c)
    deadline = trio.current_time() + report.seconds
    lock = trio.Lock()
    async with trio.open_nursery() as n:
        for w in wls:
            for i in range(w.workers):
                n.start_soon(_worker, cluster, w, f"{w.name}-{i}", deadline)
        for nem in nems:
            n.start_soon(_schedule, nem, deadline, lock, faults)
    healed = trio.current_time()
    for nem in nems:
        await nem.heal()
        faults.kinds.update(nem.outcomes)
    cluster.heal_network()
    for m in cluster.members:
        cluster.resume(m)
        await cluster.start(m)
    faults.heals.append(("final", healed))
    await cluster.wait_converged(CONVERGE_S)
    report.converge_s = trio.current_time() - healed
    with trio.fail_after(FINAL_S):
        async with open_client(cluster.endpoints, timeout=CLIENT_TIMEOUT_S * 4,
                               **cluster.client_kwargs()) as c:
            for w in wls:
                await w.final(c)
    report.recovery_s = _slowest_recovery(history, faults.heals)
    report.results = [w.check() for w in wls]


async def _worker(cluster: ChaosCluster, w: Workload, process: str, deadline: float) -> None:
    async with open_client(cluster.endpoints, timeout=CLIENT_TIMEOUT_S,
                           client_id=f"chaos-{process}-{random.getrandbits(32):08x}",
                           **cluster.client_kwargs()) as c:
        await w.worker(c, process, deadline)


async def _schedule(nem: Nemesis, deadline: float, lock: trio.Lock, faults: FaultLog) -> None:
    rng = nem.rng
    for _ in range(10_000):
        await trio.sleep_until(min(deadline, trio.current_time() + rng.uniform(*GAP_S)))
        if trio.current_time() >= deadline - 1.0:
            return
        async with lock if nem.on_processes else contextlib.nullcontext():
            kind = None
            with trio.move_on_after(INJECT_S):
                kind = await nem.inject()
            if kind is not None:
                faults.kinds[kind] += 1
                await trio.sleep_until(min(deadline, trio.current_time() + rng.uniform(*HOLD_S)))
            await nem.heal()
            if kind is not None:
                faults.heals.append((kind, trio.current_time()))


def _slowest_recovery(history: History, heals: list[tuple[str, float]]) -> float:
    """The longest time from a heal to the next acknowledged write (of any workload)."""
    acks = sorted(o.ret for o in history.ops if o.status == "ok" and o.ret != math.inf
                  and o.process != "final" and o.f not in ("read", "deliver", "owner"))
    final_acks = sorted(o.ret for o in history.ops if o.status == "ok" and o.process == "final")
    worst = 0.0
    for _, t in heals:
        nxt = next((a for a in acks if a > t), None)
        if nxt is None:
            nxt = next((a for a in final_acks if a > t), None)
        if nxt is not None:
            worst = max(worst, nxt - t)
    return worst


def _leaf(e: BaseException) -> BaseException:
    """The first leaf of an exception group (the group itself when it has several)."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e
