"""`loomctl audit verify`: every seq present or inside a dropped range (SECURITY-CATALOGUE H2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from loom.security.auditverify import verify_files, verify_lines

LOOMCTL = [sys.executable, "-m", "loom.cli.loomctl"]


def rec(seq: int, dropped: list[list[int]] | None = None, node: str = "n1",
        run: str = "r1") -> str:
    d: dict[str, Any] = {"node": node, "run": run, "seq": seq, "event": "request"}
    if dropped:
        d["dropped"] = dropped
    return json.dumps(d)


def lines(*recs: str) -> list[tuple[str, str]]:
    return [(f"t:{i}", r) for i, r in enumerate(recs, 1)]


def test_complete_with_ranges_and_out_of_order() -> None:
    # A priority record (5) written before data records 3 and 4; 6..8 dropped, reported on 9.
    rep = verify_lines(lines(rec(1), rec(2), rec(5), rec(3), rec(4), rec(9, [[6, 8]])))
    assert rep.ok, rep
    (run,) = rep.runs
    assert (run.first, run.last, run.present, run.dropped) == (1, 9, 6, 3)


def test_missing_seq_is_reported_with_its_range() -> None:
    rep = verify_lines(lines(rec(1), rec(2), rec(6), rec(9, [[7, 8]])))
    assert not rep.ok
    assert rep.runs[0].missing == ((3, 5),)


def test_present_and_dropped_is_a_contradiction() -> None:
    # What a buffered sink did: counted as dropped, then reached the file after all.
    rep = verify_lines(lines(rec(1), rec(2), rec(3, [[2, 2]])))
    assert not rep.ok and rep.runs[0].present_and_dropped == ((2, 2),)


def test_duplicates_and_bad_lines_fail() -> None:
    assert not verify_lines(lines(rec(1), rec(1), rec(2))).ok
    rep = verify_lines(lines(rec(1), '{"node":"n1","run":"r1","se'))  # a truncated last line
    assert not rep.ok and rep.bad_lines == 1
    assert not verify_lines(lines(rec(1), rec(3, [[3, 3]]))).ok  # a range must precede its seq


def test_runs_and_nodes_are_checked_apart() -> None:
    # A restart begins again at seq 1 under a new run id; another node has its own numbers.
    rep = verify_lines(lines(rec(1), rec(2), rec(1, run="r2"), rec(3, [[2, 2]], run="r2"),
                             rec(7, node="n2"), rec(8, node="n2")))
    assert rep.ok, rep
    assert [(r.node, r.run, r.first) for r in rep.runs] == [
        ("n1", "r1", 1), ("n1", "r2", 1), ("n2", "r1", 7)]
    assert not verify_lines(lines(rec(1), rec(3), rec(1, run="r2"))).ok


def test_rotated_files_in_any_order_and_the_cli(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    (tmp_path / "audit.log.2").write_text("\n".join([rec(4), rec(5)]) + "\n")
    (tmp_path / "audit.log.1").write_text("\n".join([rec(6), rec(9, [[7, 8]])]) + "\n")
    log.write_text(rec(10) + "\n")
    files = [log, tmp_path / "audit.log.1", tmp_path / "audit.log.2"]
    rep = verify_files(files)
    assert rep.ok and rep.runs[0].first == 4  # the oldest file was rotated away: start at 4
    out = subprocess.run([*LOOMCTL, "audit", "verify", *map(str, files)],
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "complete" in out.stdout
    # Without the middle file, 6..9 are neither present nor reported: exit 1, named.
    out = subprocess.run([*LOOMCTL, "audit", "verify", str(log), str(files[2])],
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "6..9" in out.stderr and "INCOMPLETE" in out.stderr
