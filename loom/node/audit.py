"""The audit pipeline: never blocks a request, never hides a loss.

    request task --emit()--> [priority lane | data lane] --drainer task--> sink (file/stdout)

`emit` is synchronous and uses `send_nowait` only: a full lane drops the record, counts it, and
the *next* record that gets through (either lane) carries `"dropped": [[first, last], ...]`, the
sequence numbers lost since the previous report. Every record gets the next per-node `seq` at
emit time, so the log itself proves completeness: each seq is either present or covered by a
`dropped` range on a later record (and `statistics().dropped` equals the records missing).

Denials, spoofing attempts and admin commands use the priority lane, which data traffic cannot
fill. Sink writes are blocking file I/O and run in a worker thread, in batches: the drainer
lingers `LINGER_S` after the first record so that a trickle of records still shares writes.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import trio

log = logging.getLogger("loom.audit")

MAX_BATCH = 512  # records per sink write
LINGER_S = 0.005  # the drainer waits this long after a first record before writing


class Sink(Protocol):
    def write_lines(self, lines: list[str]) -> None: ...  # blocking; called from a thread
    def close(self) -> None: ...


class StreamSink:
    def __init__(self, stream: Any = None) -> None:
        self._stream = stream or sys.stdout

    def write_lines(self, lines: list[str]) -> None:
        self._stream.write("".join(line + "\n" for line in lines))
        self._stream.flush()

    def close(self) -> None:
        pass


class FileSink:
    """JSON lines appended to a file, rotated by size: path -> path.1 -> ... -> path.N."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self._open()

    def _open(self) -> Any:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8")

    def write_lines(self, lines: list[str]) -> None:
        self._f.write("".join(line + "\n" for line in lines))
        self._f.flush()
        if self._f.tell() >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self._f.close()
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                src.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self.backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink()
        self._f = self._open()

    def close(self) -> None:
        self._f.close()


class NullSink:
    def write_lines(self, lines: list[str]) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class AuditStatistics:
    emitted: int
    written: int
    dropped: int
    queued_data: int
    queued_priority: int


_by_seq = operator.itemgetter("seq")
# ensure_ascii escapes every control and non-ASCII character: one record, one line. One encoder
# for all records (json.dumps with options builds a new one per call).
_encode = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=str).encode
_last_stamp: tuple[int, str] = (-1, "")


def _now_rfc3339() -> str:
    """UTC with milliseconds; formatted once per millisecond (many records share one)."""
    global _last_stamp
    ms = time.time_ns() // 1_000_000
    if ms != _last_stamp[0]:
        when = datetime.fromtimestamp(ms / 1000, UTC)
        _last_stamp = (ms, when.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    return _last_stamp[1]


class AuditLog:
    def __init__(
        self, node_id: str, sink: Sink, *, queue_size: int, priority_queue_size: int,
        clock: Callable[[], str] = _now_rfc3339, linger_s: float = LINGER_S,
    ) -> None:
        self.node_id = node_id
        self._linger_s = linger_s
        self._sink = sink
        self._clock = clock
        self._data_send, self._data_recv = trio.open_memory_channel[dict[str, Any]](queue_size)
        self._prio_send, self._prio_recv = trio.open_memory_channel[dict[str, Any]](
            priority_queue_size)
        # Capacity 1: a doorbell. A full doorbell already means "the drainer will look";
        # `_bell_rung` says so without trying (and failing) to ring it again.
        self._bell_send, self._bell_recv = trio.open_memory_channel[None](1)
        self._bell_rung = False
        self._seq = 0
        self._dropped_ranges: list[list[int]] = []
        self._emitted = self._written = self._dropped = 0
        self._closed = False

    def emit(self, record: dict[str, Any], *, priority: bool = False) -> None:
        """Queue a record without ever waiting. Safe to call from any task of this trio run."""
        self._seq += 1
        seq = self._seq
        self._emitted += 1
        rec = {"ts": self._clock(), "node": self.node_id, "seq": seq, **record}
        if self._dropped_ranges:
            rec["dropped"] = self._dropped_ranges
        chan = self._prio_send if priority else self._data_send
        try:
            if self._closed:
                raise trio.WouldBlock
            chan.send_nowait(rec)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self._dropped += 1
            r = self._dropped_ranges
            if r and r[-1][1] == seq - 1:
                r[-1][1] = seq
            else:
                r.append([seq, seq])
            return
        self._dropped_ranges = []  # reported in-band on the record just queued
        if self._bell_rung:
            return
        try:
            self._bell_send.send_nowait(None)
            self._bell_rung = True
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def statistics(self) -> AuditStatistics:
        return AuditStatistics(
            self._emitted, self._written, self._dropped,
            self._data_send.statistics().current_buffer_used,
            self._prio_send.statistics().current_buffer_used,
        )

    def _take_batch(self) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        for chan in (self._prio_recv, self._data_recv):  # priority lane first
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(chan.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
        batch.sort(key=_by_seq)  # two sorted runs: one merge, and the file stays in seq order
        return batch

    async def _write(self, batch: list[dict[str, Any]]) -> None:
        lines = [_encode(r) for r in batch]
        try:
            await trio.to_thread.run_sync(self._sink.write_lines, lines, abandon_on_cancel=True)
        except OSError as e:
            log.error("audit sink write failed, %d records lost: %s", len(batch), e)
            self._dropped += len(batch)
            return
        self._written += len(batch)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The drainer: the only reader of both lanes. Returns after `close()` and a flush."""
        task_status.started()
        async with self._bell_recv:
            while True:
                batch = self._take_batch()
                if batch:
                    await self._write(batch)
                    continue
                if self._closed:
                    break
                try:
                    await self._bell_recv.receive()
                except trio.EndOfChannel:
                    self._closed = True
                    continue
                if self._linger_s > 0:
                    # Let the records of the next few milliseconds join this write: a worker
                    # thread hop per record would cost the node more than the write itself.
                    await trio.sleep(self._linger_s)
                self._bell_rung = False  # records emitted from now on ring again
        await trio.to_thread.run_sync(self._sink.close)

    def close(self) -> None:
        """Stop accepting records; the drainer flushes what is queued and returns."""
        if not self._closed:
            self._closed = True
            self._bell_send.close()


def make_sink(kind: str, path: Path | None, max_bytes: int, backups: int) -> Sink:
    if kind == "file":
        assert path is not None
        return FileSink(path, max_bytes, backups)
    if kind == "stdout":
        return StreamSink()
    return NullSink()
