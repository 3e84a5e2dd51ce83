"""The audit pipeline: never blocks a request, never hides a loss.

    request task --emit()--> [priority lane | data lane] --drainer task--> sink (file/stdout)

Every record gets the next per-node `seq` at emit time (and the node's `run`, a random id per
start, since `seq` starts again at 1), so the log itself proves completeness: each seq of a run
is either present or covered by a `dropped` range on a later record, and
`statistics().dropped` equals the records missing. A record is lost in one of three places,
and each one reports it in-band:

- a full lane (`emit` never waits): the next record that gets through carries the range;
- the sink (a write error, a full disk): the sink says exactly which lines reached it
  (loom/node/auditsink.py); the others, and the ranges they carried, ride on the first record
  of the next write that succeeds;
- shutdown: what is still unreported when the drainer stops (at the end of a clean flush, or
  when `close`'s grace deadline passes while the sink is stalled) goes into one final
  `"event": "audit_lost"` record, written with its own short bound, and the loss is logged.

Denials, spoofing attempts and admin commands use the priority lane, which data traffic cannot
fill. Sink writes are blocking I/O and run in a worker thread, in batches: the drainer lingers
`LINGER_S` after the first record so that a trickle of records still shares writes. Records are
in seq order within a write; between writes a priority record may precede data records with
lower seqs that were still queued (`loomctl audit verify` checks completeness in any order).
"""

from __future__ import annotations

import json
import logging
import operator
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import trio

from loom.node.auditsink import (
    FileSink,
    NullSink,
    Sink,
    SinkConfigError,
    SinkError,
    StreamSink,
    make_sink,
)

__all__ = ["AuditLog", "AuditStatistics", "FileSink", "NullSink", "Sink", "SinkConfigError",
           "StreamSink", "make_sink"]

log = logging.getLogger("loom.audit")

MAX_BATCH = 512  # records per sink write
LINGER_S = 0.005  # the drainer waits this long after a first record before writing
FINAL_WRITE_S = 1.0  # the bound on writing the final `audit_lost` record at shutdown


@dataclass(frozen=True, slots=True)
class AuditStatistics:
    emitted: int
    written: int
    dropped: int
    queued_data: int
    queued_priority: int
    lost_at_shutdown: int  # records the final flush could not write (included in `dropped`)


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


def _add_range(ranges: list[list[int]], lo: int, hi: int) -> None:
    """Add [lo, hi] to sorted, disjoint, non-adjacent `ranges` (small lists: a linear merge)."""
    out: list[list[int]] = []
    placed = False
    for a, b in ranges:
        if b + 1 < lo:
            out.append([a, b])
        elif hi + 1 < a:
            if not placed:
                out.append([lo, hi])
                placed = True
            out.append([a, b])
        else:
            lo, hi = min(lo, a), max(hi, b)
    if not placed:
        out.append([lo, hi])
    ranges[:] = sorted(out)


def _lost_ranges(ranges: list[list[int]], lost: Iterable[dict[str, Any]]) -> None:
    """A record that never reached the sink: its own seq and every range it carried."""
    for rec in lost:
        _add_range(ranges, rec["seq"], rec["seq"])
        for lo, hi in rec.get("dropped", ()):
            _add_range(ranges, lo, hi)


class AuditLog:
    def __init__(
        self, node_id: str, sink: Sink, *, queue_size: int, priority_queue_size: int,
        clock: Callable[[], str] = _now_rfc3339, linger_s: float = LINGER_S,
    ) -> None:
        self.node_id = node_id
        self.run_id = secrets.token_hex(4)
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
        self._dropped_ranges: list[list[int]] = []  # lost at a lane, not yet on a queued record
        self._sink_lost: list[list[int]] = []  # lost at the sink, not yet on a written record
        self._inflight: list[dict[str, Any]] | None = None  # the batch the sink is writing
        self._emitted = self._written = self._dropped = self._lost_at_shutdown = 0
        self._closed = False
        # Told (records, seconds) after each sink write: the metrics' sink latency.
        self.on_write: Callable[[int, float], None] | None = None
        # Cancelled when close()'s grace deadline passes with records still unwritten.
        self._drain_scope = trio.CancelScope()

    def emit(self, record: dict[str, Any], *, priority: bool = False) -> None:
        """Queue a record without ever waiting. Safe to call from any task of this trio run."""
        self._seq += 1
        seq = self._seq
        self._emitted += 1
        rec = {"ts": self._clock(), "node": self.node_id, "run": self.run_id, "seq": seq,
               **record}
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
            self._lost_at_shutdown,
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
        if self._sink_lost:
            # Ranges the sink lost earlier ride on this batch's first record (with what it
            # already carries); if that record is lost too, they are lost with it, below.
            first = batch[0]
            carried = [list(r) for r in first.get("dropped", ())]
            for lo, hi in self._sink_lost:
                _add_range(carried, lo, hi)
            first["dropped"] = carried
            self._sink_lost = []
        lines = [_encode(r) for r in batch]
        self._inflight = batch
        try:
            t0 = trio.current_time()
            await trio.to_thread.run_sync(self._sink.write_lines, lines, abandon_on_cancel=True)
            done = len(batch)
            if self.on_write is not None:
                self.on_write(done, trio.current_time() - t0)
        except SinkError as e:
            done = e.written
            log.error("audit sink write failed, %d of %d records lost (reported on the next "
                      "record written): %s", len(batch) - done, len(batch), e)
        except OSError as e:  # a sink that cannot say how far it got: none of it counts
            done = 0
            log.error("audit sink write failed, %d records lost (reported on the next record "
                      "written): %s", len(batch), e)
        self._inflight = None
        self._written += done
        if done < len(batch):
            self._dropped += len(batch) - done
            _lost_ranges(self._sink_lost, batch[done:])

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The drainer: the only reader of both lanes. Returns after `close()` and a flush, or
        when close()'s grace deadline passes; either way every loss is accounted for."""
        task_status.started()
        with self._drain_scope:
            await self._drain()
        if self._drain_scope.cancelled_caught:
            self._abandon()
        await self._final_record()
        with trio.move_on_after(FINAL_WRITE_S):
            await trio.to_thread.run_sync(self._sink.close, abandon_on_cancel=True)

    async def _drain(self) -> None:
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

    def _abandon(self) -> None:
        """The grace deadline passed: the batch being written and all still queued are lost."""
        lost: list[dict[str, Any]] = []
        if self._inflight is not None:
            abandon = getattr(self._sink, "abandon", None)
            done = abandon() if callable(abandon) else 0
            self._written += done
            lost += self._inflight[done:]
            self._inflight = None
        for chan in (self._prio_recv, self._data_recv):
            while True:
                try:
                    lost.append(chan.receive_nowait())
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
        self._dropped += len(lost)
        self._lost_at_shutdown += len(lost)
        _lost_ranges(self._sink_lost, lost)
        log.error("audit: shutdown grace deadline passed with the sink stalled: %d records "
                  "not written", len(lost))

    async def _final_record(self) -> None:
        """Report what no written record reports: one last record, or at least the log."""
        ranges = self._sink_lost
        for lo, hi in self._dropped_ranges:
            _add_range(ranges, lo, hi)
        self._dropped_ranges, self._sink_lost = [], []
        if not ranges:
            return
        self._seq += 1
        self._emitted += 1
        rec: dict[str, Any] = {"ts": self._clock(), "node": self.node_id, "run": self.run_id,
                               "seq": self._seq, "event": "audit_lost", "dropped": ranges}
        line = _encode(rec)
        final = getattr(self._sink, "write_final", None)
        written = False
        with trio.move_on_after(FINAL_WRITE_S):
            try:
                await trio.to_thread.run_sync(
                    final if callable(final) else self._sink.write_lines, [line],
                    abandon_on_cancel=True)
                written = True
            except (OSError, SinkError, SinkConfigError) as e:
                log.error("audit: the final record could not be written: %s", e)
        lost = sum(hi - lo + 1 for lo, hi in ranges)
        if written:
            self._written += 1
            log.error("audit: %d records lost, reported in a final record (seq %d): %s",
                      lost, rec["seq"], ranges)
        else:
            self._dropped += 1
            self._lost_at_shutdown += 1
            _add_range(ranges, rec["seq"], rec["seq"])
            log.error("audit: %d records lost and the final record could not be written: "
                      "run %s, seq ranges %s", lost + 1, self.run_id, ranges)

    def close(self, grace_s: float | None = None) -> None:
        """Stop accepting records; the drainer flushes what is queued and returns, at the
        latest `grace_s` from now (then what is left is counted lost and reported)."""
        if not self._closed:
            self._closed = True
            self._bell_send.close()
        if grace_s is not None:
            self._drain_scope.deadline = min(self._drain_scope.deadline,
                                             trio.current_time() + grace_s)
