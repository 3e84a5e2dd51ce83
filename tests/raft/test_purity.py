"""The core and the simulator are pure: no trio, sockets, clocks or OS randomness, and a run
does not depend on Python's hash randomization."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import loom.raft
import loom.sim

FORBIDDEN = {"trio", "socket", "time", "os", "secrets", "asyncio", "threading", "uuid",
             "datetime", "selectors", "ssl"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_io_imports() -> None:
    for pkg in (loom.raft, loom.sim):
        for path in Path(pkg.__path__[0]).glob("*.py"):
            if path.name == "__main__.py":
                continue  # the CLI reads a clock to report seeds/s; simulations never do
            bad = _imports(path) & FORBIDDEN
            assert not bad, f"{path.name} imports {bad}"


def test_hash_seed_does_not_matter() -> None:
    outs = []
    for hs in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hs}
        r = subprocess.run(
            [sys.executable, "-m", "loom.sim", "--seeds", "3", "--first-seed", "12",
             "--mutant", "ack_before_sync", "--trace"],
            capture_output=True, text=True, env=env, check=False,
        )
        outs.append("\n".join(ln for ln in r.stdout.splitlines() if "seeds/s" not in ln))
    assert outs[0] == outs[1]
    assert "VIOLATION at seed 12" in outs[0]
