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
