"""Member addresses are replicated state: applied from the log, kept in the snapshot, and read
back from a node snapshot written before they moved into the state machine."""

from __future__ import annotations

import cbor2

from loom.state.command import Command
from loom.state.machine import StateMachine
from loom.state.members import member_address


def test_addresses_are_applied_in_log_order_and_survive_a_snapshot() -> None:
    sm = StateMachine()
    sm.apply(member_address("n4", "10.0.0.4:7001"), 1)
    sm.apply(member_address("n5", "10.0.0.5:7001"), 2)
    sm.apply(member_address("n4", "10.0.0.9:7001"), 3)  # moved: the newest wins
    assert sm.members.addrs == {"n4": "10.0.0.9:7001", "n5": "10.0.0.5:7001"}
    again = StateMachine.restore(sm.snapshot())
    assert again.members.addrs == sm.members.addrs
    assert again.snapshot() == sm.snapshot()


def test_a_malformed_address_changes_nothing() -> None:
    sm = StateMachine()
    out = sm.apply(Command("MEMBER_ADDRESS", {"node": "n4", "peer_addr": 7}, 0), 1)
    assert out.value is None and sm.members.addrs == {}


def test_a_node_snapshot_of_the_old_layout_restores_with_its_addresses() -> None:
    sm = StateMachine()
    sm.apply(Command("MAP_PUT", {"name": "m", "key": "k", "value": b"v"}, 5), 1)
    _, *rest, _ = cbor2.loads(sm.snapshot())
    legacy_sm = cbor2.dumps([2, *rest])  # format 2: no addresses inside
    blob = cbor2.dumps({"sm": legacy_sm, "members": {"n2": "10.0.0.2:7001"}})
    old = StateMachine.restore(blob)
    assert old.members.addrs == {"n2": "10.0.0.2:7001"}
    assert old.read(Command("MAP_GET", {"name": "m", "key": "k"}, 5)).value == b"v"
