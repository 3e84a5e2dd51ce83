"""Same log -> same state and results, across processes and hash seeds; restore mid-stream."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loom.state import StateLimits, StateMachine
from loom.state.machine import SNAPSHOT_FORMAT
from loom.wire.errors import Status
from tests.state.helpers import Driver
from tests.state.workload import LIMITS, commands, digest, run

ROOT = Path(__file__).resolve().parents[2]


def test_two_machines_byte_identical() -> None:
    a, outs_a = run(7, 1500)
    b, outs_b = run(7, 1500)
    assert a.snapshot() == b.snapshot()
    assert outs_a == outs_b
    statuses = {s for s, *_ in outs_a}
    assert Status.INTERNAL not in statuses
    assert Status.OK in statuses and Status.CONFLICT in statuses  # the workload is varied
    assert Status.NOT_FOUND in statuses


@given(st.integers(0, 10_000))
@settings(max_examples=40, deadline=None)
def test_only_the_owner_uses_a_session(seed: int) -> None:
    """A command naming a live session of another principal is answered as for an unknown
    session and leaves that session as it was."""
    sm = StateMachine(LIMITS)
    for i, cmd in enumerate(commands(seed, 300), start=1):
        sid = cmd.body.get("session_id")
        s = sm.sessions.items.get(sid) if isinstance(sid, int) else None
        foreign = (s is not None and s.principal != cmd.principal and cmd.seq == 0
                   and s.deadline > max(sm.core.now, cmd.time_ms))
        held = None if s is None else (s.deadline, dict(s.locks), dict(s.permits))
        out = sm.apply(cmd, i)
        if not foreign or s is None or not isinstance(sid, int):
            continue
        if cmd.op == "SESSION_CLOSE":
            assert out.status is Status.OK and out.value is False, (cmd, out)
        else:
            assert out.status is Status.NOT_FOUND, (cmd, out)
            assert out.message == f"session {sid} not found (closed or expired)"
        assert sm.sessions.items.get(sid) is s
        assert (s.deadline, s.locks, s.permits) == held


def test_other_processes_and_hash_seeds_agree() -> None:
    expected = digest(11, 800)
    for hashseed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        got = subprocess.run(
            [sys.executable, "-m", "tests.state.workload", "11", "800"], cwd=ROOT, env=env,
            capture_output=True, text=True, check=True).stdout.strip()
        assert got == expected, f"PYTHONHASHSEED={hashseed}"


@given(st.integers(0, 10_000), st.integers(1, 300))
@settings(max_examples=80, deadline=None)
def test_restore_mid_stream_behaves_identically(seed: int, cut: int) -> None:
    sm = StateMachine(LIMITS)
    twin: StateMachine | None = None
    for i, cmd in enumerate(commands(seed, 300), start=1):
        out = sm.apply(cmd, i)
        assert out.status is not Status.INTERNAL, out
        if twin is not None:
            assert twin.apply(cmd, i) == out
        if i == cut:
            snap = sm.snapshot()
            twin = StateMachine.restore(snap, LIMITS)
            assert twin.snapshot() == snap
            assert twin.core.total_bytes == sm.core.total_bytes
    assert twin is not None
    assert twin.snapshot() == sm.snapshot()
    assert twin.core.total_bytes == sm.core.total_bytes
    assert sm.core.total_bytes == sum(
        s.nbytes for f in sm.families.values() for s in f.items.values())


def _whole(sm: StateMachine) -> bytes:
    """The snapshot as one CBOR value, encoded at once (what `snapshot_chunks` must equal)."""
    return bytes(cbor2.dumps([
        SNAPSHOT_FORMAT, sm.applied_index, sm.core.now, sm.acl_version, sm.acl_policy,
        sm.sessions.dump(), sm.dedupe.dump(), [fam.dump() for fam in sm.families.values()],
        sm.members.dump(),
    ]))


@given(st.integers(0, 10_000))
@settings(max_examples=30, deadline=None)
def test_streamed_snapshot_is_the_whole_encoding(seed: int) -> None:
    sm = StateMachine(LIMITS)
    for i, cmd in enumerate(commands(seed, 300), start=1):
        sm.apply(cmd, i)
    assert b"".join(sm.snapshot_chunks()) == _whole(sm)


def test_streamed_snapshot_of_maps_larger_than_a_batch() -> None:
    """Maps of more entries than one encoding batch (and the CBOR head sizes around it), with
    TTLs and an LRU cache map, stream to the same bytes, in pieces of bounded size."""
    d = Driver(StateLimits(map_caches=(("cache", 10_000),)))
    for name, n in (("a", 23), ("b", 24), ("c", 4095), ("d", 4097), ("cache", 9000)):
        for lo in range(0, n, 1000):
            d.ok("MAP_PUT_ALL", name=name,
                 entries={f"k{i:06d}": b"v%d" % i for i in range(lo, min(n, lo + 1000))})
    d.ok("MAP_PUT", name="d", key="t", value=b"x", ttl_ms=60_000)
    sm = d.sm
    pieces = list(sm.snapshot_chunks())
    assert b"".join(pieces) == _whole(sm)
    assert max(map(len, pieces)) < 4096 * 64  # a batch of small entries, never a whole map
    assert StateMachine.restore(sm.snapshot(), d.limits).snapshot() == sm.snapshot()


def test_restore_from_pieces_reads_them_all() -> None:
    """Restoring from a file's chunks decodes as it reads, and reads to the end (where a
    snapshot file checks its end record); bytes after the snapshot are refused."""
    sm, _ = run(3, 400)
    snap = sm.snapshot()
    read: list[int] = []

    def pieces(data: bytes, size: int) -> Iterator[bytes]:
        for lo in range(0, len(data), size):
            read.append(lo)
            yield data[lo:lo + size]
        read.append(-1)  # exhausted

    for size in (1, 7, 4096, len(snap)):
        read.clear()
        assert StateMachine.restore_from(pieces(snap, size), LIMITS).snapshot() == snap
        assert read[-1] == -1
    with pytest.raises(ValueError, match="after the snapshot"):
        StateMachine.restore_from(pieces(snap + b"\x00", 4096), LIMITS)
