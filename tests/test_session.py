"""The session protocol (wire/session.py) and the framed read loop (wire/framed.py)."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from loom.wire import catalog
from loom.wire.codec import HEADER, PRE_HELLO_MAX_FRAME, Request, encode
from loom.wire.errors import BadRequest, Status, TooLarge, Unauthenticated, UnsupportedVersion
from loom.wire.framed import FramedReader
from loom.wire.session import (
    TRANSITIONS,
    Event,
    LocalProtocolError,
    RemoteProtocolError,
    Session,
    SessionLimits,
    State,
    accept_hello,
    check_peer_hello,
    negotiate_version,
)

LIMITS = SessionLimits(max_frame=1 << 16, hello_timeout_s=5.0, idle_timeout_s=30.0)
HELLO = catalog.BY_NAME["HELLO"].opcode


def frame_of(n: int) -> bytes:
    """A frame whose payload is `n` bytes (the content does not matter to the session)."""
    return HEADER.pack(n) + b"x" * n


def test_the_table_has_one_way_in_and_every_way_out() -> None:
    assert set(TRANSITIONS) == set(State)
    for state in (State.AWAIT_HELLO, State.OPEN):
        for ending in (Event.EOF, Event.TIMEOUT, Event.PROTOCOL_ERROR, Event.CLOSE):
            assert TRANSITIONS[state][ending] is State.CLOSED
    assert [s for s, row in TRANSITIONS.items() if Event.HELLO_ACCEPTED in row] == [
        State.AWAIT_HELLO]
    assert TRANSITIONS[State.CLOSED] == {Event.CLOSE: State.CLOSED}  # final


def test_pre_hello_frames_are_limited_to_4_kib() -> None:
    s = Session(LIMITS, now=0.0)
    s.receive_data(frame_of(PRE_HELLO_MAX_FRAME))
    assert s.next_payload() == b"x" * PRE_HELLO_MAX_FRAME
    s.receive_data(HEADER.pack(PRE_HELLO_MAX_FRAME + 1))  # refused on the prefix alone
    with pytest.raises(RemoteProtocolError) as info:
        s.next_payload()
    assert isinstance(info.value.answer, TooLarge)
    assert s.state is State.CLOSED and not s.open and "exceeds the limit of 4096" in str(
        s.ended_by)
    assert s.next_payload() is None


def test_after_hello_the_limit_is_max_frame() -> None:
    s = Session(LIMITS, now=0.0)
    assert not s.open
    s.hello_accepted()
    assert s.open and s.greeted and s.max_frame == LIMITS.max_frame
    s.receive_data(frame_of(LIMITS.max_frame))
    assert s.next_payload() is not None
    s.receive_data(HEADER.pack(LIMITS.max_frame + 1))
    with pytest.raises(RemoteProtocolError):
        s.next_payload()


def test_an_empty_frame_is_a_bad_request() -> None:
    s = Session(LIMITS, now=0.0)
    s.receive_data(HEADER.pack(0))
    with pytest.raises(RemoteProtocolError) as info:
        s.next_payload()
    assert info.value.answer.status is Status.BAD_REQUEST


def test_deadlines_follow_the_state() -> None:
    s = Session(LIMITS, now=100.0)
    assert s.deadline(now=101.0) == s.deadline(now=104.0) == 105.0  # fixed: HELLO by then
    s.hello_accepted()
    assert s.deadline(now=200.0) == 230.0  # idle: counted from each read
    assert s.timed_out() == "idle timeout" and s.state is State.CLOSED
    t = Session(LIMITS, now=0.0)
    assert t.timed_out() == "no HELLO in time"
    client = Session(SessionLimits(max_frame=1 << 20, hello_timeout_s=1.0), now=0.0)
    client.hello_accepted()
    assert client.deadline(now=5.0) == math.inf


def test_events_not_in_the_table_are_local_errors() -> None:
    s = Session(LIMITS, now=0.0)
    s.hello_accepted()
    with pytest.raises(LocalProtocolError, match="HELLO_ACCEPTED is not allowed in OPEN"):
        s.hello_accepted()
    s.receive_data(b"")
    assert s.state is State.CLOSED and s.ended_by == "closed by the other side"
    with pytest.raises(LocalProtocolError):
        s.receive_data(b"more")
    s.close("again")  # closing twice is harmless
    assert s.ended_by == "closed by the other side"  # the first reason stays


@given(st.lists(st.integers(1, 300), max_size=8), st.lists(st.integers(1, 50), max_size=40))
def test_chunking_does_not_change_the_payloads(sizes: list[int], cuts: list[int]) -> None:
    data = b"".join(HEADER.pack(n) + bytes([n % 256]) * n for n in sizes)
    s = Session(LIMITS, now=0.0)
    s.hello_accepted()
    got: list[bytes] = []
    pos = 0
    for c in [*cuts, len(data)]:
        if pos >= len(data):
            break
        s.receive_data(data[pos:pos + c])
        pos += c
        while (p := s.next_payload()) is not None:
            got.append(p)
    assert [len(p) for p in got] == sizes


def hello(headers: dict[str, str] | None = None, *, op: int = HELLO, lo: int = 1,
          hi: int = 1) -> Request:
    return Request(1, 1, op, {"client_name": "t", "min_version": lo, "max_version": hi},
                   headers or {})


def test_hello_rules_on_their_own() -> None:
    assert accept_hello(hello()).version == 1
    with pytest.raises(BadRequest, match="must be HELLO"):
        accept_hello(hello(op=catalog.BY_NAME["PING"].opcode))
    with pytest.raises(UnsupportedVersion):
        accept_hello(hello(lo=2, hi=3))
    with pytest.raises(Unauthenticated):
        accept_hello(hello({"X-Auth-User": "u"}))
    assert negotiate_version(1, 9, supported=(1, 2, 3)) == 3
    check_peer_hello({"node": "n2", "cluster": "c"}, "n2", "c")
    with pytest.raises(BadRequest, match="certificate"):
        check_peer_hello({"node": "n3", "cluster": "c"}, "n2", "c")
    with pytest.raises(BadRequest, match="cluster"):
        check_peer_hello({"node": "n2", "cluster": "d"}, "n2", "c")


async def test_reader_hands_on_frames_in_order_and_ends_at_eof() -> None:
    send, recv = trio.testing.memory_stream_pair()
    s = Session(LIMITS, now=trio.current_time())
    reader = FramedReader(s, recv.receive_some, trio.CancelScope(), trio.current_time)
    got: list[bytes] = []

    async def handle(payload: bytes) -> None:
        got.append(payload)
        if not s.open:
            s.hello_accepted()
        assert not reader.waiting  # no read while a payload is being handled

    async with trio.open_nursery() as n:
        async def feed() -> None:
            await send.send_all(encode({"a": 1}) + encode({"b": 2})[:3])
            await trio.sleep(0.01)
            assert reader.waiting
            await send.send_all(encode({"b": 2})[3:])
            await send.aclose()
        n.start_soon(feed)
        assert await reader.run(handle) is None
    assert len(got) == 2 and s.state is State.CLOSED


async def test_reader_enforces_the_hello_deadline(autojump_clock: trio.abc.Clock) -> None:
    _send, recv = trio.testing.memory_stream_pair()
    s = Session(LIMITS, now=trio.current_time())
    reader = FramedReader(s, recv.receive_some, trio.CancelScope(), trio.current_time)
    start = trio.current_time()
    assert await reader.run(lambda p: None) == "no HELLO in time"
    assert trio.current_time() - start == pytest.approx(LIMITS.hello_timeout_s)
