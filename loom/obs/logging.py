"""Operational logs: one schema, JSON lines for machines or plain text for a terminal.

This module owns the log format of every Loom process (loomd, loom-gateway): each calls
`configure()` once at start, before the first line. A JSON line always carries

    ts      ISO 8601 in UTC, microseconds ("2026-12-06T14:02:11.123456+00:00")
    level   DEBUG | INFO | WARNING | ERROR | CRITICAL
    logger  the logger's dotted name ("loom.raft", "loom.peer", "loomd")
    node    the process's identity (a node id, or "gateway")
    msg     the formatted message

plus any structured fields a caller passes as `extra={...}` (the library's encoder renders
dates, bytes, enums and dataclasses, and any other value as its `str`), and `exc_info` with the
traceback when one is logged. The formatter is python-json-logger's: no hand-written JSON
escaping here.

`format = "auto"` (the default) chooses JSON when systemd's journal is the process's stderr
(systemd sets `JOURNAL_STREAM` for a unit whose output goes to the journal) and text otherwise,
so a terminal keeps its readable lines and journald gets fields it can index.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Literal, TextIO

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["auto", "json", "text"]
FORMATS: tuple[str, ...] = ("auto", "json", "text")
LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The record attributes renamed into the schema's keys; everything else a record carries by
# default (thread, process, pathname...) is left out, and `extra` fields are added as they are.
_RENAME = {"levelname": "level", "name": "logger", "message": "msg"}


def resolve_format(fmt: str, environ: Mapping[str, str]) -> Literal["json", "text"]:
    """The format actually used: `auto` is JSON under systemd's journal, text elsewhere."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "auto":
        return "json" if environ.get("JOURNAL_STREAM") else "text"
    return "json" if fmt == "json" else "text"


def json_formatter(node: str) -> logging.Formatter:
    """The JSON-lines formatter, `node` stamped on every line."""
    return JsonFormatter(
        ["levelname", "name", "message"],
        rename_fields=_RENAME,
        static_fields={"node": node},
        timestamp="ts",
        json_ensure_ascii=False,
    )


def configure(*, node: str, level: str = "info", fmt: str = "auto",
              environ: Mapping[str, str] | None = None,
              stream: TextIO | None = None) -> Literal["json", "text"]:
    """Install one handler on the root logger (replacing any), return the format chosen.

    `environ` defaults to the process environment, `stream` to stderr."""
    import os

    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    chosen = resolve_format(fmt, os.environ if environ is None else environ)
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(json_formatter(node) if chosen == "json"
                         else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return chosen
