"""The replicated state machine: dispatch by op name, deduplication, atomicity, snapshots.

Every family (map.py, queue.py, collections.py, topic.py, atomics.py, locks.py, sessions.py) is
usable through `StateMachine.apply` / `read`; MAP_* was the first family complete and is the
most exercised (tests/state/test_map.py).

apply(cmd, index), in order:
1. the log clock `now` becomes max(now, cmd.time_ms) (it never goes backwards, so TTLs,
   session deadlines and ids never see time reverse after a leader change); the command's
   principal becomes `core.principal`: sessions it opens are its own, and sessions of other
   principals are, to it, as if they did not exist (sessions.py);
2. housekeeping, bounded by StateLimits.housekeeping_budget per kind: expire due sessions
   (releasing their locks and permits), purge expired map entries, forget idle dedupe clients;
   a session named by the command (or the owner of the lock it names) is expired now if due;
3. deduplication: a (client_id, seq > 0) already applied returns the stored Outcome, or,
   when both carry a request fingerprint and they differ, a CONFLICT refusal (reason
   IDEMPOTENCY_KEY_REUSED) that changes nothing and is not stored (dedupe.py);
3a. the ACL version: a client's write authorized under another policy version than the one at
   its log position is refused (FORBIDDEN, reason POLICY_CHANGED), changes nothing and is not
   stored for deduplication, so its proposer may decide it again and propose it anew (D8: a
   revocation is in force for every write after it in the log, whichever policy the leader
   had applied when it authorized the write);
4. the handler runs with an undo journal; on any LoomError every change it made is undone and
   the error is the outcome (so a refused command, or a BATCH_EXECUTE with one failing inner
   op, changes nothing); an unexpected exception is undone too and answers INTERNAL;
5. a non-waiting outcome of a deduplicated command is stored.

read(cmd) runs the catalog's log reads (`Execution.LOG_READ`) against `max(now, cmd.time_ms)`
and never changes anything.
Determinism: no wall clock, no randomness; every container iterated in apply is a dict
(insertion order, itself a function of the log) or sorted; never a set of str.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import cbor2

from loom.state.atomics import CounterFamily, IdGenFamily, RefFamily
from loom.state.base import (
    CATEGORIES,
    Core,
    Family,
    Struct,
    cbor_array_head,
    decode_cursor,
    encode_cursor,
)
from loom.state.collections import ListFamily, SetFamily
from loom.state.command import POLICY_CHANGED, Command, Outcome, checked_body
from loom.state.dedupe import DedupeTable
from loom.state.limits import StateLimits
from loom.state.locks import LatchFamily, LockFamily, SemaphoreFamily
from loom.state.map import MapFamily
from loom.state.members import MemberAddresses
from loom.state.queue import QueueFamily
from loom.state.sessions import Session, Sessions
from loom.state.topic import TopicFamily
from loom.wire.catalog import BY_NAME, Execution
from loom.wire.errors import (
    BadRequest,
    Conflict,
    Internal,
    LoomError,
    NotFound,
    Status,
    TooLarge,
)

SNAPSHOT_FORMAT = 3  # 3: member addresses; 2: sessions carry their owner; restore reads 1-3

Handler = Callable[[dict[str, Any]], Any]


def structure_of(cmd: Command) -> tuple[str, str] | None:
    """(category, name) of the structure a command addresses; None if it has none (sessions,
    batches, admin). The node wakes waiters on it after apply; for everything an apply changed,
    including side effects such as an expired session's released locks, use
    `StateMachine.changed_structures`."""
    mt = BY_NAME.get(cmd.op)
    name = cmd.body.get("name")
    if mt is None or not mt.has_structure or not isinstance(name, str):
        return None
    return (mt.category.value, name)


class StateMachine:
    def __init__(self, limits: StateLimits = StateLimits()) -> None:  # noqa: B008
        self.limits = limits
        self.core = core = Core(limits)
        self.applied_index = 0
        self.acl_version = 0
        self.acl_policy: Any = None
        self.sessions = Sessions(core)
        self.dedupe = DedupeTable(limits)
        self.maps = MapFamily(core)
        self.queues = QueueFamily(core)
        self.sets = SetFamily(core)
        self.lists = ListFamily(core)
        self.topics = TopicFamily(core)
        self.counters = CounterFamily(core)
        self.locks = LockFamily(core, self.sessions)
        self.semaphores = SemaphoreFamily(core, self.sessions)
        self.latches = LatchFamily(core)
        self.refs = RefFamily(core)
        self.idgens = IdGenFamily(core)
        self.members = MemberAddresses(core)  # peer addresses (loom/state/members.py)
        self.families: dict[str, Family[Any]] = {
            f.CATEGORY: f for f in (
                self.maps, self.queues, self.sets, self.lists, self.topics, self.counters,
                self.locks, self.semaphores, self.latches, self.refs, self.idgens)
        }
        assert tuple(self.families) == CATEGORIES
        self.sessions.on_end = self._session_ended
        self.handlers: dict[str, Handler] = {}
        for owner in (*self.families.values(), self.sessions, self.members, self):
            for attr in dir(owner):
                if attr.startswith("op_"):
                    self.handlers[attr[3:]] = getattr(owner, attr)

    # -- the node's interface -------------------------------------------------------------
    def statistics(self) -> dict[str, Any]:
        """Structures and their estimated bytes per category, and open sessions (NODE_STATS
        "state"; read at scrape time: one pass over the structures, never on apply)."""
        return {
            "structures": {c: len(f.items) for c, f in self.families.items()},
            "bytes": {c: sum(x.nbytes for x in f.items.values())
                      for c, f in self.families.items()},
            "total_bytes": self.core.total_bytes,
            "sessions": len(self.sessions.items),
        }

    def apply(self, cmd: Command, index: int) -> Outcome:
        """Apply one committed command at log index `index` (strictly increasing)."""
        if index <= self.applied_index:
            raise ValueError(f"index {index} already applied (applied_index {self.applied_index})")
        core = self.core
        self.applied_index = core.index = index
        core.now = max(core.now, cmd.time_ms)
        core.changed = {}
        core.principal = cmd.principal
        budget = self.limits.housekeeping_budget
        self.sessions.housekeeping(budget)
        self.maps.housekeeping(budget)
        self.dedupe.housekeeping(core.now, budget)
        try:
            body: dict[str, Any] | BadRequest = checked_body(cmd.op, cmd.body)
        except BadRequest as e:
            body = e  # answered below, in the place a failing operation is
        if not isinstance(body, BadRequest):
            self._expire_named(cmd.op, body)
        core.undo.clear()  # housekeeping is committed whatever the command does
        dedupe = cmd.client_id != "" and cmd.seq > 0
        if dedupe:
            seen = self.dedupe.lookup(cmd.client_id, cmd.seq, core.now, cmd.fingerprint)
            if seen is not None:
                return seen
        if cmd.acl_version >= 0 and cmd.acl_version != self.acl_version:
            return Outcome(Status.FORBIDDEN, None,
                           f"the ACL policy changed (version {cmd.acl_version} -> "
                           f"{self.acl_version}) before {cmd.op} was applied; it was not",
                           {"reason": POLICY_CHANGED, "acl_version": self.acl_version})
        if isinstance(body, BadRequest):
            out = Outcome.from_error(body)
        else:
            out = self._run(cmd.op, body, counted=True)
        if dedupe and not out.wait:
            self.dedupe.store(cmd.client_id, cmd.seq, out, core.now, cmd.fingerprint)
        return out

    def read(self, cmd: Command) -> Outcome:
        """Answer a log read (the catalog's `Execution.LOG_READ`) at cmd.time_ms.

        apply() still accepts these ops and changes nothing with them: logs written while
        ACL_GET, STRUCT_LIST and STRUCT_STATS were proposed as entries must replay."""
        mt = BY_NAME.get(cmd.op)
        if mt is None or mt.execution is not Execution.LOG_READ:
            return Outcome.from_error(BadRequest(f"{cmd.op} is not a read"))
        # No checked_body here: a read never crosses the log, its body is the one this node's
        # dispatcher validated.
        saved = self.core.now, self.core.principal
        self.core.now = max(saved[0], cmd.time_ms)  # restored below: reads change nothing
        self.core.principal = cmd.principal
        try:
            return self._run(cmd.op, cmd.body, counted=False)
        finally:
            self.core.now, self.core.principal = saved
            self.core.undo.clear()

    @property
    def changed_structures(self) -> list[tuple[str, str]]:
        """(category, name) of every structure whose waiters the last apply may unblock."""
        return list(self.core.changed)

    def next_session_deadline(self) -> int | None:
        """The earliest log time at which a session may expire (a hint: possibly stale-early).
        Waiters blocked on a session's lock or permits re-run at that time, because an
        expiry happens only when some command is applied."""
        heap = self.sessions.heap
        return heap[0][0] if heap else None

    def topic_since(
        self, name: str, from_seq: int, limit: int,
    ) -> tuple[list[tuple[int, bytes]], int]:
        """See TopicFamily.since: ([(seq, value)...], first available seq)."""
        return self.topics.since(name, from_seq, limit)

    # -- dispatch -------------------------------------------------------------------------
    def _run(self, op: str, body: dict[str, Any], counted: bool) -> Outcome:
        core = self.core
        handler = self.handlers.get(op)
        try:
            if handler is None:
                raise BadRequest(f"{op} is not a state machine operation")
            self._check_sizes(body)
            value = handler(body)
            if isinstance(value, Outcome):
                core.rollback()  # a waiting outcome: nothing may have changed
                return value
            if counted:
                self._count(op, body, journal=False)  # nothing can undo it past this point
            core.undo.clear()
            return Outcome.ok(value)
        except LoomError as e:
            core.rollback()
            return Outcome.from_error(e)
        except Exception as e:  # a bug: undo it, answer alike on every replica
            core.rollback()
            return Outcome.from_error(Internal(f"{op} failed: {type(e).__name__}: {e}"))

    def _check_sizes(self, body: dict[str, Any]) -> None:
        limit = self.limits.max_value_bytes
        for f in ("value", "expected"):
            v = body.get(f)
            if isinstance(v, bytes) and len(v) > limit:
                raise TooLarge(f"{f} of {len(v)} bytes exceeds max_value_bytes {limit}")
        entries = body.get("entries")
        if isinstance(entries, dict):
            for k, v in entries.items():
                if len(v) > limit:
                    raise TooLarge(f"value of {k!r} ({len(v)} bytes) exceeds max_value_bytes "
                                   f"{limit}")

    def _count(self, op: str, body: dict[str, Any], *, journal: bool = True) -> None:
        mt = BY_NAME.get(op)
        name = body.get("name")
        if mt is None or not isinstance(name, str):
            return
        cat = mt.category.value
        fam = self.families.get(cat)
        s = None if fam is None else fam.get(name)
        if s is None:
            return
        ops = s.ops
        ops[op] = ops.get(op, 0) + 1
        self.core.touch(cat, name)
        if not journal:
            return

        def undo() -> None:
            ops[op] -= 1
            if not ops[op]:
                del ops[op]

        self.core.record(undo)

    def _expire_named(self, op: str, body: dict[str, Any]) -> None:
        sid = body.get("session_id")
        if isinstance(sid, int):
            self.sessions.expire_if_due(sid)
        if op.startswith("LOCK_"):
            lk = self.locks.get(body.get("name", ""))
            if lk is not None and lk.owner:
                self.sessions.expire_if_due(lk.owner)
        if op == "BATCH_EXECUTE":
            for item in body.get("ops", ()):
                self._expire_named(item["op"], item["b"])

    def _session_ended(self, sid: int, s: Session) -> None:
        self.locks.release_session(sid, s)
        self.semaphores.release_session(sid, s)

    # -- ops owned by the machine ---------------------------------------------------------
    def op_BATCH_EXECUTE(self, b: dict[str, Any]) -> list[Any]:
        """-> the list of inner results, in order. All or nothing: the first failing inner op
        undoes the whole batch; its error says "ops[i] (OP): ..." and carries op_index=i."""
        results = []
        for i, item in enumerate(b["ops"]):
            op, body = item["op"], item["b"]
            mt = BY_NAME.get(op)
            handler = self.handlers.get(op)
            try:
                if handler is None or mt is None or not mt.batchable:
                    raise BadRequest(f"{op} cannot be batched")
                self._check_sizes(body)
                value = handler(body)
            except LoomError as e:
                raise type(e)(f"ops[{i}] ({op}): {e.message}", **{**e.details, "op_index": i}
                              ) from None
            self._count(op, body)
            results.append(value)
        return results

    def _struct(self, b: dict[str, Any]) -> tuple[Family[Any], Struct | None]:
        cat = b["category"]
        if cat not in self.families:
            raise BadRequest(f"unknown category {cat!r}; one of {', '.join(CATEGORIES)}")
        fam = self.families[cat]
        return fam, fam.get(b["name"])

    def op_STRUCT_LIST(self, b: dict[str, Any]) -> dict[str, Any]:
        """-> {"structures": [{"category": c, "name": n}...] in (category, name) order,
        "cursor": str | None}; `category` narrows to one category."""
        cat = b.get("category")
        if cat is not None and cat not in self.families:
            raise BadRequest(f"unknown category {cat!r}; one of {', '.join(CATEGORIES)}")
        reg = self.core.registry
        after = decode_cursor(b.get("cursor"))
        if after is not None:
            c, _, n = after.partition("/")
            start = reg.bisect_right((c, n))
        else:
            start = 0
        if cat is not None:
            start = max(start, reg.bisect_left((cat, "")))
        out: list[dict[str, str]] = []
        last = None
        i = start
        while i < len(reg) and len(out) < b["limit"]:
            c, n = reg[i]
            if cat is not None and c != cat:
                i = len(reg)
                break
            out.append({"category": c, "name": n})
            last = (c, n)
            i += 1
        more = i < len(reg) and (cat is None or reg[i][0] == cat)
        cursor = encode_cursor(f"{last[0]}/{last[1]}") if more and last is not None else None
        return {"structures": out, "cursor": cursor}

    def op_STRUCT_DESTROY(self, b: dict[str, Any]) -> bool:
        """-> whether the structure existed (locks and permits it held are released)."""
        fam, s = self._struct(b)
        if s is None:
            return False
        self.core.touch(b["category"], b["name"])
        return fam.destroy(b["name"])

    def op_STRUCT_STATS(self, b: dict[str, Any]) -> dict[str, Any]:
        """-> {"category", "name", "size": entries/items/members (count for latches,
        holds for locks, available permits for semaphores), "bytes": estimate,
        "ops": {op name: applies}}; NOT_FOUND if absent."""
        _, s = self._struct(b)
        if s is None:
            raise NotFound(f"no {b['category']} named {b['name']}")
        return {"category": b["category"], "name": b["name"], "size": s.size(),
                "bytes": s.nbytes, "ops": dict(sorted(s.ops.items()))}

    def op_ACL_GET(self, b: dict[str, Any]) -> dict[str, Any]:
        """-> {"version": v, "policy": the document (None before the first ACL_SET)}."""
        return {"version": self.acl_version, "policy": self.acl_policy}

    def op_ACL_SET(self, b: dict[str, Any]) -> dict[str, int]:
        """-> {"version": new version}; CONFLICT if expected_version is not current."""
        expected = b.get("expected_version")
        if expected is not None and expected != self.acl_version:
            raise Conflict(f"ACL policy is at version {self.acl_version}, not {expected}",
                           version=self.acl_version)
        old = (self.acl_version, self.acl_policy)
        self.acl_version += 1
        self.acl_policy = b["policy"]

        def undo() -> None:
            self.acl_version, self.acl_policy = old

        self.core.record(undo)
        return {"version": self.acl_version}

    # -- snapshots ------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """The whole state as CBOR; restore(snapshot()) behaves identically from then on."""
        return b"".join(self.snapshot_chunks())

    def snapshot_chunks(self) -> Iterator[bytes]:
        """`snapshot()` in pieces, encoded as they are asked for (a large map a batch of
        entries at a time), so a snapshot streamed to a file is never whole in memory. The
        state must not change while the pieces are taken (a forked child's image does not)."""
        head = [SNAPSHOT_FORMAT, self.applied_index, self.core.now, self.acl_version,
                self.acl_policy, self.sessions.dump(), self.dedupe.dump()]
        yield cbor_array_head(9) + b"".join(cbor2.dumps(x) for x in head)
        yield cbor_array_head(len(self.families))
        for fam in self.families.values():
            yield from fam.dump_cbor()
        yield cbor2.dumps(self.members.dump())

    @classmethod
    def restore(cls, data: bytes, limits: StateLimits = StateLimits()) -> StateMachine:  # noqa: B008
        return cls.restore_from((data,), limits)

    @classmethod
    def restore_from(
        cls, chunks: Iterable[bytes], limits: StateLimits = StateLimits(),  # noqa: B008
    ) -> StateMachine:
        """`restore` from a snapshot's pieces (a file's chunks), decoded as they are read, so
        the encoded snapshot is never whole in memory next to the state it becomes."""
        stream = io.BufferedReader(_ChunkStream(iter(chunks)), _READ_BUFFER)
        doc = cbor2.load(stream)
        # read to the end, so a source that checks its data there (a snapshot file's end
        # record) has checked it all
        if stream.read(1):
            raise ValueError("data after the snapshot")
        members: Any = {}
        if isinstance(doc, dict):
            # A node's snapshot written before format 3: the state machine's own snapshot
            # wrapped together with the member addresses the node kept beside it.
            doc, members = cbor2.loads(doc["sm"]), doc.get("members", {})
        fmt, applied, now, acl_version, acl_policy, sessions, dedupe, fams, *rest = doc
        if fmt not in (1, 2, SNAPSHOT_FORMAT) or len(rest) != (fmt >= 3):
            raise ValueError(f"unknown snapshot format {fmt!r}")
        sm = cls(limits)
        sm.applied_index = sm.core.index = applied
        sm.core.now = now
        sm.acl_version, sm.acl_policy = acl_version, acl_policy
        sm.sessions.load(sessions, with_principal=fmt >= 2)
        sm.dedupe.load(dedupe)
        for fam, d in zip(sm.families.values(), fams, strict=True):
            fam.load(d)
        for cat, fam in sm.families.items():
            for name in fam.items:
                sm.core.registry.add((cat, name))
        sm.members.load(rest[0] if rest else members)
        return sm


_READ_BUFFER = 1 << 16


class _ChunkStream(io.RawIOBase):
    """A read-only stream over an iterator of byte strings (the decoder reads it as a file)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buf = memoryview(nxt)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n
