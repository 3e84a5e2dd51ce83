"""The simulator: determinism, the CI slice of seeds, and the mutation check."""

from __future__ import annotations

import random

import pytest

from loom.raft.config import MUTANTS
from loom.raft.ready import Snapshot
from loom.raft.types import Entry, HardState, SnapshotMeta
from loom.sim.__main__ import main
from loom.sim.disk import SimDisk
from loom.sim.runner import run_one, run_seed, run_seeds

CI_SEEDS = 2000
# seeds needed to catch each mutant are measured, not guessed; the CI budget is the slice
MUTANT_BUDGET = CI_SEEDS


def test_same_seed_same_run() -> None:
    a, b = run_seed(11), run_seed(11)
    assert a.stats == b.stats and a.history == b.history and a.steps == b.steps
    assert a.format_trace() == b.format_trace()
    assert run_seed(12).history != a.history


def test_ci_slice() -> None:
    ran, fail = run_seeds(0, CI_SEEDS)
    assert fail is None, f"{fail.message}\n{fail.trace}\nreproduce: {fail.command()}"
    assert ran == CI_SEEDS


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_mutant_is_caught(mutant: str) -> None:
    ran, fail = run_seeds(0, MUTANT_BUDGET, mutant)
    assert fail is not None, f"mutant {mutant} survived {ran} seeds"
    # the failure reproduces exactly from its seed
    again = run_one(fail.seed, mutant)
    assert again is not None and again.message == fail.message


def test_cli_reports_and_reproduces(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seeds", "3", "--first-seed", "5"]) == 0
    assert "seeds/s" in capsys.readouterr().out
    assert main(["--mutant", "list"]) == 0
    assert "commit_old_term" in capsys.readouterr().out
    assert main(["--seeds", "50", "--mutant", "skip_log_matching"]) == 1
    out = capsys.readouterr().out
    assert "VIOLATION at seed" in out and "python -m loom.sim --seeds 1 --first-seed" in out


def test_disk_loses_unsynced_and_may_tear() -> None:
    outcomes = set()
    for s in range(40):
        d = SimDisk(Snapshot(SnapshotMeta(), b""))
        d.save(HardState(1, "n1", 0), [Entry(1, 1)], None)
        d.sync()
        d.save(HardState(2, "n2", 1), [Entry(2, 2), Entry(2, 3), Entry(2, 4)], None)
        d.crash(random.Random(s), tear=s % 2 == 0)
        rec = d.load()
        outcomes.add((len(rec.entries), rec.hard_state.term))
        assert rec.entries[0] == Entry(1, 1)
        assert rec.hard_state.term == 1 or len(rec.entries) == 4  # HS written after entries
    assert (1, 1) in outcomes and (4, 2) in outcomes and any(1 < n < 4 for n, _ in outcomes)


@pytest.mark.soak
def test_soak() -> None:
    """Seeds beyond the CI slice, bounded by LOOM_SOAK_SECONDS (default 600)."""
    import os
    import time

    deadline = time.monotonic() + float(os.environ.get("LOOM_SOAK_SECONDS", "600"))
    ran, fail = run_seeds(CI_SEEDS, 1_000_000, None, lambda: time.monotonic() >= deadline)
    assert fail is None, f"{fail.message}\nreproduce: {fail.command()}"
    assert ran > 0
