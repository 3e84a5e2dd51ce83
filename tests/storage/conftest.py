from __future__ import annotations

import os

import pytest

from loom.raft.types import Entry, EntryType
from loom.storage import StorageOptions

KiB = 1024


def small_options(**kw: object) -> StorageOptions:
    base: dict[str, object] = {
        "segment_size": 64 * KiB,
        "max_record_size": 8 * KiB,
        "snapshot_chunk_size": 4 * KiB,
        "trailing_entries": 20,
    }
    base.update(kw)
    return StorageOptions(**base)  # type: ignore[arg-type]


def entry(index: int, term: int = 1, size: int = 100) -> Entry:
    """A deterministic entry whose data names its index and term."""
    tag = f"{index}:{term}:".encode()
    data = (tag * (size // len(tag) + 1))[:size]
    return Entry(term, index, EntryType.NORMAL, data)


def entries(first: int, count: int, term: int = 1, size: int = 100) -> list[Entry]:
    return [entry(i, term, size) for i in range(first, first + count)]


@pytest.fixture
def data_dir(tmp_path: object) -> str:
    return os.path.join(str(tmp_path), "data")
