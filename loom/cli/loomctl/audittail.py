"""`loomctl audit tail FILE [-n N] [--follow] [--principal P] [--result R]`: the last audit
records of a node's audit file (docs/security.md, "Audit records"), filtered, and with
`--follow` the new ones as the node writes them, across the file sink's rotations.

Text output is one short line per record; `-o json` prints the records' own lines unchanged,
so the output can go to `jq` or to `loomctl audit verify`. A line that is not a JSON object (a
file that is not an audit log) is counted and reported on stderr, never printed as a record.

Bounded: the backlog is a deque of N records, a partial line being written is held until its
newline (at most `MAX_LINE` bytes, beyond which it is dropped as malformed), and `--follow`
polls the file every `--interval` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from loom.cli.loomctl.base import NOTHING, Ctx, UsageError

MAX_LINE = 1 << 20  # an audit record is a few hundred bytes; reasons and keys are cut to 256
CHUNK = 1 << 16


class _Filter:
    def __init__(self, principal: str | None, result: str | None) -> None:
        self.principal, self.result = principal, result
        self.malformed = 0

    def parse(self, line: bytes) -> dict[str, Any] | None:
        """The record on `line` when it passes the filters, else None."""
        try:
            rec = json.loads(line)
        except ValueError:
            self.malformed += 1
            return None
        if not isinstance(rec, dict):
            self.malformed += 1
            return None
        if self.principal is not None and rec.get("principal") != self.principal:
            return None
        if self.result is not None and rec.get("result") != self.result:
            return None
        return rec


def text_line(rec: dict[str, Any]) -> str:
    """One record as a short line: when, where, who, what, how it ended."""
    if rec.get("event") == "audit_lost":
        return f"{rec.get('ts', '-')} {rec.get('node', '-')} audit_lost {rec.get('dropped')}"
    what = rec.get("command") or "-"
    if rec.get("structure"):
        what += f" {rec['structure']}"
        if rec.get("key") is not None:
            what += f"/{rec['key']}"
    who = rec.get("principal", "-")
    if rec.get("via_gateway"):
        who += f" via {rec['via_gateway']}"
    parts = [str(rec.get("ts", "-")), str(rec.get("node", "-")), f"#{rec.get('seq', '-')}",
             who, what, str(rec.get("result", "-"))]
    if rec.get("reason"):
        parts.append(f"({rec['reason']})")
    if rec.get("dropped"):
        parts.append(f"[dropped before: {rec['dropped']}]")
    return " ".join(parts)


def _lines(f: Any, pending: bytearray) -> Iterator[bytes]:
    """Whole lines from `f`'s current position; a trailing partial line stays in `pending`."""
    while True:
        chunk = f.read(CHUNK)
        if not chunk:
            return
        pending += chunk
        *whole, rest = bytes(pending).split(b"\n")
        pending[:] = rest if len(rest) <= MAX_LINE else b""
        yield from (x for x in whole if x.strip())


def tail(path: Path, out: TextIO, *, count: int, follow: bool, principal: str | None,
         result: str | None, json_output: bool, interval_s: float = 0.25,
         stop_after_s: float | None = None) -> int:
    """Print the last `count` matching records, then (`follow`) new ones until interrupted
    (or `stop_after_s`, for tests). Returns how many records were printed."""
    filt = _Filter(principal, result)
    printed = 0

    def show(line: bytes, rec: dict[str, Any]) -> None:
        nonlocal printed
        out.write((line.decode("utf-8", "replace") if json_output else text_line(rec)) + "\n")
        printed += 1

    f = path.open("rb")
    try:
        pending = bytearray()
        backlog: deque[tuple[bytes, dict[str, Any]]] = deque(maxlen=count)
        for line in _lines(f, pending):
            rec = filt.parse(line)
            if rec is not None:
                backlog.append((line, rec))
        for line, rec in backlog:
            show(line, rec)
        out.flush()
        deadline = None if stop_after_s is None else time.monotonic() + stop_after_s
        while follow and (deadline is None or time.monotonic() < deadline):
            time.sleep(interval_s)
            for line in _lines(f, pending):
                rec = filt.parse(line)
                if rec is not None:
                    show(line, rec)
            out.flush()
            # The sink rotates by renaming the file and creating a new one at `path`; a file
            # truncated in place (copytruncate) is read again from its start.
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # between the rename and the new file
            if st.st_ino != os.fstat(f.fileno()).st_ino or st.st_size < f.tell():
                f.close()
                f = path.open("rb")
                pending.clear()
    finally:
        f.close()
        if filt.malformed:
            print(f"loomctl: audit tail: {filt.malformed} line(s) that are not audit records "
                  "skipped", file=sys.stderr)
    return printed


def audit_tail(c: Ctx, a: argparse.Namespace) -> Any:
    if a.lines < 0:
        raise UsageError("-n/--lines must be 0 or more")
    if a.interval <= 0:
        raise UsageError("--interval must be positive")
    tail(Path(a.file), c.out, count=a.lines, follow=a.follow, principal=a.principal,
         result=a.result, json_output=a.output == "json", interval_s=a.interval)
    return NOTHING
