"""A simulation run does not depend on Python's hash randomization. (That the core and the
simulator import no trio, sockets, clocks or OS randomness is checked with every other pure
package in tests/test_layers.py.)"""

from __future__ import annotations

import os
import subprocess
import sys


def test_hash_seed_does_not_matter() -> None:
    outs = []
    for hs in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hs}
        r = subprocess.run(
            [sys.executable, "-m", "loom.sim", "--seeds", "3", "--first-seed", "27",
             "--mutant", "ack_before_sync", "--trace"],
            capture_output=True, text=True, env=env, check=False,
        )
        outs.append("\n".join(ln for ln in r.stdout.splitlines() if "seeds/s" not in ln))
    assert outs[0] == outs[1]
    assert "VIOLATION at seed 29" in outs[0]
