"""The message catalog: the single source of truth for every message type.

One row per type: opcode, NAME, category, access class, how it executes, which body fields name
the structure and the keys it touches, the body schema, and what its reply may reveal. The
dispatcher, the state machine's read/apply split, the ACL checker, the audit record, the
metrics labels and docs/protocol.md are all derived from this table; `tests/test_catalog.py`
checks docs/protocol.md against it.

Two columns, two questions. `access` (public, read, write, admin) is what the ACL grants by
class and what audit records; `execution` (local, log read, log write, cluster admin, node task)
is the path a request takes through the node. They differ on purpose: ACL_GET is an admin type
that executes as a log read, NODE_STATS an admin type answered locally.

Rules a row must follow (checked at import time, below the table):
- opcodes and names are unique; client types never use the RAFT category;
- a type with a structure has a `name` field of kind NAME; a key_field is a KEY field;
- a reveal names an existing READ type of the same category;
- execution agrees with access: public and peer types are local, a read never changes state
  (local or log read), cluster administration is an admin type, a waiting type goes through
  the log.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field
from enum import Enum
from typing import Any

from loom.wire.errors import BadRequest
from loom.wire.schema import INT64_MAX, Field, Kind, opt, validate


class Category(Enum):
    MAP = "MAP"
    QUEUE = "QUEUE"
    SET = "SET"
    LIST = "LIST"
    TOPIC = "TOPIC"
    COUNTER = "COUNTER"
    LOCK = "LOCK"
    SEMAPHORE = "SEMAPHORE"
    LATCH = "LATCH"
    ATOMIC_REF = "ATOMIC_REF"
    ID_GEN = "ID_GEN"
    CLIENT = "CLIENT"
    CLUSTER = "CLUSTER"
    ADMIN = "ADMIN"
    RAFT = "RAFT"


class Access(Enum):
    PUBLIC = "public"  # allowed before and regardless of ACLs (HELLO, PING, WHOAMI)
    READ = "read"  # never changes state; served by a linearizable read
    WRITE = "write"  # goes through the log
    ADMIN = "admin"  # administers the cluster or the policy; goes through the log if it changes it


class Execution(Enum):
    """The path a request takes through the node (the catalog's `execution` column).

    The dispatcher, the state machine and the docs derive their behaviour from this and from
    nothing else; `names_with` and `MessageType.execution` are the lookups.
    """

    LOCAL = "local"  # answered by the receiving node from its own state; never enters the log
    LOG_READ = "log-read"  # the state machine answers after a ReadIndex round (or, stale, at once)
    LOG_WRITE = "log-write"  # one log entry, applied by every replica in log order
    CLUSTER_ADMIN = "cluster-admin"  # a membership or leadership change run by the Raft driver
    NODE_TASK = "node-task"  # run by the receiving node in the caller's task; never in the log

    @property
    def changes_state(self) -> bool:
        """Whether a request may change replicated state: it is retried with a sequence number,
        and a timed-out one may or may not have taken effect."""
        return self is Execution.LOG_WRITE or self is Execution.CLUSTER_ADMIN


# The execution a row gets unless it names another one.
_DEFAULT_EXECUTION = {
    Access.PUBLIC: Execution.LOCAL, Access.READ: Execution.LOG_READ,
    Access.WRITE: Execution.LOG_WRITE, Access.ADMIN: Execution.LOG_WRITE,
}


class Listener(Enum):
    CLIENT = "client"
    PEER = "peer"


@dataclass(frozen=True, slots=True)
class Reveal:
    """The reply carries data readable only with `read_op`'s grant.

    `flag`: only when the request sets this boolean field (e.g. MAP_PUT return_old).
    `redact`: without the read grant the request still runs and the revealing part of the
    reply is withheld (COUNTER_INCREMENT's new value); otherwise the request is FORBIDDEN.
    """

    read_op: str
    flag: str | None = None
    redact: bool = False


@dataclass(frozen=True, slots=True)
class MessageType:
    opcode: int
    name: str
    category: Category
    access: Access
    schema: Mapping[str, Field]
    key_field: str | None = None  # the one key this request touches
    keys_field: str | None = None  # a list of keys (or a key->value map) it touches
    reveal: Reveal | None = None
    waits: bool = False  # may wait (timeout_ms) in the node layer until an apply wakes it
    listener: Listener = Listener.CLIENT
    doc: str = ""
    runs: InitVar[Execution | None] = None  # the execution, when not the access's default
    has_structure: bool = field(init=False)
    execution: Execution = field(init=False)

    def __post_init__(self, runs: Execution | None) -> None:
        object.__setattr__(self, "has_structure", "name" in self.schema)
        object.__setattr__(self, "execution", runs or _DEFAULT_EXECUTION[self.access])

    @property
    def is_write(self) -> bool:
        """May change replicated state (see `Execution.changes_state`)."""
        return self.execution.changes_state

    @property
    def batchable(self) -> bool:
        """May be an inner operation of BATCH_EXECUTE: a non-waiting data write on a structure."""
        return self.access is Access.WRITE and not self.waits and self.has_structure


# -- field shorthands -------------------------------------------------------------------------
NAME = Field(Kind.NAME, doc="structure name")
KEY = Field(Kind.KEY)
VALUE = Field(Kind.BYTES)
TTL = opt(Kind.INT, min=1, max=10 * 365 * 24 * 3600 * 1000, doc="time to live in ms")
WAIT = opt(Kind.INT, default=0, min=0, max=300_000, doc="how long to wait, ms (0: do not wait)")
CURSOR = opt(Kind.STR, max=2048, doc="opaque cursor from the previous page")
LIMIT = opt(Kind.INT, default=100, min=1, max=1000, doc="page size")
SESSION = Field(Kind.INT, min=1, doc="session id from SESSION_OPEN")
INDEX = Field(Kind.INT)
COUNT = Field(Kind.INT, min=0, max=2**31 - 1)
PERMITS = opt(Kind.INT, default=1, min=1, max=2**31 - 1)

_ROWS: list[MessageType] = []


def _t(
    opcode: int, name: str, cat: Category, access: Access, schema: dict[str, Field],
    doc: str, **kw: Any,
) -> None:
    _ROWS.append(MessageType(opcode, name, cat, access, schema, doc=doc, **kw))


C, R, W, A, P = Category, Access.READ, Access.WRITE, Access.ADMIN, Access.PUBLIC
LOCAL, LOG_READ, CLUSTER_ADMIN = Execution.LOCAL, Execution.LOG_READ, Execution.CLUSTER_ADMIN
NODE_TASK = Execution.NODE_TASK

# -- CLIENT: connection, sessions, batches ------------------------------------------------------
_t(0x0001, "HELLO", C.CLIENT, P,
   {"client_name": Field(Kind.STR, min=1, max=128), "min_version": Field(Kind.INT, min=1),
    "max_version": Field(Kind.INT, min=1),
    "client_id": opt(Kind.STR, min=1, max=64, doc="stable id for retry deduplication")},
   "First frame on a connection: negotiates the protocol version and names the client.")
_t(0x0002, "PING", C.CLIENT, P, {}, "Liveness round trip.")
_t(0x0003, "WHOAMI", C.CLIENT, P, {}, "The principal and roles this request is evaluated as.")
_t(0x0004, "SESSION_OPEN", C.CLIENT, W,
   {"ttl_ms": opt(Kind.INT, default=30_000, min=1000, max=3_600_000)},
   "Open a session (owner of locks and permits, scope of retry deduplication).")
_t(0x0005, "SESSION_HEARTBEAT", C.CLIENT, W, {"session_id": SESSION},
   "Keep a session alive.")
_t(0x0006, "SESSION_CLOSE", C.CLIENT, W, {"session_id": SESSION},
   "Close a session, releasing its locks and permits.")
_t(0x0007, "BATCH_EXECUTE", C.CLIENT, W, {"ops": Field(Kind.OPS, max=128)},
   "Apply a list of write operations atomically. Needs its own grant and every inner "
   "operation's; a refusal names the member (op_index, op, structure, key).")

# -- MAP ---------------------------------------------------------------------------------------
_t(0x0101, "MAP_PUT", C.MAP, W,
   {"name": NAME, "key": KEY, "value": VALUE, "ttl_ms": TTL, "return_old": opt(Kind.BOOL)},
   "Set key to value (optional TTL); with return_old, the previous value.",
   key_field="key", reveal=Reveal("MAP_GET", flag="return_old"))
_t(0x0102, "MAP_GET", C.MAP, R, {"name": NAME, "key": KEY}, "Value of key.", key_field="key")
_t(0x0103, "MAP_DELETE", C.MAP, W, {"name": NAME, "key": KEY},
   "Remove key; answers whether it existed.", key_field="key")
_t(0x0104, "MAP_PUT_IF_ABSENT", C.MAP, W,
   {"name": NAME, "key": KEY, "value": VALUE, "ttl_ms": TTL},
   "Set key only if absent; answers whether it was set.", key_field="key")
_t(0x0105, "MAP_REPLACE", C.MAP, W, {"name": NAME, "key": KEY, "value": VALUE, "ttl_ms": TTL},
   "Set key only if present; answers whether it was replaced.", key_field="key")
_t(0x0106, "MAP_CONTAINS", C.MAP, R, {"name": NAME, "key": KEY}, "Whether key is present.",
   key_field="key")
_t(0x0107, "MAP_SIZE", C.MAP, R, {"name": NAME}, "Number of live entries.")
_t(0x0108, "MAP_KEYS", C.MAP, R, {"name": NAME, "cursor": CURSOR, "limit": LIMIT},
   "A page of keys in key order, with the cursor of the next page.")
_t(0x0109, "MAP_CLEAR", C.MAP, W, {"name": NAME}, "Remove every entry.")
_t(0x010A, "MAP_GET_ALL", C.MAP, R, {"name": NAME, "keys": Field(Kind.KEYS, min=1)},
   "Values of several keys (absent keys omitted).", keys_field="keys")
_t(0x010B, "MAP_PUT_ALL", C.MAP, W,
   {"name": NAME, "entries": Field(Kind.ENTRIES, min=1), "ttl_ms": TTL},
   "Set several keys atomically.", keys_field="entries")
_t(0x010C, "MAP_COMPARE_AND_SET", C.MAP, W,
   {"name": NAME, "key": KEY, "expected": VALUE, "value": VALUE, "ttl_ms": TTL},
   "Replace key's value if it equals expected; answers whether it did.", key_field="key")
_t(0x010D, "MAP_REMOVE_IF_EQUAL", C.MAP, W, {"name": NAME, "key": KEY, "expected": VALUE},
   "Remove key if its value equals expected; answers whether it did.", key_field="key")
_t(0x010E, "MAP_SET_TTL", C.MAP, W,
   {"name": NAME, "key": KEY, "ttl_ms": opt(Kind.INT, min=0, max=TTL.max)},
   "Set (or with 0/absent, clear) key's time to live; answers whether key exists.",
   key_field="key")
_t(0x010F, "MAP_GET_TTL", C.MAP, R, {"name": NAME, "key": KEY},
   "Remaining time to live in ms (null: no TTL).", key_field="key")
_t(0x0110, "MAP_SCAN", C.MAP, R,
   {"name": NAME, "match": opt(Kind.STR, default="*", max=256), "cursor": CURSOR,
    "limit": LIMIT},
   "A page of entries whose key matches a glob pattern; bounded work per call.")
_t(0x0111, "MAP_GET_AND_DELETE", C.MAP, W, {"name": NAME, "key": KEY},
   "Remove key and answer its value.", key_field="key", reveal=Reveal("MAP_GET"))

# -- QUEUE -------------------------------------------------------------------------------------
_t(0x0201, "QUEUE_PUSH", C.QUEUE, W, {"name": NAME, "value": VALUE},
   "Offer an item; answers the new size (withheld without QUEUE_SIZE); LIMIT_EXCEEDED when "
   "the queue is at capacity.", reveal=Reveal("QUEUE_SIZE", redact=True))
_t(0x0202, "QUEUE_POLL", C.QUEUE, W, {"name": NAME, "timeout_ms": WAIT},
   "Take the head item, waiting up to timeout_ms for one (null when none arrived).",
   waits=True)
_t(0x0203, "QUEUE_PEEK", C.QUEUE, R, {"name": NAME}, "The head item without taking it.")
_t(0x0204, "QUEUE_SIZE", C.QUEUE, R, {"name": NAME}, "Number of items.")
_t(0x0205, "QUEUE_DRAIN", C.QUEUE, W,
   {"name": NAME, "max": opt(Kind.INT, default=100, min=1, max=1000)},
   "Take up to max items.")
_t(0x0206, "QUEUE_CLEAR", C.QUEUE, W, {"name": NAME}, "Remove every item.")
_t(0x0207, "QUEUE_CREATE", C.QUEUE, W,
   {"name": NAME, "capacity": Field(Kind.INT, min=1, max=2**31 - 1)},
   "Create a queue with a capacity (or change the capacity of an existing one).")

# -- SET ---------------------------------------------------------------------------------------
_t(0x0301, "SET_ADD", C.SET, W, {"name": NAME, "member": KEY},
   "Add a member; answers whether it was new.", key_field="member")
_t(0x0302, "SET_REMOVE", C.SET, W, {"name": NAME, "member": KEY},
   "Remove a member; answers whether it was present.", key_field="member")
_t(0x0303, "SET_CONTAINS", C.SET, R, {"name": NAME, "member": KEY},
   "Whether member is present.", key_field="member")
_t(0x0304, "SET_MEMBERS", C.SET, R, {"name": NAME, "cursor": CURSOR, "limit": LIMIT},
   "A page of members in order, with the cursor of the next page.")
_t(0x0305, "SET_SIZE", C.SET, R, {"name": NAME}, "Number of members.")
_t(0x0306, "SET_CLEAR", C.SET, W, {"name": NAME}, "Remove every member.")

# -- LIST --------------------------------------------------------------------------------------
_t(0x0401, "LIST_PUSH_LEFT", C.LIST, W, {"name": NAME, "value": VALUE},
   "Prepend; answers the new length (withheld without LIST_SIZE).",
   reveal=Reveal("LIST_SIZE", redact=True))
_t(0x0402, "LIST_PUSH_RIGHT", C.LIST, W, {"name": NAME, "value": VALUE},
   "Append; answers the new length (withheld without LIST_SIZE).",
   reveal=Reveal("LIST_SIZE", redact=True))
_t(0x0403, "LIST_POP_LEFT", C.LIST, W, {"name": NAME}, "Remove and answer the first item.")
_t(0x0404, "LIST_POP_RIGHT", C.LIST, W, {"name": NAME}, "Remove and answer the last item.")
_t(0x0405, "LIST_GET", C.LIST, R, {"name": NAME, "index": INDEX},
   "Item at index (negative counts from the end).")
_t(0x0406, "LIST_SET", C.LIST, W, {"name": NAME, "index": INDEX, "value": VALUE},
   "Replace the item at index.")
_t(0x0407, "LIST_RANGE", C.LIST, R,
   {"name": NAME, "start": INDEX, "stop": INDEX},
   "Items from start to stop inclusive (negative counts from the end); at most 1000.")
_t(0x0408, "LIST_SIZE", C.LIST, R, {"name": NAME}, "Number of items.")
_t(0x0409, "LIST_TRIM", C.LIST, W, {"name": NAME, "start": INDEX, "stop": INDEX},
   "Keep only items from start to stop inclusive.")

# -- TOPIC -------------------------------------------------------------------------------------
_t(0x0501, "TOPIC_PUBLISH", C.TOPIC, W, {"name": NAME, "value": VALUE},
   "Publish a message; answers its per-topic sequence number.")
_t(0x0502, "TOPIC_SUBSCRIBE", C.TOPIC, R,
   {"name": NAME, "from_seq": opt(Kind.INT, min=0)},
   "Receive the topic's messages pushed on this connection, tagged with this request id.",
   runs=LOCAL)
_t(0x0503, "TOPIC_UNSUBSCRIBE", C.TOPIC, R,
   {"name": NAME, "subscription": Field(Kind.INT, min=1)},
   "Stop a subscription made on this connection.", runs=LOCAL)

# -- COUNTER (AtomicLong) ----------------------------------------------------------------------
_COUNTER_REVEAL = Reveal("COUNTER_GET", redact=True)
_t(0x0601, "COUNTER_GET", C.COUNTER, R, {"name": NAME}, "Current value (0 if never set).")
_t(0x0602, "COUNTER_SET", C.COUNTER, W, {"name": NAME, "value": Field(Kind.INT)},
   "Set the value.")
_t(0x0603, "COUNTER_INCREMENT", C.COUNTER, W, {"name": NAME},
   "Add one; answers the new value (withheld without COUNTER_GET).", reveal=_COUNTER_REVEAL)
_t(0x0604, "COUNTER_DECREMENT", C.COUNTER, W, {"name": NAME},
   "Subtract one; answers the new value (withheld without COUNTER_GET).",
   reveal=_COUNTER_REVEAL)
_t(0x0605, "COUNTER_ADD", C.COUNTER, W, {"name": NAME, "delta": Field(Kind.INT)},
   "Add delta; LIMIT_EXCEEDED on signed 64-bit overflow, never wraps.",
   reveal=_COUNTER_REVEAL)
_t(0x0606, "COUNTER_COMPARE_AND_SET", C.COUNTER, W,
   {"name": NAME, "expected": Field(Kind.INT), "value": Field(Kind.INT)},
   "Set value if the current value equals expected; answers whether it did.")

# -- LOCK (FencedLock) -------------------------------------------------------------------------
_t(0x0701, "LOCK_LOCK", C.LOCK, W, {"name": NAME, "session_id": SESSION, "timeout_ms": WAIT},
   "Acquire (reentrant per session), waiting up to timeout_ms; answers the fencing token.",
   waits=True)
_t(0x0702, "LOCK_TRY_LOCK", C.LOCK, W, {"name": NAME, "session_id": SESSION},
   "Acquire if free (or already ours); answers the fencing token or null.")
_t(0x0703, "LOCK_UNLOCK", C.LOCK, W, {"name": NAME, "session_id": SESSION},
   "Release one hold; CONFLICT unless the session owns the lock.")
_t(0x0704, "LOCK_IS_LOCKED", C.LOCK, R, {"name": NAME},
   "Whether held, with the current fencing token.")
_t(0x0705, "LOCK_FORCE_UNLOCK", C.LOCK, A, {"name": NAME},
   "Release the lock whoever holds it (administrators only).")
_t(0x0706, "LOCK_GET_OWNER", C.LOCK, R, {"name": NAME},
   "The holding session, hold count and fencing token.")

# -- SEMAPHORE ---------------------------------------------------------------------------------
_t(0x0801, "SEMAPHORE_INIT", C.SEMAPHORE, W,
   {"name": NAME, "permits": Field(Kind.INT, min=0, max=2**31 - 1)},
   "Initialise the permit count once; answers whether it was initialised now.")
_t(0x0802, "SEMAPHORE_ACQUIRE", C.SEMAPHORE, W,
   {"name": NAME, "session_id": SESSION, "permits": PERMITS, "timeout_ms": WAIT},
   "Take permits, waiting up to timeout_ms; answers whether they were taken.", waits=True)
_t(0x0803, "SEMAPHORE_TRY_ACQUIRE", C.SEMAPHORE, W,
   {"name": NAME, "session_id": SESSION, "permits": PERMITS},
   "Take permits if available now; answers whether they were taken.")
_t(0x0804, "SEMAPHORE_RELEASE", C.SEMAPHORE, W,
   {"name": NAME, "session_id": SESSION, "permits": PERMITS},
   "Return permits held by the session.")
_t(0x0805, "SEMAPHORE_AVAILABLE", C.SEMAPHORE, R, {"name": NAME}, "Available permits.")

# -- LATCH (CountDownLatch) --------------------------------------------------------------------
_t(0x0901, "LATCH_TRY_SET_COUNT", C.LATCH, W, {"name": NAME, "count": COUNT},
   "Set the count if the latch is at zero; answers whether it was set.")
_t(0x0902, "LATCH_COUNT_DOWN", C.LATCH, W, {"name": NAME}, "Decrement the count (not below 0).")
_t(0x0903, "LATCH_GET_COUNT", C.LATCH, R, {"name": NAME}, "Current count.")
_t(0x0904, "LATCH_AWAIT", C.LATCH, R, {"name": NAME, "timeout_ms": WAIT},
   "Wait up to timeout_ms for the count to reach zero; answers whether it did.", waits=True)

# -- ATOMIC_REF --------------------------------------------------------------------------------
_t(0x0A01, "ATOMIC_REF_GET", C.ATOMIC_REF, R, {"name": NAME}, "Current value (null if unset).")
_t(0x0A02, "ATOMIC_REF_SET", C.ATOMIC_REF, W, {"name": NAME, "value": opt(Kind.BYTES)},
   "Set the value (absent: clear it).")
_t(0x0A03, "ATOMIC_REF_COMPARE_AND_SET", C.ATOMIC_REF, W,
   {"name": NAME, "expected": opt(Kind.BYTES), "value": opt(Kind.BYTES)},
   "Set value if the current value equals expected (absent: unset); answers whether it did.")

# -- ID_GEN ------------------------------------------------------------------------------------
_t(0x0B01, "ID_GEN_NEXT", C.ID_GEN, W,
   {"name": NAME, "count": opt(Kind.INT, default=1, min=1, max=10_000)},
   "Reserve count unique, roughly time-ordered 64-bit ids; answers the first (they are "
   "consecutive).")

# -- CLUSTER (client listener; cluster administration grows in the cluster layer) -------------
_t(0x0E01, "CLUSTER_STATUS", C.CLUSTER, R, {},
   "This node's view: its role, term, commit and applied index, the leader, and every member "
   "with its addresses and reachability.", runs=LOCAL)
_t(0x0E02, "MEMBER_LIST", C.CLUSTER, R, {}, "Members with their peer and client addresses.",
   runs=LOCAL)
_t(0x0E03, "MEMBER_ADD", C.CLUSTER, A,
   {"node": Field(Kind.NAME), "peer_addr": Field(Kind.STR, min=3, max=300),
    "learner": opt(Kind.BOOL, default=True), "readmit": opt(Kind.BOOL, default=False)},
   "Add a member (as a learner by default: it catches up before it may be promoted). A "
   "removed id is refused unless readmit is true (it comes back as a learner).", runs=CLUSTER_ADMIN)
_t(0x0E04, "MEMBER_PROMOTE", C.CLUSTER, A, {"node": Field(Kind.NAME)},
   "Make a caught-up learner a voter.", runs=CLUSTER_ADMIN)
_t(0x0E05, "MEMBER_REMOVE", C.CLUSTER, A, {"node": Field(Kind.NAME)},
   "Remove a member; its id is never accepted again (its certificate is refused by every "
   "peer listener).", runs=CLUSTER_ADMIN)
_t(0x0E06, "LEADER_TRANSFER", C.CLUSTER, A, {"to": opt(Kind.NAME)},
   "Hand leadership to a voter (the most caught-up one when `to` is absent); answered once "
   "it leads ({to, leader, term}), BUSY if the transfer window closes first.",
   runs=CLUSTER_ADMIN)

# -- ADMIN -------------------------------------------------------------------------------------
_t(0x0F01, "STRUCT_LIST", C.ADMIN, A,
   {"category": opt(Kind.STR, max=16), "cursor": CURSOR, "limit": LIMIT},
   "A page of structures (category, name).", runs=LOG_READ)
_t(0x0F02, "STRUCT_DESTROY", C.ADMIN, A,
   {"category": Field(Kind.STR, max=16), "name": NAME}, "Destroy a structure.")
_t(0x0F03, "STRUCT_STATS", C.ADMIN, A, {"category": Field(Kind.STR, max=16), "name": NAME},
   "Size, memory estimate and operation counts of a structure.", runs=LOG_READ)
_t(0x0F04, "ACL_GET", C.ADMIN, A, {}, "The ACL policy in force and its version.",
   runs=LOG_READ)
_t(0x0F05, "ACL_SET", C.ADMIN, A,
   {"policy": Field(Kind.ANY), "expected_version": opt(Kind.INT, min=0, max=INT64_MAX)},
   "Replace the ACL policy through the log (optionally only if at expected_version).")
_t(0x0F06, "NODE_STATS", C.ADMIN, A, {},
   "This node's counters: connections, requests, audit records, the log, the peer plane.",
   runs=LOCAL)
_t(0x0F07, "METRICS_GET", C.ADMIN, A, {},
   "This node's metrics in the Prometheus text format (bytes; over HTTP: GET /metrics). "
   "Grant it alone to a scraper.", runs=LOCAL)
_t(0x0F08, "SNAPSHOT_SAVE", C.ADMIN, A,
   {"snapshot": opt(Kind.STR, min=1, max=64, doc="the id the first answer gave"),
    "offset": opt(Kind.INT, default=0, min=0, max=INT64_MAX, doc="byte offset of the chunk")},
   "Backup: without `snapshot`, the leader takes a consistent snapshot (after a ReadIndex "
   "round) into a checksummed file, encrypted when the node encrypts at rest, and answers its "
   "id, index, term, size and SHA-256 with the first chunk; with it, the chunk at `offset`.",
   runs=NODE_TASK)
_t(0x0F09, "KEYS_ROTATE", C.ADMIN, A, {},
   "Encryption at rest, on the receiving node only: a new data key becomes the active one at "
   "once (new WAL segments and snapshots use it; files written before stay readable with the "
   "keys kept) and the keyring file is rewritten, wrapped when its keys are wrapped. Answers "
   "the new key id and the key ids held.", runs=NODE_TASK)
_t(0x0F0A, "KEYS_REWRAP", C.ADMIN, A,
   {"label": Field(Kind.STR, min=1, max=128, doc="the new key-encryption key's label"),
    "token": opt(Kind.STR, min=1, max=128,
                 doc="the PKCS#11 token holding it (default: the one in use)")},
   "Encryption at rest, on the receiving node only: rewrite its keyring with every data key "
   "wrapped by another AES key of the configured PKCS#11 module (a plain keyring becomes a "
   "wrapped one); no data is re-encrypted.", runs=NODE_TASK)

# -- RAFT (peer listener only; bodies are validated by loom.raft.messages.from_wire) -----------
# tests/test_catalog.py checks this list against loom.raft.messages.RAFT_MESSAGE_NAMES.
RAFT_NAMES = (
    "RAFT_APPEND_ENTRIES", "RAFT_APPEND_RESPONSE", "RAFT_REQUEST_VOTE", "RAFT_VOTE_RESPONSE",
    "RAFT_PRE_VOTE", "RAFT_PRE_VOTE_RESPONSE", "RAFT_HEARTBEAT", "RAFT_HEARTBEAT_RESPONSE",
    "RAFT_INSTALL_SNAPSHOT", "RAFT_SNAPSHOT_RESPONSE", "RAFT_TIMEOUT_NOW", "RAFT_READ_INDEX",
    "RAFT_READ_INDEX_RESPONSE",
)
_t(0x7E01, "PEER_HELLO", C.CLUSTER, A,
   {"node": Field(Kind.NAME), "client_addr": Field(Kind.STR, max=300),
    "cluster": Field(Kind.STR, max=128), "http_addr": opt(Kind.STR, max=300)},
   "First frame on a peer link: the sender's node id (must equal its certificate's) and the "
   "addresses its clients connect to (binary, and HTTP when it serves it).",
   listener=Listener.PEER, runs=LOCAL)
_t(0x7E02, "PEER_MEMBERS", C.CLUSTER, A,
   {"index": Field(Kind.INT, min=0, doc="the sender's applied index"),
    "members": Field(Kind.ANY, doc="node id -> peer address (\"\" when unknown)")},
   "The sender's committed configuration (its voters and learners, in force after `index`), "
   "sent after PEER_HELLO and whenever it changes: a member vouches for the members of a "
   "configuration newer than the receiver's own (loom/security/peertrust.py).",
   listener=Listener.PEER, runs=LOCAL)
for _i, _n in enumerate(RAFT_NAMES):
    _t(0x7F01 + _i, _n, C.RAFT, A, {"msg": Field(Kind.ANY)},
       "Raft consensus message between members.", listener=Listener.PEER, runs=LOCAL)

del C, R, W, A, P, LOCAL, LOG_READ, CLUSTER_ADMIN, NODE_TASK

# -- derived indexes ---------------------------------------------------------------------------
BY_OPCODE: dict[int, MessageType] = {}
BY_NAME: dict[str, MessageType] = {}


def register(mt: MessageType) -> None:
    """Add a row (used by the table above and by layers that own their types, e.g. RAFT)."""
    if mt.opcode in BY_OPCODE or mt.name in BY_NAME:
        raise ValueError(f"duplicate message type {mt.name} / {mt.opcode:#06x}")
    if mt.listener is Listener.CLIENT and mt.category is Category.RAFT:
        raise ValueError(f"{mt.name}: RAFT types live on the peer listener only")
    if mt.has_structure and mt.schema["name"].kind is not Kind.NAME:
        raise ValueError(f"{mt.name}: field 'name' must be a structure NAME")
    if mt.key_field is not None and mt.schema[mt.key_field].kind is not Kind.KEY:
        raise ValueError(f"{mt.name}: key_field must be a KEY field")
    ex = mt.execution
    if (mt.access is Access.PUBLIC or mt.listener is Listener.PEER) and ex is not Execution.LOCAL:
        raise ValueError(f"{mt.name}: public and peer types are answered locally")
    if mt.access is Access.READ and ex.changes_state:
        raise ValueError(f"{mt.name}: a read type cannot execute as {ex.value}")
    if ex is Execution.CLUSTER_ADMIN and mt.access is not Access.ADMIN:
        raise ValueError(f"{mt.name}: cluster administration needs the admin class")
    if mt.waits and ex not in (Execution.LOG_READ, Execution.LOG_WRITE):
        raise ValueError(f"{mt.name}: only types that go through the log can wait")
    BY_OPCODE[mt.opcode] = mt
    BY_NAME[mt.name] = mt


for _row in _ROWS:
    register(_row)
for _row in _ROWS:
    if _row.reveal is not None:
        _r = BY_NAME[_row.reveal.read_op]
        assert _r.access is Access.READ and _r.category is _row.category, _row.name


def client_types() -> list[MessageType]:
    return [mt for mt in BY_OPCODE.values() if mt.listener is Listener.CLIENT]


def names_with(execution: Execution) -> frozenset[str]:
    """The client types that execute as `execution` (the dispatcher and the state machine derive
    their sets from this; so will the HTTP routes: reads GET, the rest POST)."""
    return _BY_EXECUTION[execution]


_BY_EXECUTION: dict[Execution, frozenset[str]] = {
    ex: frozenset(mt.name for mt in client_types() if mt.execution is ex) for ex in Execution
}


def lookup(opcode: Any, listener: Listener) -> MessageType:
    """The type for an opcode received on `listener`; unknown or foreign types are refused."""
    if not isinstance(opcode, int) or isinstance(opcode, bool):
        raise BadRequest("opcode must be an integer")
    mt = BY_OPCODE.get(opcode)
    if mt is None:
        raise BadRequest(f"unknown opcode {opcode:#06x}")
    if mt.listener is not listener:
        # Peer-plane types are not even decodable on the client listener (and vice versa).
        raise BadRequest(f"{mt.name} is not accepted on the {listener.value} listener")
    return mt


def validate_body(mt: MessageType, body: Any) -> dict[str, Any]:
    """Validate a body against `mt`'s schema; batch items are validated recursively."""
    out = validate(mt.schema, body, mt.name)
    if "ops" in out and mt.schema["ops"].kind is Kind.OPS:
        ops = []
        for i, item in enumerate(out["ops"]):
            if not isinstance(item, dict) or set(item) != {"op", "b"}:
                raise BadRequest(f"{mt.name}.ops[{i}] must be a map with 'op' and 'b'")
            inner = BY_NAME.get(item["op"]) if isinstance(item["op"], str) else None
            if inner is None or inner.listener is not Listener.CLIENT:
                raise BadRequest(f"{mt.name}.ops[{i}]: unknown operation {item['op']!r}")
            if not inner.batchable:
                raise BadRequest(f"{mt.name}.ops[{i}]: {inner.name} cannot be batched")
            ops.append({"op": inner.name, "b": validate(inner.schema, item["b"], inner.name)})
        out["ops"] = ops
    return out


def keys_touched(mt: MessageType, body: Mapping[str, Any]) -> list[str]:
    """Every key a (validated) request touches. The ACL and the state machine both use this."""
    if mt.key_field is not None:
        return [body[mt.key_field]]
    if mt.keys_field is not None:
        v = body[mt.keys_field]
        return sorted(v) if isinstance(v, dict) else list(v)
    return []
