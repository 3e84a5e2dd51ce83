"""Nemeses: faults injected into a running cluster on a seeded random schedule.

A nemesis `inject()`s one fault (answering its kind, e.g. "kill-leader", counted in the run's
report, or None when nothing fitted) and `heal()`s it; `heal_all()` at the end of a run undoes
whatever is still in force. Nemeses that act on processes (kill, pause, membership, rolling
restarts) take the run's process lock, so two of them never pick the same process at once;
partitions act on the network only and overlap freely with them.
"""

from __future__ import annotations

import random
from collections import Counter

from loom.chaos.cluster import ChaosCluster


class Nemesis:
    name = ""
    on_processes = True  # takes the process lock while a fault is in force

    def __init__(self, cluster: ChaosCluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.outcomes: Counter[str] = Counter()  # what faults led to, added to the report
        self.anomalies: list[str] = []  # invariants this nemesis checks itself, broken

    async def inject(self) -> str | None:
        raise NotImplementedError

    async def heal(self) -> None:
        """Undo the fault in force (if any)."""


class FaultLog:
    """Faults injected, by kind, with the time each was healed (for recovery times)."""

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()
        self.heals: list[tuple[str, float]] = []


def all_nemeses() -> dict[str, type[Nemesis]]:
    from loom.chaos.nemesis.clock import ClockNemesis
    from loom.chaos.nemesis.disk import DiskNemesis, PowerLossNemesis
    from loom.chaos.nemesis.impostor import ImpostorNemesis
    from loom.chaos.nemesis.kill import KillNemesis
    from loom.chaos.nemesis.membership import MembershipNemesis
    from loom.chaos.nemesis.partition import PartitionNemesis
    from loom.chaos.nemesis.pause import PauseNemesis
    from loom.chaos.nemesis.rejoin import RejoinNemesis
    from loom.chaos.nemesis.rolling import RollingRestartNemesis

    return {n.name: n for n in (KillNemesis, PauseNemesis, PartitionNemesis, MembershipNemesis,
                                RollingRestartNemesis, ClockNemesis, DiskNemesis,
                                PowerLossNemesis, RejoinNemesis, ImpostorNemesis)}
