"""Each real-process mutant (a planted bug behind a test-only hook, loom/node/testhooks.py) is
caught by `python -m loom.chaos`: the run reports an anomaly, names the seed and prints the
command that repeats it. The same nemeses without a mutant find nothing, and show that they
did their work (a removed member told, an impostor's heartbeats dropped, power cut)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

CASES = {
    # a power cut of a majority or of every member after acknowledging one sync early
    "ack_before_fsync": ("power", "register,set,counter",
                         ("acknowledged adds missing", "not linearizable", "not converged",
                          "exited with code", "counter:")),
    # the removed member restarted on its old data is never told, and campaigns on
    "forget_removed": ("rejoin", "register", ("was not told it was removed",)),
    # heartbeats over a member's certificate claiming another id are stepped
    "skip_identity_pin": ("impostor", "register", ("reached the forged term",)),
}


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("mutant", sorted(CASES))
def test_the_harness_catches_the_mutant(mutant: str, tmp_path: Path) -> None:
    nemesis, workloads, expected = CASES[mutant]
    p = subprocess.run(
        [sys.executable, "-m", "loom.chaos", "--runs", "3", "--seconds", "12", "--seed", "22",
         "--nemesis", nemesis, "--workload", workloads, "--mutant", mutant,
         "--stop-on-anomaly", "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=400, check=False)
    assert p.returncode == 1, f"the mutant {mutant} survived:\n{p.stdout}\n{p.stderr[-3000:]}"
    anomalies = [ln for ln in p.stdout.splitlines() if ln.startswith("  anomaly: ")]
    assert any(e in a for a in anomalies for e in expected), p.stdout
    repeat = next(ln for ln in p.stdout.splitlines() if ln.startswith("  repeat: "))
    assert "--seed " in repeat and f"--mutant {mutant}" in repeat


def _did_its_work(f: Counter[str]) -> bool:
    """Every removed member restarted was told, an impostor's heartbeats were seen dropped,
    the power was cut."""
    return (f["rejoin-told-removed"] == f["rejoin-removed-member"] >= 1
            and f["impostor-rejected"] >= 1
            and f["power-loss-all"] + f["power-loss-majority"] >= 1)


@pytest.mark.slow
@pytest.mark.timeout(560)
def test_the_same_nemeses_find_nothing_in_a_correct_cluster(tmp_path: Path) -> None:
    # How many faults fit in a run, and whether the impostor's target is cut off by a power
    # cut while it is being tried, is the machine's timing: under load one run may end before
    # a nemesis got its chance. So runs go on (a bounded number, seeds 23, 24, 25) until every
    # nemesis has done its work; every run must find nothing.
    f: Counter[str] = Counter()
    for seed in (23, 24, 25):
        out = tmp_path / f"summary-{seed}.json"
        p = subprocess.run(
            [sys.executable, "-m", "loom.chaos", "--runs", "1", "--seconds", "20", "--seed",
             str(seed), "--nemesis", "power,rejoin,impostor", "--workload",
             "register,set,counter", "--dir", str(tmp_path / "runs"), "--json", str(out)],
            capture_output=True, text=True, timeout=180, check=False)
        assert p.returncode == 0, f"{p.stdout}\n{p.stderr[-3000:]}"
        s = json.loads(out.read_text())
        assert s["anomalies"] == 0, s
        f.update(s["faults"])
        if _did_its_work(f):
            break
    assert _did_its_work(f), f
