"""A benchmark's phases as a progress bar on stderr (rich), only when stderr is a terminal:
piped or logged runs keep their output to the figures alone, and a figure is never printed
under a half-drawn bar (the bar is transient and rich prints above it)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def phases(total: int, what: str) -> Iterator[Callable[[str], None]]:
    """`with phases(n, "runs") as done: ... done("MAP_PUT run 1")`: one call per phase ended."""
    if not sys.stderr.isatty():
        yield lambda label: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True), transient=True) as p:
        task = p.add_task(what, total=total)

        def done(label: str) -> None:
            p.update(task, advance=1, description=f"{what} (last: {label})")

        yield done
