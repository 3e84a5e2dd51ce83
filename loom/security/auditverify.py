"""`loomctl audit verify FILE...`: does an audit log account for every record?

The pipeline (loom/node/audit.py) numbers a node's records `seq` = 1, 2, ... per run (`run`: a
random id per start) and reports every record it lost as a `dropped: [[first, last], ...]`
range on a later record. So, for each (node, run) in the files given (a file and its rotated
copies, in any order, several nodes at once):

- every seq from the lowest to the highest one seen is either present or inside a range;
- no seq is present twice, and none is present *and* reported dropped;
- every line is one JSON record with `node`, `seq` and well-formed ranges.

The check starts at the lowest seq seen, not at 1: rotation deletes the oldest file, and the
records in it are gone by design. `first` in the result says where each run's check began.
Records of a run are in seq order within a write but not between writes (a denial may overtake
data records), so the check is on sets, never on line order.

Pure: `verify_lines` takes (source, line) pairs; `verify_files` only reads the files.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["AuditIncomplete", "RunReport", "VerifyReport", "check_files", "render", "verify_files",
           "verify_lines"]

MAX_PROBLEMS = 20  # problems listed per report (all are counted)


@dataclass(slots=True)
class _Run:
    present: set[int] = field(default_factory=set)
    ranges: list[tuple[int, int]] = field(default_factory=list)
    duplicates: int = 0


@dataclass(frozen=True, slots=True)
class RunReport:
    node: str
    run: str | None  # None: records written before runs were recorded
    first: int  # lowest seq present or reported dropped
    last: int  # highest
    present: int  # distinct seqs present
    dropped: int  # distinct seqs inside a dropped range
    missing: tuple[tuple[int, int], ...]  # neither present nor dropped
    present_and_dropped: tuple[tuple[int, int], ...]  # reported lost, yet in the log
    duplicates: int  # seqs present more than once

    @property
    def ok(self) -> bool:
        return not self.missing and not self.present_and_dropped and not self.duplicates


@dataclass(frozen=True, slots=True)
class VerifyReport:
    runs: tuple[RunReport, ...]
    records: int
    bad_lines: int
    problems: tuple[str, ...]  # the first MAX_PROBLEMS bad lines, with where they are

    @property
    def ok(self) -> bool:
        return self.bad_lines == 0 and all(r.ok for r in self.runs)


def _as_ranges(seqs: Iterable[int]) -> tuple[tuple[int, int], ...]:
    out: list[list[int]] = []
    for s in sorted(seqs):
        if out and out[-1][1] == s - 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return tuple((a, b) for a, b in out)


def _seq(v: Any) -> bool:
    return type(v) is int and v >= 1


def _parse(line: str) -> tuple[str, str | None, int, list[tuple[int, int]]] | str:
    """(node, run, seq, ranges) or the reason the line is not a record."""
    try:
        rec = json.loads(line)
    except ValueError:
        return "not JSON (a truncated or foreign line)"
    if not isinstance(rec, dict):
        return "not a JSON object"
    node, run, seq = rec.get("node"), rec.get("run"), rec.get("seq")
    if not isinstance(node, str) or type(seq) is not int or seq < 1 \
            or not (run is None or isinstance(run, str)):
        return "no node/seq"
    ranges: list[tuple[int, int]] = []
    dropped = rec.get("dropped", [])
    if not isinstance(dropped, list):
        return "'dropped' is not a list"
    for r in dropped:
        if not (isinstance(r, list) and len(r) == 2 and _seq(r[0]) and _seq(r[1])
                and r[0] <= r[1] < seq):
            return f"bad dropped range {r!r}"
        ranges.append((r[0], r[1]))
    return node, run, seq, ranges


def _merge(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint, non-adjacent intervals covering the same seqs."""
    out: list[list[int]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _report(node: str, run: str | None, r: _Run) -> RunReport:
    dropped = _merge(r.ranges)
    starts = [a for a, _ in dropped]
    both = [s for s in r.present
            if (i := bisect.bisect_right(starts, s) - 1) >= 0 and s <= dropped[i][1]]
    accounted = _merge([*((s, s) for s in r.present), *dropped])
    lo, hi = accounted[0][0], accounted[-1][1]
    missing = tuple((accounted[k][1] + 1, accounted[k + 1][0] - 1)
                    for k in range(len(accounted) - 1))
    return RunReport(node, run, lo, hi, len(r.present), sum(b - a + 1 for a, b in dropped),
                     missing, _as_ranges(both), r.duplicates)


def verify_lines(lines: Iterable[tuple[str, str]]) -> VerifyReport:
    """Check (where, line) pairs: `where` names the line in problems ("FILE:LINE")."""
    runs: dict[tuple[str, str | None], _Run] = {}
    records = bad = 0
    problems: list[str] = []
    for where, line in lines:
        if not line.strip():
            continue
        parsed = _parse(line)
        if isinstance(parsed, str):
            bad += 1
            if len(problems) < MAX_PROBLEMS:
                problems.append(f"{where}: {parsed}")
            continue
        node, run, seq, ranges = parsed
        records += 1
        r = runs.setdefault((node, run), _Run())
        if seq in r.present:
            r.duplicates += 1
        r.present.add(seq)
        r.ranges.extend(ranges)
    reports = tuple(_report(node, run, r) for (node, run), r in
                    sorted(runs.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")))
    return VerifyReport(reports, records, bad, tuple(problems))


def verify_files(paths: Iterable[Path]) -> VerifyReport:
    """Read every file (a log and its rotated copies, in any order) and check them together."""

    def lines() -> Iterable[tuple[str, str]]:
        for p in paths:
            with open(p, encoding="ascii", errors="replace") as f:
                for n, line in enumerate(f, 1):
                    yield f"{p}:{n}", line

    return verify_lines(lines())


def render(report: VerifyReport) -> str:
    """The human summary loomctl prints."""
    out = [f"{report.records} records, {len(report.runs)} run(s), {report.bad_lines} bad "
           "line(s)"]
    out += [f"  bad line {p}" for p in report.problems]
    for r in report.runs:
        state = "complete" if r.ok else "INCOMPLETE"
        out.append(f"node {r.node} run {r.run or '-'}: seq {r.first}..{r.last}, {r.present} "
                   f"present, {r.dropped} reported dropped: {state}")
        if r.missing:
            n = sum(b - a + 1 for a, b in r.missing)
            shown = ", ".join(f"{a}..{b}" for a, b in r.missing[:MAX_PROBLEMS])
            out.append(f"  {n} missing without a dropped range: {shown}")
        if r.present_and_dropped:
            shown = ", ".join(f"{a}..{b}" for a, b in r.present_and_dropped[:MAX_PROBLEMS])
            out.append(f"  reported dropped but present: {shown}")
        if r.duplicates:
            out.append(f"  {r.duplicates} seq(s) present more than once")
    return "\n".join(out)


class AuditIncomplete(Exception):
    """The files do not account for every record (the message is the rendered report)."""


def check_files(paths: Iterable[Path]) -> str:
    """The summary if the files account for every record; AuditIncomplete otherwise."""
    report = verify_files(paths)
    text = render(report)
    if not report.ok or not report.runs:
        raise AuditIncomplete(text if report.runs else text + "\nno audit records found")
    return text
