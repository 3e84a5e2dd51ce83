"""Freed heap pages go back to the system after `release_free_memory` (glibc only)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from loom.node.heap import release_free_memory


def rss_kb() -> int:
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_freed_log_entries_go_back_to_the_system() -> None:
    # A freed 4 MiB block raises glibc's mmap threshold: blocks of 300 KB come from the heap
    # from then on, as a node's log entries do once it has run a while.
    del_me = bytearray(4 << 20)
    del del_me
    entries = [bytes([i % 251]) * 300_000 for i in range(400)]  # 120 MB of log entries
    kept = entries[1::2]  # every other one stays: the freed ones are holes, not the heap's top
    del entries
    before = rss_kb()
    if not release_free_memory():
        pytest.skip("not glibc")
    after = rss_kb()
    assert before - after > 40_000, (before, after)  # most of the 60 MB freed is given back
    assert len(kept) == 200
