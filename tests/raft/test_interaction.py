"""Data-driven interaction tests: each testdata/*.txt script is run and its transcript must
equal the checked-in testdata/*.out. Set LOOM_REWRITE=1 to regenerate after a deliberate
change (and review the diff)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loom.sim.script import Script

DATA = Path(__file__).parent / "testdata"
SCRIPTS = sorted(DATA.glob("*.txt"))


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script(path: Path) -> None:
    got = Script().run(path.read_text())
    expected = path.with_suffix(".out")
    if os.environ.get("LOOM_REWRITE") == "1":
        expected.write_text(got)
    assert expected.exists(), f"missing {expected.name}; run with LOOM_REWRITE=1"
    assert got == expected.read_text()


def test_scripts_exist() -> None:
    assert len(SCRIPTS) >= 4


def test_rejoin_script_catches_the_planted_bug() -> None:
    """The stale-prefix election the rejoin script rules out happens once the joining rule is
    planted away: the script is a regression test that can fail."""
    text = (DATA / "rejoin_stale_prefix.txt").read_text()
    assert "n1 becomes leader" not in Script().run(text)
    assert "n1 becomes leader (term 3" in Script(mutant="ignore_joining").run(text)
