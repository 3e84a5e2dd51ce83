"""FencedLock, Semaphore and CountDownLatch.

FencedLock invariants: owner == 0 <=> holds == 0; while held, `token` is the log index of the
apply at which the lock passed from free to held, so tokens strictly increase across holders
(log indexes do) and stay the same across reentrant holds; holds <= max_reentrancy; the owner
session lists the lock in Session.locks. A lock changes owner only through LOCK_LOCK,
LOCK_TRY_LOCK, LOCK_UNLOCK, LOCK_FORCE_UNLOCK and the end of the owning session.

Every operation naming a session first requires it live and owned by the command's principal
(Sessions.require), so no principal can acquire or release with another's session.

Semaphore invariants: available >= 0; holders[sid] > 0 permits held by live session sid, mirrored
in Session.permits; the permits of an ending session return to `available`.
Latch: count >= 0; LATCH_TRY_SET_COUNT only succeeds at 0.
"""

from __future__ import annotations

from typing import Any

from loom.state.base import Core, Family, Struct, canon
from loom.state.command import Outcome
from loom.state.sessions import Session, Sessions
from loom.wire.errors import Conflict, LimitExceeded

LOCK_BYTES = 120
SEM_BYTES = 150
LATCH_BYTES = 80


class LockS(Struct):
    __slots__ = ("holds", "owner", "token")

    def __init__(self) -> None:
        super().__init__()
        self.owner = 0
        self.holds = 0
        self.token = 0

    def size(self) -> int:
        return self.holds


class LockFamily(Family[LockS]):
    CATEGORY = "LOCK"

    def __init__(self, core: Core, sessions: Sessions) -> None:
        super().__init__(core)
        self.sessions = sessions

    def new(self) -> LockS:
        return LockS()

    def get_or_create(self, name: str) -> LockS:
        is_new = name not in self.items
        s = super().get_or_create(name)
        if is_new:
            self.core.charge(s, LOCK_BYTES)
        return s

    def _set(self, name: str, lk: LockS, owner: int, holds: int, token: int) -> None:
        """Journaled change of a lock, keeping the owner session's lock index true."""
        old = (lk.owner, lk.holds, lk.token)
        if lk.owner and lk.owner != owner:
            self._index(lk.owner, name, False)
        if owner and lk.owner != owner:
            self._index(owner, name, True)
        lk.owner, lk.holds, lk.token = owner, holds, token
        self.core.touch(self.CATEGORY, name)

        def undo() -> None:
            lk.owner, lk.holds, lk.token = old

        self.core.record(undo)

    def _index(self, sid: int, name: str, add: bool) -> None:
        s = self.sessions.items.get(sid)
        if s is None:
            return
        if add:
            s.locks[name] = None
        else:
            del s.locks[name]

        def undo() -> None:
            if add:
                del s.locks[name]
            else:
                s.locks[name] = None  # order of a session's locks is not semantic

        self.core.record(undo)

    def _acquire(self, name: str, sid: int) -> int | None:
        self.sessions.require(sid)
        lk = self.get_or_create(name)
        if lk.owner == 0:
            self._set(name, lk, sid, 1, self.core.index)
            return lk.token
        if lk.owner == sid:
            if lk.holds >= self.core.limits.max_reentrancy:
                raise LimitExceeded(
                    f"lock {name} is held {lk.holds} times by session {sid} "
                    f"(max_reentrancy {self.core.limits.max_reentrancy})")
            self._set(name, lk, sid, lk.holds + 1, lk.token)
            return lk.token
        return None

    def op_LOCK_LOCK(self, b: dict[str, Any]) -> Any:
        """-> the fencing token (int); with timeout_ms 0 and the lock held elsewhere, None;
        otherwise a waiting Outcome."""
        if b.get("timeout_ms", 0) > 0:
            lk = self.items.get(b["name"])
            if lk is not None and lk.owner not in (0, b["session_id"]):
                self.sessions.require(b["session_id"])
                return Outcome.waiting()
        return self._acquire(b["name"], b["session_id"])

    def op_LOCK_TRY_LOCK(self, b: dict[str, Any]) -> int | None:
        """-> the fencing token, or None if another session holds the lock."""
        return self._acquire(b["name"], b["session_id"])

    def op_LOCK_UNLOCK(self, b: dict[str, Any]) -> int:
        """-> holds remaining to the session (0: the lock is free). NOT_FOUND if the session is
        not live and ours (Sessions.require); CONFLICT if it does not hold the lock."""
        name, sid = b["name"], b["session_id"]
        self.sessions.require(sid)
        lk = self.items.get(name)
        if lk is None or lk.owner != sid:
            raise Conflict(f"lock {name} is not held by session {sid}")
        if lk.holds == 1:
            self._set(name, lk, 0, 0, 0)
        else:
            self._set(name, lk, sid, lk.holds - 1, lk.token)
        return lk.holds

    def op_LOCK_FORCE_UNLOCK(self, b: dict[str, Any]) -> bool:
        """-> whether the lock was held (it is now free)."""
        lk = self.items.get(b["name"])
        if lk is None or lk.owner == 0:
            return False
        self._set(b["name"], lk, 0, 0, 0)
        return True

    def _view(self, name: str) -> LockS | None:
        """The lock as a read at `now` sees it: an owner whose session is past its deadline
        (expiry not yet applied) no longer holds it."""
        lk = self.items.get(name)
        if lk is None or lk.owner == 0 or not self.sessions.live_at(lk.owner, self.core.now):
            return None
        return lk

    def op_LOCK_IS_LOCKED(self, b: dict[str, Any]) -> dict[str, Any]:
        """-> {"locked": bool, "token": int | None}."""
        lk = self._view(b["name"])
        return {"locked": lk is not None, "token": None if lk is None else lk.token}

    def op_LOCK_GET_OWNER(self, b: dict[str, Any]) -> dict[str, Any]:
        """-> {"session_id": int | None, "holds": int, "token": int | None}."""
        lk = self._view(b["name"])
        if lk is None:
            return {"session_id": None, "holds": 0, "token": None}
        return {"session_id": lk.owner, "holds": lk.holds, "token": lk.token}

    def release_session(self, sid: int, s: Session) -> None:
        for name in sorted(s.locks):
            self._set(name, self.items[name], 0, 0, 0)

    def destroy(self, name: str) -> bool:
        lk = self.items.get(name)
        if lk is not None and lk.owner:
            self._set(name, lk, 0, 0, 0)
        return super().destroy(name)

    def dump(self) -> Any:
        return [[n, lk.owner, lk.holds, lk.token, canon(lk.ops)]
                for n, lk in sorted(self.items.items())]

    def load(self, data: Any) -> None:
        for n, owner, holds, token, ops in data:
            lk = LockS()
            lk.owner, lk.holds, lk.token, lk.ops = owner, holds, token, ops
            lk.nbytes = LOCK_BYTES
            self.core.total_bytes += LOCK_BYTES
            self.items[n] = lk


class SemS(Struct):
    __slots__ = ("available", "holders", "initialized")

    def __init__(self) -> None:
        super().__init__()
        self.available = 0
        self.initialized = False
        self.holders: dict[int, int] = {}

    def size(self) -> int:
        return self.available


class SemaphoreFamily(Family[SemS]):
    CATEGORY = "SEMAPHORE"

    def __init__(self, core: Core, sessions: Sessions) -> None:
        super().__init__(core)
        self.sessions = sessions

    def new(self) -> SemS:
        return SemS()

    def get_or_create(self, name: str) -> SemS:
        is_new = name not in self.items
        s = super().get_or_create(name)
        if is_new:
            self.core.charge(s, SEM_BYTES)
        return s

    def _move(self, name: str, sem: SemS, sid: int, n: int) -> None:
        """Journaled: session sid takes n permits (n < 0: returns -n)."""
        held = sem.holders.get(sid, 0) + n
        s = self.sessions.items.get(sid)
        old_avail, old_held = sem.available, sem.holders.get(sid)
        old_s = None if s is None else s.permits.get(name)
        sem.available -= n
        if held:
            sem.holders[sid] = held
            if s is not None:
                s.permits[name] = held
        else:
            sem.holders.pop(sid, None)
            if s is not None:
                s.permits.pop(name, None)
        self.core.touch(self.CATEGORY, name)

        def undo() -> None:
            sem.available = old_avail
            if old_held is None:
                sem.holders.pop(sid, None)
            else:
                sem.holders[sid] = old_held
            if s is not None:
                if old_s is None:
                    s.permits.pop(name, None)
                else:
                    s.permits[name] = old_s

        self.core.record(undo)

    def op_SEMAPHORE_INIT(self, b: dict[str, Any]) -> bool:
        """-> whether the semaphore was initialised now (only the first INIT counts)."""
        sem = self.get_or_create(b["name"])
        if sem.initialized:
            return False
        old = sem.available
        sem.available += b["permits"]
        sem.initialized = True

        def undo() -> None:
            sem.available, sem.initialized = old, False

        self.core.record(undo)
        self.core.touch(self.CATEGORY, b["name"])
        return True

    def _try(self, b: dict[str, Any]) -> bool:
        self.sessions.require(b["session_id"])
        sem = self.get_or_create(b["name"])
        n = b.get("permits", 1)
        if sem.available < n:
            return False
        self._move(b["name"], sem, b["session_id"], n)
        return True

    def op_SEMAPHORE_ACQUIRE(self, b: dict[str, Any]) -> Any:
        """-> True if the permits were taken; False (timeout_ms 0) or a waiting Outcome."""
        if b.get("timeout_ms", 0) > 0:
            sem = self.items.get(b["name"])
            if sem is None or sem.available < b.get("permits", 1):
                self.sessions.require(b["session_id"])
                return Outcome.waiting()
        return self._try(b)

    def op_SEMAPHORE_TRY_ACQUIRE(self, b: dict[str, Any]) -> bool:
        """-> whether the permits were taken."""
        return self._try(b)

    def op_SEMAPHORE_RELEASE(self, b: dict[str, Any]) -> int:
        """-> permits now available. NOT_FOUND if the session is not live and ours
        (Sessions.require); CONFLICT if it holds fewer than `permits`."""
        name, sid, n = b["name"], b["session_id"], b.get("permits", 1)
        self.sessions.require(sid)
        sem = self.items.get(name)
        held = 0 if sem is None else sem.holders.get(sid, 0)
        if sem is None or held < n:
            raise Conflict(f"session {sid} holds {held} permits of semaphore {name}, not {n}")
        self._move(name, sem, sid, -n)
        return sem.available

    def op_SEMAPHORE_AVAILABLE(self, b: dict[str, Any]) -> int:
        """-> available permits, counting those of sessions past their deadline as returned."""
        sem = self.items.get(b["name"])
        if sem is None:
            return 0
        now = self.core.now
        return sem.available + sum(
            n for sid, n in sem.holders.items() if not self.sessions.live_at(sid, now))

    def release_session(self, sid: int, s: Session) -> None:
        for name, n in sorted(s.permits.items()):
            self._move(name, self.items[name], sid, -n)

    def destroy(self, name: str) -> bool:
        sem = self.items.get(name)
        if sem is not None:
            for sid, n in sorted(sem.holders.items()):
                self._move(name, sem, sid, -n)
        return super().destroy(name)

    def dump(self) -> Any:
        return [[n, s.available, s.initialized, sorted(s.holders.items()), canon(s.ops)]
                for n, s in sorted(self.items.items())]

    def load(self, data: Any) -> None:
        for n, available, initialized, holders, ops in data:
            s = SemS()
            s.available, s.initialized, s.holders, s.ops = (
                available, initialized, dict(holders), ops)
            s.nbytes = SEM_BYTES
            self.core.total_bytes += SEM_BYTES
            self.items[n] = s


class LatchS(Struct):
    __slots__ = ("count",)

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def size(self) -> int:
        return self.count


class LatchFamily(Family[LatchS]):
    CATEGORY = "LATCH"

    def new(self) -> LatchS:
        return LatchS()

    def _set(self, name: str, count: int) -> None:
        is_new = name not in self.items
        lt = self.get_or_create(name)
        if is_new:
            self.core.charge(lt, LATCH_BYTES)
        old = lt.count
        lt.count = count
        self.core.touch(self.CATEGORY, name)

        def undo() -> None:
            lt.count = old

        self.core.record(undo)

    def op_LATCH_TRY_SET_COUNT(self, b: dict[str, Any]) -> bool:
        """-> whether the count was set (only when it is 0)."""
        lt = self.items.get(b["name"])
        if lt is not None and lt.count > 0:
            return False
        self._set(b["name"], b["count"])
        return True

    def op_LATCH_COUNT_DOWN(self, b: dict[str, Any]) -> int:
        """-> the count after decrementing (never below 0)."""
        lt = self.items.get(b["name"])
        if lt is None or lt.count == 0:
            return 0
        self._set(b["name"], lt.count - 1)
        return lt.count

    def op_LATCH_GET_COUNT(self, b: dict[str, Any]) -> int:
        """-> the current count (0 for a latch never set)."""
        lt = self.items.get(b["name"])
        return 0 if lt is None else lt.count

    def op_LATCH_AWAIT(self, b: dict[str, Any]) -> Any:
        """-> True when the count is 0; False with timeout_ms 0; else a waiting Outcome."""
        if self.op_LATCH_GET_COUNT(b) == 0:
            return True
        return Outcome.waiting() if b.get("timeout_ms", 0) > 0 else False

    def dump(self) -> Any:
        return [[n, lt.count, canon(lt.ops)] for n, lt in sorted(self.items.items())]

    def load(self, data: Any) -> None:
        for n, count, ops in data:
            lt = LatchS()
            lt.count, lt.ops, lt.nbytes = count, ops, LATCH_BYTES
            self.core.total_bytes += LATCH_BYTES
            self.items[n] = lt
