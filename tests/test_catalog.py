"""The catalog is the single source of truth: its invariants and the generated reference."""

from __future__ import annotations

from pathlib import Path

from loom.wire import catalog
from loom.wire.catalog import Access, Category, Listener
from loom.wire.docgen import render

ROOT = Path(__file__).resolve().parent.parent


def test_protocol_doc_is_generated_from_the_catalog() -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    assert doc == render(), "stale: run python -m loom.wire.docgen > docs/protocol.md"


def test_at_least_85_message_types_each_with_a_unique_opcode() -> None:
    assert len(catalog.BY_OPCODE) >= 85
    assert len({m.name for m in catalog.BY_OPCODE.values()}) == len(catalog.BY_OPCODE)


def test_raft_types_exist_only_on_the_peer_listener() -> None:
    raft = [m for m in catalog.BY_OPCODE.values() if m.category is Category.RAFT]
    assert raft, "RAFT types must be registered in the catalog"
    assert all(m.listener is Listener.PEER for m in raft)
    assert all(m.category is not Category.RAFT for m in catalog.client_types())


def test_every_client_type_declares_a_class_and_structure_rules() -> None:
    for m in catalog.client_types():
        assert m.access in Access
        if m.key_field or m.keys_field:
            assert m.has_structure, m.name
        if m.waits:
            assert "timeout_ms" in m.schema, m.name


def test_raft_names_match_the_consensus_core() -> None:
    from loom.raft.messages import RAFT_MESSAGE_NAMES

    assert set(catalog.RAFT_NAMES) == set(RAFT_MESSAGE_NAMES)


def test_execution_column_matches_the_state_machine() -> None:
    """Every log read is answered by `StateMachine.read`, every log write has an apply handler,
    and nothing local or cluster-administrative reaches the state machine."""
    from loom.state.command import Command
    from loom.state.machine import StateMachine
    from loom.wire.catalog import Execution, names_with

    sm = StateMachine()
    for name in names_with(Execution.LOG_READ) | names_with(Execution.LOG_WRITE):
        assert name in sm.handlers, name
    for name in names_with(Execution.LOCAL) | names_with(Execution.CLUSTER_ADMIN):
        assert name not in sm.handlers, name
    for mt in catalog.client_types():
        out = sm.read(Command(mt.name, {}, 0))
        refused = "is not a read" in out.message
        assert refused == (mt.execution is not Execution.LOG_READ), mt.name


def test_execution_agrees_with_access() -> None:
    from loom.wire.catalog import Execution

    for mt in catalog.BY_OPCODE.values():
        if mt.access is Access.PUBLIC or mt.listener is Listener.PEER:
            assert mt.execution is Execution.LOCAL, mt.name
        if mt.access is Access.READ:
            assert not mt.is_write, mt.name
        assert mt.is_write == (mt.execution in (Execution.LOG_WRITE, Execution.CLUSTER_ADMIN))
    # The three admin types that only read are reads, not log entries (issue: each cost an fsync).
    for name in ("ACL_GET", "STRUCT_LIST", "STRUCT_STATS"):
        assert catalog.BY_NAME[name].execution is Execution.LOG_READ
