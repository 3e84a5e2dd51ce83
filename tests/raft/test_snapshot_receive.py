"""A follower receiving InstallSnapshot: the core hands each accepted chunk to the driver once,
in order (Ready.snapshot_chunks), keeps none of the bytes, and installs only a whole transfer
of one leader, term, snapshot index and size."""

from __future__ import annotations

import random

import pytest

from loom.raft import RaftConfig, RaftCore
from loom.raft import messages as m
from loom.raft.ready import BytesSink, BytesSource, Ready, SnapshotChunk
from loom.raft.types import SnapshotMeta

DATA = bytes(range(256)) * 4  # 1,024 bytes, sent in chunks of 256


def follower(**kw: object) -> RaftCore:
    return RaftCore(RaftConfig("n2", **kw), random.Random(1))  # type: ignore[arg-type]


def chunk(offset: int, *, frm: str = "n1", term: int = 1, index: int = 50, data: bytes = DATA,
          size: int = 256) -> m.InstallSnapshot:
    piece = data[offset:offset + size]
    return m.InstallSnapshot("n2", frm, term, index, 1, ("n1", "n2", "n3"), (), offset, piece,
                             len(data), offset + len(piece) == len(data))


def turn(core: RaftCore, *msgs: m.Message) -> Ready:
    """Step the messages, take the Ready (advanced by the caller)."""
    for msg in msgs:
        core.step(msg)
    rd = core.ready()
    assert rd is not None
    return rd


def acked(rd: Ready) -> list[int]:
    return [x.offset for x in rd.messages if isinstance(x, m.SnapshotResponse)]


def test_chunks_are_handed_over_once_in_order_and_installed_whole() -> None:
    core, sink = follower(), BytesSink()
    rd = turn(core, chunk(0), chunk(256))
    assert [(c.offset, len(c.data), c.total) for c in rd.snapshot_chunks] == [(0, 256, 1024),
                                                                            (256, 256, 1024)]
    assert rd.snapshot is None and acked(rd) == [256, 512]
    for c in rd.snapshot_chunks:
        sink.write(c)
    core.advance(rd)
    rd = turn(core, chunk(512), chunk(768))
    assert rd.snapshot == SnapshotMeta(50, 1, rd.snapshot_chunks[0].meta.conf)
    assert rd.must_sync  # durable before the acknowledgement leaves
    for c in rd.snapshot_chunks:
        sink.write(c)
    data = sink.take(rd.snapshot)
    assert data == DATA
    with pytest.raises(RuntimeError, match="stored"):  # the core holds no bytes: where are they?
        core.advance(rd)
    core.snapshot_stored(50, BytesSource(data))
    core.advance(rd)
    assert core.log.committed == 50 and core.snapshot_meta.index == 50


def test_out_of_order_and_repeated_chunks_are_not_handed_over() -> None:
    core = follower()
    rd = turn(core, chunk(0), chunk(512), chunk(0), chunk(256), chunk(256))
    # ahead of the transfer (a lost chunk): refused; repeated: refused; each answer says where
    # the transfer stands, so the leader resends from there
    assert [c.offset for c in rd.snapshot_chunks] == [0, 256]
    assert acked(rd) == [256, 256, 256, 512, 512]
    assert rd.snapshot is None
    core.advance(rd)


def test_a_new_leader_term_or_snapshot_restarts_the_transfer() -> None:
    core = follower()
    core.advance(turn(core, chunk(0), chunk(256)))
    # the next term's leader goes on where the old one was: not taken, the transfer restarts
    rd = turn(core, chunk(512, frm="n3", term=2))
    assert rd.snapshot_chunks == () and acked(rd) == [0]
    core.advance(rd)
    rd = turn(core, chunk(0, frm="n3", term=2, index=60))
    assert [(c.offset, c.meta.index) for c in rd.snapshot_chunks] == [(0, 60)]
    core.advance(rd)
    # the first snapshot's last chunks cannot complete the new one (another index)
    rd = turn(core, chunk(512, frm="n3", term=2), chunk(768, frm="n3", term=2))
    assert rd.snapshot_chunks == () and rd.snapshot is None and acked(rd) == [0, 0]


def test_a_torn_transfer_is_never_installed() -> None:
    core = follower()
    # the last chunk, cut short: it does not reach the announced size
    short = m.InstallSnapshot("n2", "n1", 1, 50, 1, ("n1",), (), 0, DATA[:100], len(DATA), True)
    rd = turn(core, short)
    assert rd.snapshot is None and acked(rd) == [100]
    core.advance(rd)
    # more bytes than announced: refused
    over = m.InstallSnapshot("n2", "n1", 1, 50, 1, ("n1",), (), 100, DATA, len(DATA), True)
    rd = turn(core, over)
    assert rd.snapshot_chunks == () and rd.snapshot is None and acked(rd) == [100]
    core.advance(rd)
    assert core.snapshot_meta.index == 0 and core.log.committed == 0


def test_a_snapshot_over_the_size_limit_is_refused() -> None:
    core = follower(max_snapshot_bytes=1000)
    rd = turn(core, chunk(0))
    assert rd.snapshot_chunks == () and acked(rd) == [0]
    core.advance(rd)
    small = follower(max_snapshot_bytes=1024)
    rd = turn(small, chunk(0))
    assert len(rd.snapshot_chunks) == 1


def test_the_memory_sink_refuses_a_chunk_that_does_not_continue_the_transfer() -> None:
    meta = SnapshotMeta(50, 1)
    sink = BytesSink()
    sink.write(SnapshotChunk(meta, 0, b"ab", 4))
    with pytest.raises(ValueError, match="continue"):
        sink.write(SnapshotChunk(meta, 3, b"c", 4))
    with pytest.raises(ValueError, match="whole"):
        sink.take(meta)
    sink.write(SnapshotChunk(meta, 2, b"cd", 4))
    assert sink.take(meta) == b"abcd"
