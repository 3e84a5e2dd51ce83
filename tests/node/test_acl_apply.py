"""A write is decided under the ACL policy in force at its place in the log (D8, write side).

The leader decides a write under the policy it has applied, which can be older than the policy
at the write's log position: a leader elected a moment ago may not yet have applied a
revocation its predecessor committed, and any leader may decide a write while an ACL_SET is
proposed but not yet applied. Both are one case to the state machine: the write carries the
version it was decided under and, applied after another version, is refused (changing nothing);
the node then decides it again under the policy in force. These tests build that order exactly,
on a real node (real driver, storage and state machine, no connection): the ACL_SET and the
write enter the driver's inbox in that order, the write decided before the ACL_SET applied.
"""

from __future__ import annotations

from typing import Any

import cbor2
import trio

from loom.node.dispatcher import Call
from loom.node.server import Node
from loom.security.identity import Identity, Role
from loom.state.command import Command, Outcome
from loom.state.machine import StateMachine
from loom.wire import catalog
from loom.wire.codec import Request
from loom.wire.errors import LoomError, Status
from tests.conftest import TEST_ACL, NodeFactory
from tests.node.conftest import WRITER_P, audit_flushed, records


class Session:
    """The dispatcher's view of a connection of the `writer` client certificate."""

    conn_id = "c1"
    listener = "client"
    source = "127.0.0.1"
    client_id = "acl-apply-test"
    version = 1
    identity = Identity(Role.CLIENT, "writer", WRITER_P, "loom.dev")

    def subscribe(self, topic: str, request_id: int, from_seq: int | None) -> int:
        raise NotImplementedError

    def unsubscribe(self, subscription: int) -> bool:
        raise NotImplementedError


def policy(writer_roles: list[str], **roles: Any) -> dict[str, Any]:
    return {**TEST_ACL, "roles": {**TEST_ACL["roles"], **roles},
            "principals": {**TEST_ACL["principals"], WRITER_P: writer_roles}}


REVOKED = policy(["reader"])
UNRELATED = policy(["data-writer", "reader"], auditor={"grants": [{"types": ["ACL_GET"]}]})


async def acl_set(node: Node, doc: dict[str, Any]) -> Outcome:
    with trio.fail_after(10):
        return await node.log.propose(Command("ACL_SET", {"policy": doc}, 0))


def start(node: Node, op: str, seq: int, **body: Any) -> Call:
    req = Request(1, seq, catalog.BY_NAME[op].opcode, body, {}, seq=seq)
    call = node.dispatcher.start(Session(), req)
    assert isinstance(call, Call), call
    return call


def map_value(node: Node, key: str) -> Any:
    return node.state.read(Command("MAP_GET", {"name": "m", "key": key}, 0)).value


async def in_flight_with_acl_set(node: Node, call: Call, doc: dict[str, Any]
                                 ) -> tuple[dict[str, Any], Outcome]:
    """Propose `doc` and then `call` (already decided) in one driver turn: the ACL_SET takes
    the lower index, so it applies between the write's decision and the write's apply."""
    answers: list[dict[str, Any]] = []
    acl: list[tuple[Outcome | None, LoomError | None]] = []
    node.log.submit(Command("ACL_SET", {"policy": doc}, 0), read=False,
                    on_done=lambda o, e: acl.append((o, e)))
    node.dispatcher.submit(call, answers.append)
    with trio.fail_after(10):
        while not (answers and acl):
            await trio.sleep(0.01)
    assert len(answers) == 1
    out, err = acl[0]
    assert err is None and out is not None and out.status is Status.OK, acl
    return answers[0], out


async def test_a_write_decided_before_a_revocation_and_applied_after_it_is_forbidden(
        start_node: NodeFactory) -> None:
    node = await start_node()
    v = node.state.acl_version
    assert v >= 1  # the seed
    ok = start(node, "MAP_PUT", 1, name="m", key="before", value=b"v")
    answer, _ = await in_flight_with_acl_set(node, ok, UNRELATED)
    assert answer["s"] == int(Status.OK), answer  # re-decided under v+1, still allowed
    assert map_value(node, "before") == b"v"
    assert node.state.acl_version == v + 1

    denied_before = node.dispatcher.stats.denied
    call = start(node, "MAP_PUT", 2, name="m", key="k", value=b"w")
    assert call.policy_version == v + 1  # decided while the writer still held data-writer
    answer, out = await in_flight_with_acl_set(node, call, REVOKED)
    assert out.value == {"version": v + 2}
    assert answer["s"] == int(Status.FORBIDDEN), answer
    assert "may not MAP_PUT" in answer["e"]["msg"], answer
    assert map_value(node, "k") is None  # applied nowhere
    assert node.dispatcher.stats.denied == denied_before + 1

    # The client's retry with the same sequence number is decided anew, not answered from
    # the deduplication table (the refusal was not stored there).
    again = node.dispatcher.start(Session(), Request(
        1, 3, catalog.BY_NAME["MAP_PUT"].opcode, {"name": "m", "key": "k", "value": b"w"}, {},
        seq=2))
    assert isinstance(again, dict) and again["s"] == int(Status.FORBIDDEN), again

    await audit_flushed(node)
    refused = [r for r in records(node) if r.get("command") == "MAP_PUT"
               and r.get("key") == "k"]
    assert [r["result"] for r in refused] == ["denied", "denied"], refused


def test_a_write_is_refused_at_apply_on_every_replica_alike() -> None:
    """The rule itself, on the state machine: a pure function of the entry and the state."""
    replicas = [StateMachine(), StateMachine()]
    for sm in replicas:
        assert sm.apply(Command("ACL_SET", {"policy": TEST_ACL}, 1), 1).status is Status.OK
        assert sm.apply(Command("ACL_SET", {"policy": REVOKED}, 2), 2).status is Status.OK
    stale = Command("MAP_PUT", {"name": "m", "key": "k", "value": b"x"}, 3, "p/c", 7, WRITER_P,
                    1)
    wire = Command.decode(stale.encode())
    assert wire == stale
    outs = [sm.apply(wire, 3) for sm in replicas]
    assert outs[0] == outs[1]
    assert outs[0].status is Status.FORBIDDEN and outs[0].details["reason"] == "policy_changed"
    for sm in replicas:
        assert sm.read(Command("MAP_GET", {"name": "m", "key": "k"}, 4)).value is None
        # not stored for deduplication: the same (client, seq) under the current version runs
        fresh = Command("MAP_PUT", {"name": "m", "key": "k", "value": b"y"}, 4, "p/c", 7,
                        WRITER_P, 2)
        assert sm.apply(fresh, 4).status is Status.OK
    # Internal commands (no version) and entries logged before writes carried one still apply.
    legacy = Command("MAP_PUT", {"name": "m", "key": "j", "value": b"z"}, 5, "", 0, "")
    assert len(cbor2.loads(legacy.encode())) == 6
    assert replicas[0].apply(legacy, 5).status is Status.OK


async def test_a_waiting_write_decided_before_a_revocation_is_forbidden(
        start_node: NodeFactory) -> None:
    node = await start_node()
    poller = policy(["data-writer", "reader", "poller"],
                    poller={"grants": [{"types": ["QUEUE_POLL"]}]})
    assert (await acl_set(node, poller)).status is Status.OK
    with trio.fail_after(10):
        pushed = await node.log.propose(Command("QUEUE_PUSH", {"name": "q", "value": b"x"}, 0))
    assert pushed.status is Status.OK, pushed
    call = start(node, "QUEUE_POLL", 1, name="q", timeout_ms=2000)
    assert call.waits
    acl: list[tuple[Outcome | None, LoomError | None]] = []
    node.log.submit(Command("ACL_SET", {"policy": REVOKED}, 0), read=False,
                    on_done=lambda o, e: acl.append((o, e)))
    with trio.fail_after(10):
        answer = await node.dispatcher.run(call)
    assert acl and acl[0][1] is None
    assert answer["s"] == int(Status.FORBIDDEN), answer
    size = node.state.read(Command("QUEUE_SIZE", {"name": "q"}, 0))
    assert size.value == 1  # the item is still there
