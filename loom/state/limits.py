"""Configured bounds of the state machine.

Every replica must run with the same `StateLimits` (they are part of the cluster configuration):
a limit decides whether a command succeeds, so replicas with different limits would diverge.
"""

from __future__ import annotations

from dataclasses import dataclass

from loom.wire.glob import Glob, GlobError


@dataclass(frozen=True, slots=True)
class StateLimits:
    max_value_bytes: int = 1 << 20  # one value / item / message / reference: TOO_LARGE above
    max_entries: int = 10_000_000  # entries (items, members) of one structure
    max_structures: int = 100_000  # structures of all categories together
    max_total_bytes: int = 8 << 30  # estimated bytes of all structures together
    max_reentrancy: int = 64  # holds of one FencedLock by its owning session
    topic_ring: int = 1024  # most recent messages kept per topic for resuming subscribers
    max_sessions: int = 100_000
    # Deduplication table (see dedupe.py): the last `dedupe_per_client` outcomes per client,
    # at most `dedupe_clients` clients (least recently active evicted first), and a client idle
    # for `dedupe_idle_ms` of log time is forgotten.
    dedupe_per_client: int = 64
    dedupe_clients: int = 10_000
    dedupe_idle_ms: int = 3_600_000
    # Housekeeping done by each apply, before the command: at most this many expired sessions,
    # expired map entries and idle dedupe clients are removed (bounded work per apply).
    housekeeping_budget: int = 64
    # MAP_KEYS / MAP_SCAN / SET_MEMBERS examine at most this many keys per call.
    scan_budget: int = 1024
    # MAP_SCAN: character comparisons one call may spend matching its glob (SECURITY-CATALOGUE
    # F4). A pattern that must search for a wide wildcard segment examines fewer keys per call
    # (at least one), so its pages are shorter, never slower: see loom/wire/glob.py.
    scan_match_work: int = 8 << 20
    # Maps used as caches: (structure-name glob, maximum entries). A map whose name matches the
    # first pattern evicts its least recently *written* entry when a new key would exceed the
    # maximum (reads do not go through the log, so they cannot refresh recency).
    map_caches: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        for pattern, _ in self.map_caches:  # refused at start, not at a map's first write
            try:
                Glob.compile(pattern)
            except GlobError as e:
                raise ValueError(f"state.map_caches: {e.message}") from None
