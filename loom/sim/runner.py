"""Run seeds, stop at the first failure, and say how to reproduce it.

Any exception out of a simulation is a failure: a `Violation` of an invariant, or the core
itself refusing to continue (a `LogError` from a truncated committed entry, for instance).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass

from loom.sim.cluster import Simulation


@dataclass(frozen=True, slots=True)
class Failure:
    seed: int
    mutant: str | None
    message: str
    trace: str
    disk: str = "mix"

    def command(self) -> str:
        mut = f" --mutant {self.mutant}" if self.mutant else ""
        disk = f" --disk {self.disk}" if self.disk != "mix" else ""
        return f"python -m loom.sim --seeds 1 --first-seed {self.seed}{mut}{disk} --trace"


def run_seed(seed: int, mutant: str | None = None, disk: str = "mix") -> Simulation:
    sim = Simulation(seed, mutant=mutant, disk=disk)
    sim.run()
    return sim


def run_one(seed: int, mutant: str | None = None, disk: str = "mix") -> Failure | None:
    sim = Simulation(seed, mutant=mutant, disk=disk)
    try:
        sim.run()
    except Exception as exc:
        msg = f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, AssertionError):
            msg += "\n" + "".join(traceback.format_exception(exc)[-4:])
        return Failure(seed, mutant, msg, sim.format_trace(), disk)
    return None


def run_seeds(first: int, count: int, mutant: str | None = None,
              should_stop: Callable[[], bool] | None = None,
              disk: str = "mix") -> tuple[int, Failure | None]:
    """Run seeds first..first+count-1. Returns (seeds run, first failure or None).
    `disk`: "sim" (the simulated disk), "wal" (loom.storage over FaultFS) or "mix" (every
    fourth seed on the WAL)."""
    for k in range(count):
        if should_stop is not None and should_stop():
            return k, None
        fail = run_one(first + k, mutant, disk)
        if fail is not None:
            return k + 1, fail
    return count, None
