"""The compiled and the pure build reach the same state, seed for seed, on every replica.

The proof that a mixed cluster (nodes of both builds, as during a rolling upgrade that turns
compilation on) cannot diverge: the same slice of simulator seeds, state-machine workload
seeds and malformed commands runs in two processes, one per build (tests/build_digest.py),
and every per-seed digest of every replica's state must be equal.

The compiled side is this checkout's build when it is current (what `make test` builds);
otherwise a copy of the sources is compiled in a temporary directory (a minute or two). The
test skips only where nothing can be compiled, and says why.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from loom import buildinfo

ROOT = Path(__file__).resolve().parent.parent
SIM_SEEDS = 150  # about 5 s of CPU per build on the benchmark machine
STATE_SEEDS = 10
COMMANDS = 300

pytestmark = pytest.mark.slow


def _build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_native",
                                                  ROOT / "scripts" / "build_native.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def compiled_root(tmp_path: Path) -> Path:
    """A directory whose `loom` is a current compiled build."""
    if buildinfo.decide(ROOT / "loom", environ={}).kind == "compiled":
        return ROOT
    why = _build_script().missing_tool()
    if why is not None:
        pytest.skip(f"no compiled build to compare with: {why}")
    ignore = shutil.ignore_patterns("*.so", "*.pyd", "__pycache__", "_native.json")
    shutil.copytree(ROOT / "loom", tmp_path / "loom", ignore=ignore)
    shutil.copytree(ROOT / "tests", tmp_path / "tests", ignore=ignore)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_native.py"),
                           "--root", str(tmp_path)], check=False, capture_output=True,
                          text=True,
                          timeout=900, env={k: v for k, v in os.environ.items()
                                            if k != buildinfo.PURE_ENV})
    info = buildinfo.decide(tmp_path / "loom", environ={})
    assert info.kind == "compiled", f"{info.reason}\n{done.stdout}\n{done.stderr}"
    return tmp_path


def test_both_builds_reach_the_same_state_on_every_replica(tmp_path: Path) -> None:
    compiled = compiled_root(tmp_path)
    argv = [sys.executable, "-m", "tests.build_digest", "--sim", "0", str(SIM_SEEDS),
            "--state", "0", str(STATE_SEEDS), "--commands", str(COMMANDS)]
    base = {k: v for k, v in os.environ.items() if k != buildinfo.PURE_ENV}
    runs = {
        "compiled": subprocess.Popen(argv, cwd=compiled, env={**base, "PYTHONPATH": str(compiled)},
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL),
        "pure": subprocess.Popen(argv, cwd=ROOT, env={**base, buildinfo.PURE_ENV: "1",
                                                      "PYTHONPATH": str(ROOT)},
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL),
    }
    docs = {}
    try:
        for name, proc in runs.items():
            out, _ = proc.communicate(timeout=240)
            assert proc.returncode == 0, f"{name} build: exit {proc.returncode}"
            docs[name] = json.loads(out)
    finally:
        for proc in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert docs["compiled"].pop("build") == "compiled"
    assert docs["pure"].pop("build") == "pure"
    c, p = docs["compiled"], docs["pure"]
    assert len(c["sim"]) == SIM_SEEDS and len(c["state"]) == STATE_SEEDS
    differ = [f"sim seed {s}" for s in c["sim"] if c["sim"][s] != p["sim"][s]]
    differ += [f"state seed {s}" for s in c["state"] if c["state"][s] != p["state"][s]]
    if c["hostile"] != p["hostile"]:
        differ.append("malformed commands")
    assert not differ, f"the builds diverge on: {', '.join(differ)}"
