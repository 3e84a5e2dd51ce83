"""The bounded chaos slice of the default suite: `python -m loom.chaos` itself, six seeded runs
of 15 s each with mixed nemeses (membership changes included), real loomd processes, every
history checked.

The long run is `make chaos RUNS=500 SECONDS=60`. Two bugs the runs found are fixed, each with
a deterministic test: a node behind the MEMBER_ADD of the current leader refused that leader
and never caught up (test_catch_up_new_leader.py), and a resumed subscription repeated
messages (test_topic_resume.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

RUNS, SECONDS, FIRST_SEED = 6, 15, 1000
WORKLOADS = "register,counter,queue,set,lock,topic"
NEMESES = "kill,pause,partition,rolling,clock,disk,membership"


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_chaos_slice(tmp_path: Path) -> None:
    # failing runs stay here for inspection (pytest's own temporary directories are pruned
    # by the next session); passing runs delete their own directories
    runs = Path(tempfile.gettempdir()) / f"loom-chaos-slice-{os.getpid()}"
    out = tmp_path / "summary.json"
    p = subprocess.run(
        [sys.executable, "-m", "loom.chaos", "--runs", str(RUNS), "--seconds", str(SECONDS),
         "--seed", str(FIRST_SEED), "--workload", WORKLOADS, "--nemesis", NEMESES,
         "--dir", str(runs), "--json", str(out)],
        capture_output=True, text=True, timeout=400, check=False)
    assert p.returncode == 0, f"chaos runs failed:\n{p.stdout}\n{p.stderr[-4000:]}"
    s = json.loads(out.read_text())
    assert s["runs"] == RUNS and s["anomalies"] == 0 and not s["failed_runs"]
    assert s["faults_total"] >= RUNS * 3, s["faults"]
    for w in WORKLOADS.split(","):
        assert s["checked"].get(w, 0) > 100, s["checked"]
    # passing runs leave nothing behind
    assert not list(runs.iterdir())
    runs.rmdir()
