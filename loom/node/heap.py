"""Giving freed heap memory back to the operating system, after the moments that free a lot.

CPython takes objects over 512 bytes from the C allocator. glibc's malloc serves large blocks
with mmap at first, but raises that threshold (up to 32 MiB) each time such a block is freed,
so the log's entries (a 1,000-write batch is about 275 KB) soon live in the heap, between
smaller objects. When many of them go at once (the log compacted behind a snapshot, the WAL
replayed at a start, a state replaced by a received snapshot) the pages stay with the
process: measured, a node that replayed a 275 MB log and kept 90 MB of it held 537 MB.
`malloc_trim(0)` returns every wholly free page of the heap (glibc >= 2.8 walks all of it,
not only the top), which brought that node to 87 MB.

Where glibc is absent (musl, macOS) this does nothing. It takes milliseconds per hundred MB
of heap, and is called only after those rare moments.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

_trim: Callable[[int], int] | None = None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _trim = _libc.malloc_trim
except (OSError, AttributeError):  # not glibc
    _trim = None


def release_free_memory() -> bool:
    """Return the heap's free pages to the system; False where that is not possible."""
    if _trim is None:
        return False
    _trim(0)
    return True
