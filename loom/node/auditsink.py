"""Audit sinks: where JSON lines go, and exactly which of them got there.

The pipeline (loom/node/audit.py) must know, after every write, which records reached the sink
and which did not, so that every lost record becomes a `dropped` range on a later record. So
sinks write with `os.write` on a file descriptor: no Python buffer holds lines that were counted
as lost and reach the file later (or were counted as written and never do).

`write_lines` either returns (every line reached the sink) or raises `SinkError(written)`: the
first `written` lines reached it whole, the rest did not, and no partial line is left behind
(a file is truncated back to the last whole line; a pipe or FIFO is written in chunks of whole
lines of at most PIPE_BUF bytes, which the kernel writes all or nothing).

`abandon()` is called from the event loop when shutdown's grace deadline passes while a write
is blocked (a stalled pipe reader, a hung disk): the thread writes no further chunk, and the
call returns how many lines of the blocked call reached the sink. The chunk the thread is
blocked on may still complete later if the reader resumes before the process exits; that
narrow window is the only way a record counted lost can appear (`audit verify` reports it).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import stat
import sys
import threading
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("loom.audit")

PIPE_CHUNK = select.PIPE_BUF  # writes up to this size to a pipe or FIFO are atomic (POSIX)
FILE_CHUNK = 1 << 20


class SinkError(Exception):
    """A write that did not complete: the first `written` lines reached the sink whole."""

    def __init__(self, written: int, cause: BaseException) -> None:
        super().__init__(f"{cause}")
        self.written = written


class SinkConfigError(Exception):
    """The sink cannot be used as configured (raised at start, before a port is opened)."""


class Sink(Protocol):
    def write_lines(self, lines: list[str]) -> None: ...  # blocking; called from a thread
    def close(self) -> None: ...


class _LineWriter:
    """Writes whole lines to a descriptor and counts the lines that got there.

    `_progress` (lines of the current call that reached the fd) and `_abandoned` are shared with
    the event loop's `abandon()`, under `_lock`: after `abandon()` returns, the count it returned
    is final except for the one chunk a blocked `os.write` may still complete."""

    def __init__(self, chunk: int) -> None:
        self._chunk = chunk
        self._lock = threading.Lock()
        self._progress = 0
        self._abandoned = False

    def _write_fd(self, fd: int, lines: list[str], start_size: int) -> int:
        """Write `lines` to `fd`; return the bytes written. Raises SinkError."""
        with self._lock:
            self._progress = 0
            if self._abandoned:
                raise SinkError(0, OSError("the sink was abandoned at shutdown"))
        done = 0  # lines whole on the fd
        written_bytes = 0
        i = 0
        while i < len(lines):
            # A chunk of whole lines (a longer line alone): a pipe takes it all or nothing.
            j, size = i, 0
            while j < len(lines) and (j == i or size + len(lines[j]) + 1 <= self._chunk):
                size += len(lines[j]) + 1
                j += 1
            data = "".join(line + "\n" for line in lines[i:j]).encode("ascii")
            view = memoryview(data)
            off = 0
            try:
                while off < len(data):
                    with self._lock:
                        if self._abandoned:
                            raise OSError("the sink was abandoned at shutdown")
                    off += os.write(fd, view[off:])
            except OSError as e:
                self._undo_partial(fd, start_size + written_bytes, off)
                raise SinkError(done, e) from e
            written_bytes += len(data)
            done += j - i
            i = j
            with self._lock:
                self._progress = done
        return written_bytes

    def _undo_partial(self, fd: int, whole_end: int, partial: int) -> None:
        """Remove the start of a line that did not reach the sink whole (files only)."""
        if partial:
            try:
                os.ftruncate(fd, whole_end)
            except OSError as e:
                log.error("audit sink: cannot remove a partly written line: %s", e)

    def abandon(self) -> int:
        with self._lock:
            self._abandoned = True
            return self._progress

    def _final_fd(self) -> int:
        raise NotImplementedError

    def write_final(self, lines: list[str]) -> None:
        """The last record at shutdown, after `abandon()`: one write, bounded by the caller."""
        data = "".join(line + "\n" for line in lines).encode("ascii")
        fd = self._final_fd()
        off = 0
        while off < len(data):
            off += os.write(fd, data[off:])


class StreamSink(_LineWriter):
    """Standard output (or any stream with a descriptor): a pipe, a FIFO reader, a terminal."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(PIPE_CHUNK)
        self._stream = stream or sys.stdout
        self._stream.flush()  # anything printed before starts ahead of the first record

    def write_lines(self, lines: list[str]) -> None:
        self._write_fd(self._stream.fileno(), lines, 0)

    def _final_fd(self) -> int:
        return int(self._stream.fileno())

    def _undo_partial(self, fd: int, whole_end: int, partial: int) -> None:
        pass  # a stream cannot take bytes back (only a line over PIPE_BUF can be cut)

    def close(self) -> None:
        pass


class FileSink(_LineWriter):
    """JSON lines appended to a regular file, rotated by size: path -> path.1 -> ... -> path.N.

    A FIFO, device or directory is refused at start with a message: rotation renames the
    file, and an open for writing on a FIFO without a reader would block start-up (the stdout
    sink, redirected, streams records to a pipe or FIFO)."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__(FILE_CHUNK)
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SinkConfigError(f"audit.path: cannot create {path.parent}: {e}") from None
        self._fd: int | None = None
        self._size = 0
        self._open()

    def _open(self) -> None:
        # O_NONBLOCK: opening a FIFO without a reader fails (ENXIO) instead of hanging; fstat
        # of what was opened (no race with a path swapped after a stat) decides the rest.
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK
                         | os.O_CLOEXEC, 0o600)
        except OSError as e:
            if e.errno == errno.ENXIO:
                raise SinkConfigError(
                    f"audit.path: {self.path} is a FIFO, not a regular file; the file sink "
                    "rotates a regular file: to stream records, use audit.sink = 'stdout' and "
                    "redirect it") from None
            raise SinkConfigError(f"audit.path: cannot open {self.path}: {e}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
            raise SinkConfigError(
                f"audit.path: {self.path} is {kind}; the file sink rotates a regular file: to "
                "stream records, use audit.sink = 'stdout' and redirect it")
        os.set_blocking(fd, True)
        self._fd, self._size = fd, st.st_size

    def write_lines(self, lines: list[str]) -> None:
        if self._fd is None:  # a reopen after rotation failed: try again now
            try:
                self._open()
            except SinkConfigError as e:
                raise SinkError(0, OSError(str(e))) from None
        assert self._fd is not None
        try:
            self._size += self._write_fd(self._fd, lines, self._size)
        except SinkError:
            self._size = os.fstat(self._fd).st_size
            raise
        if self._size >= self.max_bytes:
            try:
                self._rotate()
            except (OSError, SinkConfigError) as e:  # the lines are written: nothing is lost
                log.error("audit sink: rotation failed: %s", e)

    def _final_fd(self) -> int:
        if self._fd is None:
            self._open()
        assert self._fd is not None
        return self._fd

    def _rotate(self) -> None:
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                src.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._open()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class NullSink:
    def write_lines(self, lines: list[str]) -> None:
        pass

    def close(self) -> None:
        pass


def make_sink(kind: str, path: Path | None, max_bytes: int, backups: int) -> Sink:
    """The configured sink; SinkConfigError (with the key to fix) if it cannot be used."""
    if kind == "file":
        assert path is not None
        return FileSink(path, max_bytes, backups)
    if kind == "stdout":
        return StreamSink()
    return NullSink()
