"""Each real-process mutant (a planted bug behind a test-only hook, loom/node/testhooks.py) is
caught by `python -m loom.chaos`: the run reports an anomaly, names the seed and prints the
command that repeats it. The same nemeses without a mutant find nothing, and show that they
did their work (a removed member told, an impostor's heartbeats dropped, power cut)."""

from __future__ import annotations

import json
import subprocess
import sys
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


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_same_nemeses_find_nothing_in_a_correct_cluster(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    p = subprocess.run(
        [sys.executable, "-m", "loom.chaos", "--runs", "1", "--seconds", "20", "--seed", "23",
         "--nemesis", "power,rejoin,impostor", "--workload", "register,set,counter",
         "--dir", str(tmp_path / "runs"), "--json", str(out)],
        capture_output=True, text=True, timeout=280, check=False)
    assert p.returncode == 0, f"{p.stdout}\n{p.stderr[-3000:]}"
    s = json.loads(out.read_text())
    f = s["faults"]
    assert s["anomalies"] == 0, s
    # every removed member restarted was told; every impostor's heartbeats seen dropped
    assert f.get("rejoin-told-removed", 0) == f.get("rejoin-removed-member", 0) >= 1, f
    assert f.get("impostor-rejected", 0) >= 1, f
    assert f.get("power-loss-all", 0) + f.get("power-loss-majority", 0) >= 1, f
