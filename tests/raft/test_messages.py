from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loom.raft import messages as m
from loom.raft.types import Entry, EntryType

SAMPLES: list[m.Message] = [
    m.AppendEntries("n2", "n1", 3, 7, 2, (Entry(3, 8, EntryType.NORMAL, b"x"),
                                         Entry(3, 9, EntryType.NOOP, b"")), 6),
    m.AppendResponse("n1", "n2", 3, 9, False, 0, 0),
    m.AppendResponse("n1", "n2", 3, 9, True, 0, 0, joining=True),
    m.RequestVote("n2", "n1", 4, 9, 3, True),
    m.VoteResponse("n1", "n2", 4, True),
    m.PreVote("n2", "n1", 5, 9, 3, False),
    m.PreVoteResponse("n1", "n2", 5, False),
    m.Heartbeat("n2", "n1", 3, 6, 12),
    m.HeartbeatResponse("n1", "n2", 3, 12),
    m.HeartbeatResponse("n1", "n2", 3, 12, joining=True),
    m.InstallSnapshot("n4", "n1", 3, 100, 2, ("n1", "n2"), ("n4",), 64, b"chunk", 300, False),
    m.SnapshotResponse("n1", "n4", 3, 100, 69, False),
    m.TimeoutNow("n2", "n1", 3),
    m.ReadIndex("n1", "n3", 3, b"ctx"),
    m.ReadIndexResponse("n3", "n1", 3, b"ctx", 6),
]


def test_every_kind_has_a_sample_and_a_unique_name() -> None:
    assert {type(s) for s in SAMPLES} == set(m.MESSAGE_TYPES)
    assert len(set(m.RAFT_MESSAGE_NAMES)) == len(m.RAFT_MESSAGE_NAMES)
    assert all(n.startswith("RAFT_") for n in m.RAFT_MESSAGE_NAMES)


def test_joining_costs_nothing_unless_set() -> None:
    """Every acknowledgement carries the flag; only a joining node's spends bytes on it, and a
    sender that predates it (no field) reads as not joining."""
    plain = m.HeartbeatResponse("n1", "n2", 3, 12).to_wire()
    assert "joining" not in plain and m.from_wire(plain) == m.HeartbeatResponse("n1", "n2", 3, 12)
    assert m.HeartbeatResponse("n1", "n2", 3, 12, joining=True).to_wire()["joining"] is True
    with pytest.raises(m.MalformedMessage):
        m.from_wire({**plain, "joining": 1})


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda s: type(s).__name__)
def test_round_trip(msg: m.Message) -> None:
    wire = msg.to_wire()
    assert m.from_wire(wire) == msg
    assert all(type(v) in (str, int, bool, bytes, list) for v in wire.values())


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("term"),
        lambda d: d.__setitem__("extra", 1),
        lambda d: d.__setitem__("kind", "RAFT_NOPE"),
        lambda d: d.__setitem__("kind", 7),
        lambda d: d.__setitem__("term", True),
        lambda d: d.__setitem__("term", -1),
        lambda d: d.__setitem__("term", 1 << 64),
        lambda d: d.__setitem__("frm", ""),
        lambda d: d.__setitem__("frm", "x" * 65),
        lambda d: d.__setitem__("to", b"n2"),
        lambda d: d.__setitem__("entries", [[1, 2, 9, b""]]),
        lambda d: d.__setitem__("entries", [[1, 2, 0]]),
        lambda d: d.__setitem__("entries", [[1, 2, 0, "str"]]),
        lambda d: d.__setitem__("entries", [[1, 2, 0, b""]] * (m.MAX_ENTRIES_PER_MESSAGE + 1)),
        lambda d: d.__setitem__("entries", "nope"),
    ],
)
def test_malformed_rejected(mutate: object) -> None:
    d = SAMPLES[0].to_wire()
    mutate(d)  # type: ignore[operator]
    with pytest.raises(m.MalformedMessage):
        m.from_wire(d)


def test_non_dict_rejected() -> None:
    for bad in (None, [], "x", 3, b"x"):
        with pytest.raises(ValueError, match="map"):
            m.from_wire(bad)


_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.binary(max_size=8),
                     st.text(max_size=8))


@given(st.dictionaries(st.sampled_from(["kind", "to", "frm", "term", "index", "log_term",
                                        "entries", "commit", "seq", "ctx", "reject"]),
                       st.one_of(_scalars, st.sampled_from(m.RAFT_MESSAGE_NAMES),
                                 st.lists(_scalars, max_size=4))))
def test_fuzz_never_crashes(d: dict[str, object]) -> None:
    try:
        msg = m.from_wire(d)
    except m.MalformedMessage:
        return
    assert m.from_wire(msg.to_wire()) == msg


def test_install_snapshot_carries_removed_ids() -> None:
    msg = m.InstallSnapshot("n4", "n1", 3, 100, 2, ("n1", "n2"), ("n4",), 0, b"x", 1, True,
                            ("n3", "n7"))
    assert m.from_wire(msg.to_wire()) == msg
    old = msg.to_wire()
    del old["removed"]  # a sender that predates the field
    assert m.from_wire(old) == replace(msg, removed=())
