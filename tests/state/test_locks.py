"""Sessions, FencedLock, Semaphore, CountDownLatch."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from loom.state import StateLimits
from loom.wire.errors import Status
from tests.state.helpers import Driver, state_part


def open_session(d: Driver, ttl: int = 5000, principal: str = "") -> int:
    sid: int = d.ok("SESSION_OPEN", ttl_ms=ttl, principal=principal)["session_id"]
    return sid


OWNERS = ["alice", "bob", "alice"]  # owner of each of the model's three sessions


@given(st.lists(st.tuples(st.sampled_from(["lock", "try", "unlock", "force", "expire",
                                           "heartbeat", "close", "snap"]),
                          st.integers(0, 2), st.sampled_from(["owner", "bob", ""])),
                max_size=60))
@settings(max_examples=200, deadline=None)
def test_fencing_tokens_increase_and_only_owner_unlocks(
        steps: list[tuple[str, int, str]]) -> None:
    d = Driver(StateLimits(max_reentrancy=3))
    sids = [open_session(d, 2000, p) for p in OWNERS]
    alive = set(sids)
    owner, holds, token = 0, 0, 0
    tokens: list[int] = []  # token at each transition free -> held
    for step, who, as_ in steps:
        action = step
        sid = sids[who]
        principal = OWNERS[who] if as_ == "owner" else as_
        if principal != OWNERS[who] and action in ("lock", "try", "unlock", "heartbeat",
                                                   "close"):
            # Another principal's session: refused as if it did not exist, nothing changes.
            op = {"lock": "LOCK_LOCK", "try": "LOCK_TRY_LOCK", "unlock": "LOCK_UNLOCK",
                  "heartbeat": "SESSION_HEARTBEAT", "close": "SESSION_CLOSE"}[action]
            body: dict[str, Any] = {} if action in ("heartbeat", "close") else {"name": "l"}
            before = state_part(d.sm)
            out = d.do(op, principal=principal, session_id=sid, **body)
            if action == "close":
                assert out.status is Status.OK and out.value is False
            else:
                assert out.status is Status.NOT_FOUND
                assert out.message == f"session {sid} not found (closed or expired)"
            assert state_part(d.sm) == before
            action = "check"
        if action in ("lock", "try"):
            op = "LOCK_LOCK" if action == "lock" else "LOCK_TRY_LOCK"
            out = d.do(op, principal=principal, name="l", session_id=sid)
            if sid not in alive:
                assert out.status is Status.NOT_FOUND and "session" in out.message
                continue
            if owner in (0, sid):
                if holds == 3:
                    assert out.status is Status.LIMIT_EXCEEDED
                    continue
                if owner == 0:
                    tokens.append(out.value)
                    token = out.value
                owner, holds = sid, holds + 1
                assert out.value == token
            else:
                assert out.value is None
        elif action == "unlock":
            out = d.do("LOCK_UNLOCK", principal=principal, name="l", session_id=sid)
            if sid not in alive:
                assert out.status is Status.NOT_FOUND
            elif owner != sid:
                assert out.status is Status.CONFLICT
            else:
                holds -= 1
                owner = sid if holds else 0
                assert out.value == holds
        elif action == "force":  # administrative: whoever asks, whoever holds
            assert d.ok("LOCK_FORCE_UNLOCK", principal=principal, name="l") == (owner != 0)
            owner, holds = 0, 0
        elif action == "heartbeat":
            out = d.do("SESSION_HEARTBEAT", principal=principal, session_id=sid)
            assert out.status is (Status.OK if sid in alive else Status.NOT_FOUND)
        elif action == "close":
            assert d.ok("SESSION_CLOSE", principal=principal, session_id=sid) is (sid in alive)
            alive.discard(sid)
            if owner == sid:
                owner, holds = 0, 0
        elif action == "expire":
            d.now += 2001  # every session is past its deadline
            d.ok("COUNTER_INCREMENT", name="tick")  # any apply expires them
            owner, holds = 0, 0
            sids = [open_session(d, 2000, p) for p in OWNERS]
            alive = set(sids)
        elif action == "snap":
            d = d.restored()
        info = d.read("LOCK_GET_OWNER", name="l")
        assert info == {"session_id": owner or None, "holds": holds,
                        "token": token if owner else None}
    assert tokens == sorted(set(tokens))  # strictly increasing across holders


def test_expired_session_loses_lock_and_permits() -> None:
    d = Driver()
    a, b = open_session(d, 1000), open_session(d, 60_000)
    t1 = d.ok("LOCK_LOCK", name="l", session_id=a)
    d.ok("SEMAPHORE_INIT", name="s", permits=2)
    assert d.ok("SEMAPHORE_ACQUIRE", name="s", session_id=a, permits=2) is True
    assert d.ok("SEMAPHORE_TRY_ACQUIRE", name="s", session_id=b) is False
    assert d.do("LOCK_LOCK", name="l", session_id=b, timeout_ms=500).wait
    assert d.do("SEMAPHORE_ACQUIRE", name="s", session_id=b, timeout_ms=500).wait
    d.now += 999
    d.ok("SESSION_HEARTBEAT", session_id=b)
    assert d.read("LOCK_IS_LOCKED", name="l") == {"locked": True, "token": t1}
    d.now += 1
    # Reads already see the expiry; the next apply performs it.
    assert d.read("LOCK_IS_LOCKED", name="l") == {"locked": False, "token": None}
    assert d.read("SEMAPHORE_AVAILABLE", name="s") == 2
    t2 = d.ok("LOCK_LOCK", name="l", session_id=b, timeout_ms=500)
    assert t2 > t1
    assert ("LOCK", "l") in d.sm.changed_structures
    assert d.ok("SEMAPHORE_ACQUIRE", name="s", session_id=b, permits=2) is True
    out = d.do("SESSION_HEARTBEAT", session_id=a)
    assert out.status is Status.NOT_FOUND
    assert d.do("LOCK_UNLOCK", name="l", session_id=a).status is Status.NOT_FOUND
    assert d.ok("SESSION_CLOSE", session_id=b) is True
    assert d.read("SEMAPHORE_AVAILABLE", name="s") == 2
    assert d.read("LOCK_GET_OWNER", name="l")["session_id"] is None


def test_semaphore_release_by_non_holder_conflicts() -> None:
    d = Driver()
    a, b = open_session(d), open_session(d)
    d.ok("SEMAPHORE_INIT", name="s", permits=3)
    assert d.ok("SEMAPHORE_INIT", name="s", permits=9) is False
    d.ok("SEMAPHORE_ACQUIRE", name="s", session_id=a, permits=2)
    before = state_part(d.sm)
    assert d.do("SEMAPHORE_RELEASE", name="s", session_id=b).status is Status.CONFLICT
    assert d.do("SEMAPHORE_RELEASE", name="s", session_id=a, permits=3).status \
        is Status.CONFLICT
    assert state_part(d.sm) == before
    assert d.ok("SEMAPHORE_RELEASE", name="s", session_id=a, permits=2) == 3
    assert d.ok("SEMAPHORE_ACQUIRE", name="s", session_id=b, permits=4, timeout_ms=0) is False


def test_latch() -> None:
    d = Driver()
    assert d.read("LATCH_AWAIT", name="x", timeout_ms=0) is True
    assert d.ok("LATCH_TRY_SET_COUNT", name="x", count=2) is True
    assert d.ok("LATCH_TRY_SET_COUNT", name="x", count=5) is False
    assert d.read("LATCH_AWAIT", name="x", timeout_ms=0) is False
    assert d.sm.read(d.cmd("LATCH_AWAIT", name="x", timeout_ms=10)).wait
    assert d.ok("LATCH_COUNT_DOWN", name="x") == 1
    assert d.ok("LATCH_COUNT_DOWN", name="x") == 0
    assert d.ok("LATCH_COUNT_DOWN", name="x") == 0
    assert d.read("LATCH_AWAIT", name="x", timeout_ms=10) is True
    assert d.ok("LATCH_TRY_SET_COUNT", name="x", count=1) is True


def test_session_limit_and_batch_lock_rollback() -> None:
    d = Driver(StateLimits(max_sessions=1))
    a = open_session(d)
    assert d.do("SESSION_OPEN", ttl_ms=1000).status is Status.LIMIT_EXCEEDED
    before = state_part(d.sm)
    out = d.do("BATCH_EXECUTE", ops=[
        {"op": "LOCK_TRY_LOCK", "b": {"name": "l", "session_id": a}},
        {"op": "SEMAPHORE_RELEASE", "b": {"name": "s", "session_id": a}},
    ])
    assert out.status is Status.CONFLICT and out.details["op_index"] == 1
    assert "ops[1] (SEMAPHORE_RELEASE)" in out.message
    assert state_part(d.sm) == before
