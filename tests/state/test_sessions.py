"""Session ownership: only the principal that opened a session may use it."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest

from loom.state import Command, StateMachine
from loom.wire.errors import Status
from tests.state.helpers import Driver, state_part

A, B = "alice", "bob"

# Every operation naming a session, as (op, body) with the session id filled in later.
SESSION_OPS: list[tuple[str, dict[str, Any]]] = [
    ("SESSION_HEARTBEAT", {}),
    ("LOCK_LOCK", {"name": "l"}),
    ("LOCK_LOCK", {"name": "l", "timeout_ms": 500}),
    ("LOCK_LOCK", {"name": "free", "timeout_ms": 500}),
    ("LOCK_TRY_LOCK", {"name": "l"}),
    ("LOCK_TRY_LOCK", {"name": "free"}),
    ("LOCK_UNLOCK", {"name": "l"}),
    ("SEMAPHORE_ACQUIRE", {"name": "s"}),
    ("SEMAPHORE_ACQUIRE", {"name": "s", "permits": 3, "timeout_ms": 500}),
    ("SEMAPHORE_TRY_ACQUIRE", {"name": "s"}),
    ("SEMAPHORE_RELEASE", {"name": "s"}),
    ("SEMAPHORE_RELEASE", {"name": "s", "permits": 2}),
]


def setup(d: Driver, principal: str = A) -> int:
    """A session of `principal` holding lock "l" and 2 of the 3 permits of semaphore "s"."""
    sid: int = d.ok("SESSION_OPEN", principal=principal, ttl_ms=60_000)["session_id"]
    d.ok("LOCK_LOCK", principal=principal, name="l", session_id=sid)
    d.ok("SEMAPHORE_INIT", name="s", permits=3)
    assert d.ok("SEMAPHORE_ACQUIRE", principal=principal, name="s", session_id=sid,
                permits=2) is True
    return sid


def snapshot_bytes(d: Driver) -> bytes:
    """The snapshot without the applied index and clock, which every apply advances."""
    return bytes(cbor2.dumps(state_part(d.sm)))


def assert_foreign(d: Driver, sid: int, principal: str) -> None:
    """Every use of `sid` by `principal` is answered as for an id that does not exist, and
    changes nothing."""
    unknown = 10_000 + sid
    for op, body in SESSION_OPS:
        before = snapshot_bytes(d)
        out = d.do(op, principal=principal, session_id=sid, **body)
        assert out.status is Status.NOT_FOUND and not out.wait, (op, body, out)
        assert out.message == f"session {sid} not found (closed or expired)"
        assert snapshot_bytes(d) == before, (op, body)
        missing = d.do(op, principal=principal, session_id=unknown, **body)
        assert (missing.status, missing.message.replace(str(unknown), str(sid))) \
            == (out.status, out.message), (op, body)
    before = snapshot_bytes(d)
    assert d.ok("SESSION_CLOSE", principal=principal, session_id=sid) is False
    assert d.ok("SESSION_CLOSE", principal=principal, session_id=unknown) is False
    out = d.do("BATCH_EXECUTE", principal=principal, ops=[
        {"op": "COUNTER_INCREMENT", "b": {"name": "c"}},
        {"op": "LOCK_UNLOCK", "b": {"name": "l", "session_id": sid}},
    ])
    assert out.status is Status.NOT_FOUND and out.details["op_index"] == 1
    out = d.do("BATCH_EXECUTE", principal=principal, ops=[
        {"op": "SEMAPHORE_RELEASE", "b": {"name": "s", "session_id": sid, "permits": 2}},
    ])
    assert out.status is Status.NOT_FOUND and out.details["op_index"] == 0
    assert snapshot_bytes(d) == before


def assert_held(d: Driver, sid: int) -> None:
    assert d.read("LOCK_GET_OWNER", name="l")["session_id"] == sid
    assert d.read("SEMAPHORE_AVAILABLE", name="s") == 1


def test_another_principal_cannot_use_a_session() -> None:
    d = Driver()
    sid = setup(d)
    assert_foreign(d, sid, B)
    assert_foreign(d, sid, "")  # internal/legacy commands are not a way around ownership
    assert_held(d, sid)
    # The owner still can.
    assert d.ok("SESSION_HEARTBEAT", principal=A, session_id=sid) == {
        "session_id": sid, "ttl_ms": 60_000}
    assert d.ok("LOCK_TRY_LOCK", principal=A, name="l", session_id=sid) == \
        d.read("LOCK_GET_OWNER", name="l")["token"]
    assert d.ok("LOCK_UNLOCK", principal=A, name="l", session_id=sid) == 1
    assert d.ok("LOCK_UNLOCK", principal=A, name="l", session_id=sid) == 0
    assert d.ok("SEMAPHORE_RELEASE", principal=A, name="s", session_id=sid) == 2
    assert d.ok("SESSION_CLOSE", principal=A, session_id=sid) is True
    assert d.read("SEMAPHORE_AVAILABLE", name="s") == 3


def test_close_by_owner_releases_what_the_session_holds() -> None:
    d = Driver()
    sid = setup(d)
    other: int = d.ok("SESSION_OPEN", principal=B)["session_id"]
    assert d.ok("LOCK_TRY_LOCK", principal=B, name="l", session_id=other) is None
    assert d.ok("SESSION_CLOSE", principal=B, session_id=sid) is False
    assert_held(d, sid)
    assert d.ok("SESSION_CLOSE", principal=A, session_id=sid) is True
    assert d.ok("LOCK_TRY_LOCK", principal=B, name="l", session_id=other) is not None
    assert d.ok("SEMAPHORE_TRY_ACQUIRE", principal=B, name="s", session_id=other,
                permits=3) is True


def test_empty_principal_matches_only_empty_owner() -> None:
    d = Driver()
    sid = setup(d, principal="")
    assert_foreign(d, sid, A)
    assert_held(d, sid)
    assert d.ok("LOCK_UNLOCK", name="l", session_id=sid) == 0
    assert d.ok("SESSION_CLOSE", session_id=sid) is True


def test_force_unlock_ignores_ownership() -> None:
    d = Driver()
    sid = setup(d)
    assert d.ok("LOCK_FORCE_UNLOCK", principal=B, name="l") is True
    assert d.read("LOCK_GET_OWNER", name="l")["session_id"] is None
    assert d.ok("SESSION_HEARTBEAT", principal=A, session_id=sid)["session_id"] == sid


def test_snapshot_restore_keeps_ownership() -> None:
    d = Driver()
    sid = setup(d)
    mine: int = d.ok("SESSION_OPEN", principal=B)["session_id"]
    snap = d.sm.snapshot()
    r = d.restored()
    assert r.sm.snapshot() == snap
    assert {i: s.principal for i, s in r.sm.sessions.items.items()} == {sid: A, mine: B}
    assert_foreign(r, sid, B)
    assert_foreign(r, mine, A)
    assert_held(r, sid)
    assert r.ok("LOCK_UNLOCK", principal=A, name="l", session_id=sid) == 0
    assert r.ok("SESSION_CLOSE", principal=B, session_id=mine) is True


def test_restore_of_format_1_snapshot_gives_sessions_the_empty_owner() -> None:
    d = Driver()
    sid = setup(d, principal="")
    fmt, *rest, members = cbor2.loads(d.sm.snapshot())
    assert fmt == 3 and members == {}
    rest[4] = [[i, ttl, deadline, locks, permits]  # sessions as format 1 wrote them
               for i, ttl, deadline, _, locks, permits in rest[4]]
    old = StateMachine.restore(cbor2.dumps([1, *rest]), d.limits)
    assert old.snapshot() == d.sm.snapshot()
    r = Driver(d.limits, old)
    r.index, r.now = d.index, d.now
    assert_foreign(r, sid, A)
    assert r.ok("LOCK_UNLOCK", name="l", session_id=sid) == 0
    with pytest.raises(ValueError, match="snapshot format"):
        StateMachine.restore(cbor2.dumps([4, *rest, members]), d.limits)


def test_command_encoding_carries_the_principal() -> None:
    c = Command("LOCK_UNLOCK", {"name": "l", "session_id": 7}, 123, "alice/c1", 4, A)
    assert Command.decode(c.encode()) == c
    legacy = cbor2.dumps(["SESSION_OPEN", {"ttl_ms": 1000}, 5, "c", 2])
    assert Command.decode(legacy) == Command("SESSION_OPEN", {"ttl_ms": 1000}, 5, "c", 2, "")
    assert Command("PING", {}, 0).principal == ""
    for bad in (cbor2.dumps(["PING", {}, 0]), cbor2.dumps({"op": "PING"})):
        with pytest.raises(ValueError, match="Command"):
            Command.decode(bad)


def test_session_opened_through_legacy_command_belongs_to_empty_principal() -> None:
    sm = StateMachine()
    legacy = Command.decode(cbor2.dumps(["SESSION_OPEN", {"ttl_ms": 5000}, 1, "", 0]))
    sid = sm.apply(legacy, 1).raise_for_status()["session_id"]
    out = sm.apply(Command("SESSION_HEARTBEAT", {"session_id": sid}, 2, principal=A), 2)
    assert out.status is Status.NOT_FOUND
    assert sm.apply(Command("SESSION_HEARTBEAT", {"session_id": sid}, 3), 3).status \
        is Status.OK
