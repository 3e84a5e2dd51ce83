"""Per-message-type authorization on a real node (SECURITY-CATALOGUE D1-D7).

`SAMPLES` holds one valid request (and its setup) for every client-listener type in the
catalog; a type without a sample fails `test_every_client_type_has_a_sample`, so a new message
type cannot ship without a decision here. The expected allowed set of each principal is
computed in this file from the written policy rules, not from `loom.security.acl`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from loom.node.server import Node
from loom.wire import catalog
from loom.wire.catalog import Access, Listener
from tests.conftest import TEST_ACL, NodeFactory, RawConn
from tests.node.conftest import (
    BAD_REQUEST,
    FORBIDDEN,
    OK,
    WRITER_P,
    Dial,
    audit_flushed,
    frame,
    policy_with,
    raw_request,
    records,
)

N = "$N"  # replaced by a structure name unique to each (principal, type) run

Setup = Callable[[RawConn, str], Awaitable[dict[str, Any]]]


async def _ok(conn: RawConn, op: str, **body: Any) -> Any:
    r = await conn.request(op, **body)
    assert r["s"] == OK, (op, body, r)
    return r.get("r")


async def _session(admin: RawConn, name: str) -> dict[str, Any]:
    r = await _ok(admin, "SESSION_OPEN")
    return {"session_id": r["session_id"]}


async def _held_lock(admin: RawConn, name: str) -> dict[str, Any]:
    s = await _session(admin, name)
    await _ok(admin, "LOCK_LOCK", name=name, **s)
    return s


async def _semaphore(admin: RawConn, name: str) -> dict[str, Any]:
    await _ok(admin, "SEMAPHORE_INIT", name=name, permits=3)
    return await _session(admin, name)


async def _held_permit(admin: RawConn, name: str) -> dict[str, Any]:
    s = await _semaphore(admin, name)
    await _ok(admin, "SEMAPHORE_ACQUIRE", name=name, permits=1, **s)
    return s


async def _map_entry(admin: RawConn, name: str) -> dict[str, Any]:
    await _ok(admin, "MAP_PUT", name=name, key="k", value=b"v")
    return {}


async def _list_item(admin: RawConn, name: str) -> dict[str, Any]:
    await _ok(admin, "LIST_PUSH_RIGHT", name=name, value=b"x")
    return {}


async def _queue_item(admin: RawConn, name: str) -> dict[str, Any]:
    await _ok(admin, "QUEUE_PUSH", name=name, value=b"x")
    return {}


async def _set_member(admin: RawConn, name: str) -> dict[str, Any]:
    await _ok(admin, "SET_ADD", name=name, member="m")
    return {}


async def _latch(admin: RawConn, name: str) -> dict[str, Any]:
    await _ok(admin, "LATCH_TRY_SET_COUNT", name=name, count=2)
    return {}


def _only(setup: Setup) -> Setup:
    """Run `setup` for its effect; the request takes none of its fields."""

    async def run(admin: RawConn, name: str) -> dict[str, Any]:
        await setup(admin, name)
        return {}

    return run


@dataclass(frozen=True)
class Sample:
    body: dict[str, Any]
    setup: Setup | None = None
    ok: bool = True  # an allowed caller gets OK (False: anything but FORBIDDEN)


def S(setup: Setup | None = None, ok: bool = True, **body: Any) -> Sample:
    return Sample(body, setup, ok)


SAMPLES: dict[str, Sample] = {
    # CLIENT
    "HELLO": S(client_name="t", min_version=1, max_version=1, ok=False),  # HELLO twice
    "PING": S(),
    "WHOAMI": S(),
    "SESSION_OPEN": S(ttl_ms=5000),
    "SESSION_HEARTBEAT": S(_session),
    "SESSION_CLOSE": S(_session),
    "BATCH_EXECUTE": S(ops=[{"op": "MAP_PUT", "b": {"name": N, "key": "k", "value": b"v"}}]),
    # MAP
    "MAP_PUT": S(name=N, key="k", value=b"v"),
    "MAP_GET": S(_map_entry, name=N, key="k"),
    "MAP_DELETE": S(_map_entry, name=N, key="k"),
    "MAP_PUT_IF_ABSENT": S(name=N, key="k", value=b"v"),
    "MAP_REPLACE": S(_map_entry, name=N, key="k", value=b"w"),
    "MAP_CONTAINS": S(_map_entry, name=N, key="k"),
    "MAP_SIZE": S(_map_entry, name=N),
    "MAP_KEYS": S(_map_entry, name=N),
    "MAP_CLEAR": S(_map_entry, name=N),
    "MAP_GET_ALL": S(_map_entry, name=N, keys=["k", "k2"]),
    "MAP_PUT_ALL": S(name=N, entries={"a": b"1", "b": b"2"}),
    "MAP_COMPARE_AND_SET": S(_map_entry, name=N, key="k", expected=b"v", value=b"w"),
    "MAP_REMOVE_IF_EQUAL": S(_map_entry, name=N, key="k", expected=b"v"),
    "MAP_SET_TTL": S(_map_entry, name=N, key="k", ttl_ms=60_000),
    "MAP_GET_TTL": S(_map_entry, name=N, key="k"),
    "MAP_SCAN": S(_map_entry, name=N, match="*"),
    "MAP_GET_AND_DELETE": S(_map_entry, name=N, key="k"),
    # QUEUE
    "QUEUE_PUSH": S(name=N, value=b"x"),
    "QUEUE_POLL": S(_queue_item, name=N, timeout_ms=0),
    "QUEUE_PEEK": S(_queue_item, name=N),
    "QUEUE_SIZE": S(_queue_item, name=N),
    "QUEUE_DRAIN": S(_queue_item, name=N, max=10),
    "QUEUE_CLEAR": S(_queue_item, name=N),
    "QUEUE_CREATE": S(name=N, capacity=10),
    # SET
    "SET_ADD": S(name=N, member="m"),
    "SET_REMOVE": S(_set_member, name=N, member="m"),
    "SET_CONTAINS": S(_set_member, name=N, member="m"),
    "SET_MEMBERS": S(_set_member, name=N),
    "SET_SIZE": S(_set_member, name=N),
    "SET_CLEAR": S(_set_member, name=N),
    # LIST
    "LIST_PUSH_LEFT": S(name=N, value=b"x"),
    "LIST_PUSH_RIGHT": S(name=N, value=b"x"),
    "LIST_POP_LEFT": S(_list_item, name=N),
    "LIST_POP_RIGHT": S(_list_item, name=N),
    "LIST_GET": S(_list_item, name=N, index=0),
    "LIST_SET": S(_list_item, name=N, index=0, value=b"y"),
    "LIST_RANGE": S(_list_item, name=N, start=0, stop=-1),
    "LIST_SIZE": S(_list_item, name=N),
    "LIST_TRIM": S(_list_item, name=N, start=0, stop=0),
    # TOPIC
    "TOPIC_PUBLISH": S(name=N, value=b"m"),
    "TOPIC_SUBSCRIBE": S(name=N),
    "TOPIC_UNSUBSCRIBE": S(name=N, subscription=999_999),
    # COUNTER
    "COUNTER_GET": S(name=N),
    "COUNTER_SET": S(name=N, value=5),
    "COUNTER_INCREMENT": S(name=N),
    "COUNTER_DECREMENT": S(name=N),
    "COUNTER_ADD": S(name=N, delta=3),
    "COUNTER_COMPARE_AND_SET": S(name=N, expected=0, value=1),
    # LOCK
    "LOCK_LOCK": S(_session, name=N, timeout_ms=0),
    "LOCK_TRY_LOCK": S(_session, name=N),
    "LOCK_UNLOCK": S(_held_lock, name=N),
    "LOCK_IS_LOCKED": S(_only(_held_lock), name=N),
    "LOCK_FORCE_UNLOCK": S(_only(_held_lock), name=N),
    "LOCK_GET_OWNER": S(_only(_held_lock), name=N),
    # SEMAPHORE
    "SEMAPHORE_INIT": S(name=N, permits=2),
    "SEMAPHORE_ACQUIRE": S(_semaphore, name=N, permits=1, timeout_ms=0),
    "SEMAPHORE_TRY_ACQUIRE": S(_semaphore, name=N, permits=1),
    "SEMAPHORE_RELEASE": S(_held_permit, name=N, permits=1),
    "SEMAPHORE_AVAILABLE": S(_only(_semaphore), name=N),
    # LATCH
    "LATCH_TRY_SET_COUNT": S(name=N, count=2),
    "LATCH_COUNT_DOWN": S(_latch, name=N),
    "LATCH_GET_COUNT": S(_latch, name=N),
    "LATCH_AWAIT": S(_latch, name=N, timeout_ms=0),
    # ATOMIC_REF
    "ATOMIC_REF_GET": S(name=N),
    "ATOMIC_REF_SET": S(name=N, value=b"r"),
    "ATOMIC_REF_COMPARE_AND_SET": S(name=N, value=b"r"),
    # ID_GEN
    "ID_GEN_NEXT": S(name=N, count=2),
    # CLUSTER
    "CLUSTER_STATUS": S(),
    "MEMBER_LIST": S(),
    # A cluster of one: adding a learner works; the rest is refused by Raft's own rules
    # (learner not caught up, no such member, no other voter), never by the ACL.
    "MEMBER_ADD": S(node=N, peer_addr="127.0.0.1:9"),
    "MEMBER_PROMOTE": S(node=N, ok=False),
    "MEMBER_REMOVE": S(node=N, ok=False),
    "LEADER_TRANSFER": S(ok=False),
    # ADMIN
    "STRUCT_LIST": S(),
    "STRUCT_DESTROY": S(_map_entry, category="MAP", name=N),
    "STRUCT_STATS": S(_map_entry, category="MAP", name=N),
    "ACL_GET": S(),
    "ACL_SET": S(policy=TEST_ACL),  # the same policy: later requests see the same rules
    "NODE_STATS": S(),
    "METRICS_GET": S(),
    "SNAPSHOT_SAVE": S(),  # a whole backup's first chunk (tests/node/test_backup.py)
    # This node does not encrypt at rest: UNAVAILABLE once allowed (tests/e2e/test_keys_hsm.py)
    "KEYS_ROTATE": S(ok=False),
    "KEYS_REWRAP": S(label="kek", ok=False),
}


def _fill(obj: Any, name: str) -> Any:
    if obj == N:
        return name
    if isinstance(obj, dict):
        return {k: _fill(v, name) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill(v, name) for v in obj]
    return obj


# -- the policy, restated independently ---------------------------------------------------------
WRITER_EXTRA = frozenset({"MAP_PUT", "QUEUE_PUSH", "COUNTER_INCREMENT"})



def expected_allowed(who: str, mt: catalog.MessageType) -> bool:
    if mt.access is Access.PUBLIC:
        return True
    if who == "admin":
        return True
    if who == "reader":
        return mt.access is Access.READ
    if who == "writer":
        return mt.access is Access.READ or mt.name in WRITER_EXTRA
    if who == "guest":
        return mt.name == "PING"
    raise AssertionError(who)


def test_every_client_type_has_a_sample() -> None:
    names = {mt.name for mt in catalog.client_types()}
    missing = sorted(names - set(SAMPLES))
    extra = sorted(set(SAMPLES) - names)
    assert not missing, f"client message types without an ACL matrix sample: {missing}"
    assert not extra, f"samples for types that are not client types: {extra}"


def test_policy_rules_are_not_vacuous() -> None:
    """Each restated role has both allowed and denied types (the matrix can fail both ways)."""
    for who in ("writer", "reader", "guest"):
        allowed = [mt.name for mt in catalog.client_types() if expected_allowed(who, mt)]
        denied = [mt.name for mt in catalog.client_types() if not expected_allowed(who, mt)]
        assert allowed and denied, who


@pytest.mark.parametrize("who", ["admin", "writer", "reader", "guest"])
async def test_acl_matrix(who: str, start_node: NodeFactory, dial: Dial) -> None:
    node: Node = await start_node(require_client_auth=False)
    admin = await dial(node, "admin")
    caller = admin if who == "admin" else await dial(
        node, None if who == "guest" else who)
    wrong: list[str] = []
    denied: list[str] = []
    for i, mt in enumerate(catalog.client_types()):
        sample = SAMPLES[mt.name]
        name = f"m{i}-{who}"
        body = _fill(sample.body, name)
        if sample.setup is not None:
            body.update(await sample.setup(admin, name))
        before = node.state.snapshot()
        r = await caller.request(mt.name, **body)
        if expected_allowed(who, mt):
            if r["s"] == FORBIDDEN:
                wrong.append(f"{mt.name}: expected allowed, got FORBIDDEN {r.get('e')}")
            elif sample.ok and r["s"] != OK:
                wrong.append(f"{mt.name}: expected OK, got {r}")
        else:
            denied.append(mt.name)
            if r["s"] != FORBIDDEN:
                wrong.append(f"{mt.name}: expected FORBIDDEN, got {r}")
            elif node.state.snapshot() != before:
                wrong.append(f"{mt.name}: denied but the state changed")
    assert not wrong, "\n".join(wrong)
    # Every denial is audited, exactly once, as denied.
    await audit_flushed(node)
    principal = "guest" if who == "guest" else f"spiffe://loom.dev/client/{who}"
    got = sorted(r["command"] for r in records(node)
                 if r.get("principal") == principal and r.get("result") == "denied")
    assert got == sorted(denied)


async def test_batch_execute_requires_its_own_grant(start_node: NodeFactory, dial: Dial) -> None:
    node: Node = await start_node()
    w = await dial(node, "writer")  # data-writer grants MAP_PUT, not BATCH_EXECUTE
    before = node.state.snapshot()
    r = await w.request("BATCH_EXECUTE", ops=[
        {"op": "MAP_PUT", "b": {"name": "m", "key": "k", "value": b"v"}}])
    assert r["s"] == FORBIDDEN, r
    assert node.state.snapshot() == before


async def test_a_denied_batch_member_names_itself(start_node: NodeFactory, dial: Dial) -> None:
    node: Node = await start_node(acl=_writer_as([
        {"types": ["BATCH_EXECUTE"]}, {"types": ["MAP_PUT"], "keys": ["u:*"]}]))
    w = await dial(node, "writer")
    before = node.state.snapshot()
    r = await w.request("BATCH_EXECUTE", ops=[
        {"op": "MAP_PUT", "b": {"name": "m", "key": "u:1", "value": b"v"}},
        {"op": "MAP_PUT", "b": {"name": "m", "key": "secret:2", "value": b"v"}}])
    assert r["s"] == FORBIDDEN, r
    e = r["e"]
    assert (e["op_index"], e["op"], e["structure"], e["key"]) == (1, "MAP_PUT", "m", "secret:2")
    assert "ops[1] MAP_PUT on 'm' key 'secret:2'" in e["msg"], e
    assert node.state.snapshot() == before
    await audit_flushed(node)
    rec, = [x for x in records(node) if x.get("command") == "BATCH_EXECUTE"]
    assert rec["result"] == "denied" and rec["principal"] == WRITER_P
    assert (rec["op_index"], rec["op"], rec["structure"], rec["key"]) == (
        1, "MAP_PUT", "m", "secret:2")


async def test_a_failed_batch_member_names_itself_in_the_audit_record(
        start_node: NodeFactory, dial: Dial) -> None:
    node: Node = await start_node()
    admin = await dial(node, "admin")
    await _ok(admin, "COUNTER_SET", name="c", value=2**63 - 1)
    r = await admin.request("BATCH_EXECUTE", ops=[
        {"op": "MAP_PUT", "b": {"name": "m", "key": "k", "value": b"v"}},
        {"op": "COUNTER_ADD", "b": {"name": "c", "delta": 1}}])
    assert r["s"] != OK and r["e"]["code"] == "LIMIT_EXCEEDED" and r["e"]["op_index"] == 1, r
    await audit_flushed(node)
    rec, = [x for x in records(node) if x.get("command") == "BATCH_EXECUTE"]
    assert rec["result"] == "limit_exceeded"
    assert (rec["op_index"], rec["op"], rec["structure"], rec["key"]) == (
        1, "COUNTER_ADD", "c", None)


# -- D2: LOCK_UNLOCK ----------------------------------------------------------------------------
async def test_lock_unlock_by_writer_denied(start_node: NodeFactory, dial: Dial) -> None:
    node: Node = await start_node()
    admin = await dial(node, "admin")
    writer = await dial(node, "writer")
    s = await _held_lock(admin, "L")
    before = node.state.snapshot()
    r = await writer.request("LOCK_UNLOCK", name="L", **s)
    assert r["s"] == FORBIDDEN, r
    assert node.state.snapshot() == before
    held = await _ok(admin, "LOCK_GET_OWNER", name="L")
    assert held is not None and held.get("session_id", s["session_id"]) == s["session_id"], held
    assert (await _ok(admin, "LOCK_IS_LOCKED", name="L"))
    await audit_flushed(node)
    recs = [x for x in records(node) if x.get("command") == "LOCK_UNLOCK"]
    assert len(recs) == 1, recs
    assert recs[0]["result"] == "denied" and recs[0]["principal"] == WRITER_P
    assert recs[0]["structure"] == "L"
    # The owner can still release it.
    await _ok(admin, "LOCK_UNLOCK", name="L", **s)


# -- D4: replies that reveal data -------------------------------------------------------------
def _writer_as(role_grants: list[dict[str, Any]]) -> dict[str, Any]:
    return policy_with({"limited": {"grants": role_grants}}, {WRITER_P: ["limited"]})


async def test_counter_increment_value_withheld_without_get(start_node: NodeFactory,
                                                            dial: Dial) -> None:
    node: Node = await start_node(acl=_writer_as([{"types": ["COUNTER_INCREMENT"]}]))
    admin = await dial(node, "admin")
    w = await dial(node, "writer")
    await _ok(admin, "COUNTER_SET", name="c", value=41)
    r = await w.request("COUNTER_INCREMENT", name="c")
    assert r["s"] == OK, r
    assert r["r"] is None, f"the new value leaked: {r}"
    assert await _ok(admin, "COUNTER_GET", name="c") == 42  # it did run
    r = await w.request("COUNTER_GET", name="c")
    assert r["s"] == FORBIDDEN


async def test_counter_increment_value_shown_with_get(start_node: NodeFactory, dial: Dial) -> None:
    node: Node = await start_node(
        acl=_writer_as([{"types": ["COUNTER_INCREMENT", "COUNTER_GET"]}]))
    w = await dial(node, "writer")
    r = await w.request("COUNTER_INCREMENT", name="c")
    assert r == {"id": r["id"], "s": OK, "r": 1}


async def test_batch_counter_increment_value_withheld_without_get(start_node: NodeFactory,
                                                                  dial: Dial) -> None:
    node: Node = await start_node(acl=_writer_as(
        [{"types": ["COUNTER_INCREMENT", "MAP_PUT", "BATCH_EXECUTE"]}]))
    admin = await dial(node, "admin")
    w = await dial(node, "writer")
    await _ok(admin, "COUNTER_SET", name="c", value=41)
    r = await w.request("BATCH_EXECUTE", ops=[
        {"op": "MAP_PUT", "b": {"name": "m", "key": "k", "value": b"v"}},
        {"op": "COUNTER_INCREMENT", "b": {"name": "c"}},
    ])
    assert r["s"] == OK, r
    assert 42 not in (r["r"] or []), f"the counter value leaked through a batch: {r}"


async def test_map_put_return_old_needs_map_get(start_node: NodeFactory, dial: Dial) -> None:
    node: Node = await start_node(acl=_writer_as([{"types": ["MAP_PUT", "MAP_GET_AND_DELETE",
                                                              "BATCH_EXECUTE"]}]))
    admin = await dial(node, "admin")
    w = await dial(node, "writer")
    await _ok(admin, "MAP_PUT", name="m", key="k", value=b"secret-old")
    before = node.state.snapshot()
    for op, body in [
        ("MAP_PUT", {"name": "m", "key": "k", "value": b"new", "return_old": True}),
        ("MAP_GET_AND_DELETE", {"name": "m", "key": "k"}),
        ("BATCH_EXECUTE", {"ops": [{"op": "MAP_PUT", "b": {
            "name": "m", "key": "k", "value": b"new", "return_old": True}}]}),
    ]:
        r = await w.request(op, **body)
        assert r["s"] == FORBIDDEN, (op, r)
        assert b"secret-old" not in repr(r).encode()
        assert node.state.snapshot() == before, op
    r = await w.request("MAP_PUT", name="m", key="k", value=b"new")
    assert r["s"] == OK and r["r"] is None, r
    r = await w.request("MAP_PUT", name="m", key="k", value=b"newer", return_old=False)
    assert r["s"] == OK and r["r"] is None, r


async def test_queue_push_does_not_reveal_length_without_size(start_node: NodeFactory,
                                                              dial: Dial) -> None:
    node: Node = await start_node(acl=_writer_as([{"types": ["QUEUE_PUSH"]}]))
    admin = await dial(node, "admin")
    w = await dial(node, "writer")
    for _ in range(5):
        await _ok(admin, "QUEUE_PUSH", name="q", value=b"x")
    r = await w.request("QUEUE_PUSH", name="q", value=b"y")
    assert r["s"] == OK, r
    assert r["r"] is None, f"queue length revealed without QUEUE_SIZE: {r}"


# -- D6: malformed arguments ------------------------------------------------------------------
MALFORMED: list[tuple[str, Any]] = [
    ("MAP_PUT", {"name": "m", "key": 1, "value": b"v"}),
    ("MAP_PUT", {"name": "m", "key": "k", "value": "text, not bytes"}),
    ("MAP_PUT", {"name": "m", "key": "k", "value": b"v", "return_old": 1}),
    ("MAP_PUT", {"name": "m", "key": "k", "value": b"v", "ttl_ms": True}),
    ("MAP_PUT", {"name": "m", "key": "k", "value": b"v", "ttl_ms": 0}),
    ("MAP_PUT", {"name": "m", "key": "k", "value": b"v", "colour": "red"}),
    ("MAP_PUT", {"name": "m", "key": "k"}),
    ("MAP_PUT", {"name": "bad name!", "key": "k", "value": b"v"}),
    ("MAP_PUT", {"name": "m", "key": "a\x00b", "value": b"v"}),
    ("MAP_PUT", {"name": "m", "key": "", "value": b"v"}),
    ("MAP_PUT", {"name": "m", "key": "k" * 1025, "value": b"v"}),
    ("MAP_PUT", [1, 2, 3]),
    ("MAP_PUT_ALL", {"name": "m", "entries": {"k": "str"}}),
    ("MAP_PUT_ALL", {"name": "m", "entries": {}}),
    ("MAP_GET_ALL", {"name": "m", "keys": "k"}),
    ("COUNTER_ADD", {"name": "c", "delta": 2**63}),
    ("COUNTER_ADD", {"name": "c", "delta": -(2**63) - 1}),
    ("COUNTER_ADD", {"name": "c", "delta": 2**200}),
    ("COUNTER_ADD", {"name": "c", "delta": True}),
    ("COUNTER_ADD", {"name": "c", "delta": 1.5}),
    ("COUNTER_ADD", {"name": "c", "delta": "1"}),
    ("COUNTER_ADD", {"name": "c"}),
    ("COUNTER_SET", {"name": "c", "value": None, "extra": 1}),
    ("COUNTER_INCREMENT", {"name": "c", "delta": 5}),
    ("LIST_GET", {"name": "l", "index": False}),
    ("QUEUE_CREATE", {"name": "q", "capacity": 0}),
    ("SESSION_OPEN", {"ttl_ms": 1}),
    ("LOCK_LOCK", {"name": "L", "session_id": 0}),
    ("BATCH_EXECUTE", {"ops": []}),
    ("BATCH_EXECUTE", {"ops": "MAP_PUT"}),
    ("BATCH_EXECUTE", {"ops": [{"op": "MAP_PUT"}]}),
    ("BATCH_EXECUTE", {"ops": [{"op": "MAP_PUT", "b": {"name": "m", "key": 1, "value": b""}}]}),
    ("BATCH_EXECUTE", {"ops": [{"op": "BATCH_EXECUTE", "b": {"ops": []}}]}),
    ("BATCH_EXECUTE", {"ops": [{"op": "MAP_GET", "b": {"name": "m", "key": "k"}}]}),
    ("BATCH_EXECUTE", {"ops": [{"op": "LOCK_LOCK", "b": {"name": "L", "session_id": 1}}]}),
    ("BATCH_EXECUTE", {"ops": [{"op": "RAFT_APPEND_ENTRIES", "b": {"msg": {}}}]}),
    ("BATCH_EXECUTE", {"ops": [{"op": 0x0101, "b": {}}]}),
    ("STRUCT_DESTROY", {"category": 3, "name": "m"}),
]


# Only an admin reaches ACL_SET's policy check (anyone else is FORBIDDEN first).
ADMIN_MALFORMED: list[tuple[str, Any]] = [
    ("ACL_SET", {"policy": {"roles": {"x": {"grants": [{"types": ["RAFT_HEARTBEAT"]}]}}}}),
    ("ACL_SET", {"policy": {"roles": {"x": {"grants": [{"types": ["*"]}]}},
                            "principals": {"spiffe://loom.dev/client/w": ["nope"]}}}),
    ("ACL_SET", {"policy": "everything"}),
    ("ACL_SET", {"policy": TEST_ACL, "expected_version": -1}),
]


@pytest.mark.parametrize("who", ["admin", "writer"])
async def test_malformed_args_bad_request_state_unchanged(who: str, start_node: NodeFactory,
                                                          dial: Dial) -> None:
    node: Node = await start_node()
    conn = await dial(node, who)
    await _ok(await dial(node, "admin"), "COUNTER_SET", name="c", value=2**63 - 1)
    before = node.state.snapshot()
    wrong = []
    cases = MALFORMED + (ADMIN_MALFORMED if who == "admin" else [])
    for op, body in cases:
        r = await raw_request(conn, frame(op, body, rid=7))
        assert r is not None
        if r["s"] != BAD_REQUEST:
            wrong.append(f"{op} {body!r}: {r}")
        if node.state.snapshot() != before:
            wrong.append(f"{op} {body!r}: state changed")
    assert not wrong, "\n".join(wrong)


async def test_counter_overflow_at_run_time_is_refused(node: Node, admin: RawConn) -> None:
    await _ok(admin, "COUNTER_SET", name="c", value=2**63 - 1)
    r = await admin.request("COUNTER_INCREMENT", name="c")
    assert r["s"] not in (OK, FORBIDDEN), r
    r = await admin.request("COUNTER_ADD", name="c", delta=2**63 - 1)
    assert r["s"] not in (OK, FORBIDDEN), r
    assert await _ok(admin, "COUNTER_GET", name="c") == 2**63 - 1


# -- D7: peer-plane types on the client port -------------------------------------------------
async def test_raft_types_on_client_port_rejected(node: Node, admin: RawConn) -> None:
    raft = [mt for mt in catalog.BY_OPCODE.values() if mt.listener is Listener.PEER]
    assert len(raft) >= len(catalog.RAFT_NAMES)
    before = node.state.snapshot()
    for mt in raft:
        for body in ({"msg": {}}, {"msg": {"term": 99, "from": "n2", "entries": []}}, {}):
            r = await raw_request(admin, frame(mt.opcode, body, rid=5))
            assert r is not None and r["s"] == BAD_REQUEST, (mt.name, r)
    assert node.state.snapshot() == before
    r = await admin.request("PING")
    assert r["s"] == OK


# -- D3: composite requests -------------------------------------------------------------------
async def test_batch_with_one_forbidden_op_applies_nothing(start_node: NodeFactory,
                                                           dial: Dial) -> None:
    node: Node = await start_node(acl=_writer_as(
        [{"types": ["BATCH_EXECUTE", "MAP_PUT", "COUNTER_INCREMENT"]}]))
    w = await dial(node, "writer")
    before = node.state.snapshot()
    for ops in (
        [{"op": "MAP_PUT", "b": {"name": "m", "key": "a", "value": b"1"}},
         {"op": "MAP_DELETE", "b": {"name": "m", "key": "b"}}],
        [{"op": "MAP_CLEAR", "b": {"name": "m"}},
         {"op": "MAP_PUT", "b": {"name": "m", "key": "a", "value": b"1"}}],
        [{"op": "COUNTER_INCREMENT", "b": {"name": "c"}},
         {"op": "COUNTER_SET", "b": {"name": "c", "value": 7}}],
    ):
        r = await w.request("BATCH_EXECUTE", ops=ops)
        assert r["s"] == FORBIDDEN, (ops, r)
        assert node.state.snapshot() == before
    r = await w.request("BATCH_EXECUTE", ops=[
        {"op": "MAP_PUT", "b": {"name": "m", "key": "a", "value": b"1"}}])
    assert r["s"] == OK, r


# -- D5: key and structure scopes -------------------------------------------------------------
async def test_key_scoped_grant(start_node: NodeFactory, dial: Dial) -> None:
    node: Node = await start_node(acl=_writer_as([
        {"types": ["category:MAP"], "keys": ["user:*"]}, {"types": ["BATCH_EXECUTE"]},
    ]))
    w = await dial(node, "writer")
    admin = await dial(node, "admin")
    await _ok(admin, "MAP_PUT", name="m", key="admin:1", value=b"top-secret")
    r = await w.request("MAP_PUT", name="m", key="user:1", value=b"v")
    assert r["s"] == OK, r
    assert (await w.request("MAP_GET", name="m", key="user:1"))["s"] == OK
    before = node.state.snapshot()
    denied: list[tuple[str, dict[str, Any]]] = [
        ("MAP_PUT", {"name": "m", "key": "admin:1", "value": b"x"}),
        ("MAP_GET", {"name": "m", "key": "admin:1"}),
        ("MAP_GET", {"name": "m", "key": "User:1"}),
        ("MAP_DELETE", {"name": "m", "key": "admin:1"}),
        ("MAP_GET_ALL", {"name": "m", "keys": ["user:1", "admin:1"]}),
        ("MAP_PUT_ALL", {"name": "m", "entries": {"user:2": b"x", "admin:1": b"x"}}),
        ("MAP_KEYS", {"name": "m"}),
        ("MAP_SCAN", {"name": "m", "match": "user:*"}),
        ("MAP_SCAN", {"name": "m"}),
        ("MAP_SIZE", {"name": "m"}),
        ("MAP_CLEAR", {"name": "m"}),
        ("BATCH_EXECUTE", {"ops": [
            {"op": "MAP_PUT", "b": {"name": "m", "key": "user:3", "value": b"x"}},
            {"op": "MAP_DELETE", "b": {"name": "m", "key": "admin:1"}}]}),
    ]
    for op, body in denied:
        r = await w.request(op, **body)
        assert r["s"] == FORBIDDEN, (op, body, r)
        assert b"top-secret" not in repr(r).encode()
        assert node.state.snapshot() == before, op


async def test_structure_scoped_grant(start_node: NodeFactory, dial: Dial) -> None:
    node: Node = await start_node(acl=_writer_as([
        {"types": ["MAP_PUT", "MAP_GET"], "structures": ["public-*"]},
    ]))
    w = await dial(node, "writer")
    assert (await w.request("MAP_PUT", name="public-1", key="k", value=b"v"))["s"] == OK
    before = node.state.snapshot()
    for name in ("private", "Public-1", "xpublic-1"):
        r = await w.request("MAP_PUT", name=name, key="k", value=b"v")
        assert r["s"] == FORBIDDEN, (name, r)
    assert node.state.snapshot() == before
