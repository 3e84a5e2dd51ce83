"""MAP: key -> bytes with optional per-entry TTL and optional LRU cap (cache maps).

Layout, chosen for a small per-entry overhead (bench/state_bench.py measures it):
- `data: dict[str, bytes]` holds every entry (including expired ones not purged yet);
- `keys: SortedList[str]` the same keys in order, for cursor pages in O(log n + page);
- `exp: dict[str, int]` + `exp_idx: SortedList[(expiry_ms, key)]` only for entries with a TTL;
- `lru: OrderedDict[str, None]` only for cache maps (StateLimits.map_caches).

Invariants: set(data) == set(keys); set(exp) <= set(data) and exp_idx == sorted(exp.items()
swapped); lru (if any) holds exactly the keys of data, least recently written first.

TTL: an entry is live while now < expiry. Reads evaluate against the command's time and simply
skip expired entries (MAP_SIZE subtracts the expired count, found by bisecting exp_idx). Apply
purges: each command purges up to `housekeeping_budget` expired entries of the map it touches
and as many from one other map with TTL entries, round robin by name, so the work per apply is
bounded and every expired entry is eventually reclaimed.

Recency for cache maps is write order: reads do not go through the log, so a read cannot
refresh an entry on every replica alike. Wart: undoing a failed command re-inserts keys it
touched at the most recent end of the recency order.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import cbor2
from sortedcontainers import SortedList  # type: ignore[import-untyped]

from loom.state.base import Core, Family, Struct, canon, cbor_array_head, page_sorted
from loom.wire.errors import NotFound
from loom.wire.glob import Glob
from loom.wire.schema import MAX_KEY_BYTES

ENTRY_OVERHEAD = 145  # bytes per entry beyond key and value (bench/state_bench.py measures)
TTL_OVERHEAD = 100  # estimated extra bytes of an entry with a TTL


def _cost(key: str, value: bytes, has_ttl: bool) -> int:
    return len(key) + len(value) + ENTRY_OVERHEAD + (TTL_OVERHEAD if has_ttl else 0)


class MapS(Struct):
    __slots__ = ("data", "exp", "exp_idx", "keys", "lru", "max_size")

    def __init__(self, max_size: int | None = None) -> None:
        super().__init__()
        self.data: dict[str, bytes] = {}
        self.keys = SortedList()
        self.exp: dict[str, int] = {}
        self.exp_idx = SortedList()
        self.max_size = max_size
        self.lru: OrderedDict[str, None] | None = None if max_size is None else OrderedDict()

    def size(self) -> int:
        return len(self.data)

    def live(self, key: str, now: int) -> bytes | None:
        v = self.data.get(key)
        if v is not None and self.exp:
            e = self.exp.get(key)
            if e is not None and e <= now:
                return None
        return v

    def expired_count(self, now: int) -> int:
        return int(self.exp_idx.bisect_left((now + 1, ""))) if self.exp else 0


class MapFamily(Family[MapS]):
    CATEGORY = "MAP"

    def __init__(self, core: Core) -> None:
        super().__init__(core)
        self.ttl_maps = SortedList()  # names of maps with at least one TTL entry
        self.sweep_after = ""  # round-robin position of the background purge

    def new(self) -> MapS:
        return MapS(None)

    def new_for(self, name: str) -> MapS:
        for pattern, size in self.core.limits.map_caches:
            if Glob.compile(pattern).match(name):
                return MapS(min(size, self.core.limits.max_entries))
        return MapS(None)

    # -- raw mutations: no limit checks, no journal; they keep every invariant and the bytes --
    def _raw_set(self, name: str, m: MapS, key: str, value: bytes, exp: int | None) -> None:
        old = m.data.get(key)
        old_exp = m.exp.get(key)
        if old is None:
            m.keys.add(key)
        else:
            self.core.charge(m, -_cost(key, old, old_exp is not None), check=False)
        m.data[key] = value
        if old_exp is not None and old_exp != exp:
            m.exp_idx.remove((old_exp, key))
            del m.exp[key]
        if exp is not None and old_exp != exp:
            m.exp[key] = exp
            m.exp_idx.add((exp, key))
        self._mark(name, m)
        if m.lru is not None:
            m.lru[key] = None
            m.lru.move_to_end(key)
        self.core.charge(m, _cost(key, value, exp is not None), check=False)

    def _raw_del(self, name: str, m: MapS, key: str) -> None:
        old = m.data.pop(key)
        m.keys.remove(key)
        e = m.exp.pop(key, None)
        if e is not None:
            m.exp_idx.remove((e, key))
            self._mark(name, m)
        if m.lru is not None:
            del m.lru[key]
        self.core.charge(m, -_cost(key, old, e is not None), check=False)

    def _mark(self, name: str, m: MapS) -> None:
        """Keep `ttl_maps` == names of maps with TTL entries (a SortedList allows duplicates,
        so membership is checked)."""
        listed = name in self.ttl_maps
        if m.exp and not listed:
            self.ttl_maps.add(name)
        elif not m.exp and listed:
            self.ttl_maps.remove(name)

    def _restore(self, name: str, m: MapS, key: str, old: bytes | None, exp: int | None) -> None:
        if old is None:
            if key in m.data:
                self._raw_del(name, m, key)
        else:
            self._raw_set(name, m, key, old, exp)

    # -- journaled mutations ------------------------------------------------------------------
    def set(self, name: str, m: MapS, key: str, value: bytes, exp: int | None) -> None:
        old = m.data.get(key)
        old_exp = m.exp.get(key)
        if old is None:
            self.purge(name, m, self.core.limits.housekeeping_budget)
            limit = m.max_size
            while limit is not None and len(m.data) >= limit and m.lru:
                self.delete(name, m, next(iter(m.lru)))  # evict least recently written
            self.core.check_entries("map", name, len(m.data) + 1)
        delta = _cost(key, value, exp is not None)
        if old is not None:
            delta -= _cost(key, old, old_exp is not None)
        self.core.check_grow(delta)  # refuse growth over the byte budget before any change
        self._raw_set(name, m, key, value, exp)
        self.core.record(lambda: self._restore(name, m, key, old, old_exp))

    def delete(self, name: str, m: MapS, key: str) -> None:
        old = m.data[key]
        old_exp = m.exp.get(key)
        self._raw_del(name, m, key)

        def undo() -> None:
            self._raw_set(name, m, key, old, old_exp)
            if m.lru is not None:
                m.lru.move_to_end(key, last=False)  # evictions are undone oldest-first

        self.core.record(undo)

    def purge(self, name: str, m: MapS, budget: int) -> int:
        """Remove up to `budget` expired entries of m (journaled); how many were removed."""
        n = 0
        now = self.core.now
        while n < budget and m.exp_idx and m.exp_idx[0][0] <= now:
            self.delete(name, m, m.exp_idx[0][1])
            n += 1
        return n

    def housekeeping(self, budget: int) -> None:
        """Purge expired entries of the next map (by name, round robin) that has TTLs."""
        if not self.ttl_maps:
            return
        i = self.ttl_maps.bisect_right(self.sweep_after)
        name = self.ttl_maps[i] if i < len(self.ttl_maps) else self.ttl_maps[0]
        self.sweep_after = name
        self.purge(name, self.items[name], budget)

    def destroy(self, name: str) -> bool:
        m = self.items.get(name)
        if m is not None and m.exp:
            self.ttl_maps.discard(name)
            self.core.record(lambda: self.ttl_maps.add(name))
        return super().destroy(name)

    # -- helpers ------------------------------------------------------------------------------
    def _exp(self, b: dict[str, Any]) -> int | None:
        ttl = b.get("ttl_ms")
        return None if ttl is None or ttl == 0 else self.core.now + int(ttl)

    # -- writes (apply) ---------------------------------------------------------------------
    def op_MAP_PUT(self, b: dict[str, Any]) -> Any:
        """-> None, or with return_old the previous live value (bytes | None).
        A put without ttl_ms clears any TTL the key had."""
        m = self.get_or_create(b["name"])
        old = m.live(b["key"], self.core.now)
        self.set(b["name"], m, b["key"], b["value"], self._exp(b))
        return old if b.get("return_old") else None

    def op_MAP_DELETE(self, b: dict[str, Any]) -> bool:
        """-> whether a live entry was removed."""
        m = self.items.get(b["name"])
        if m is None or b["key"] not in m.data:
            return False
        existed = m.live(b["key"], self.core.now) is not None
        self.delete(b["name"], m, b["key"])
        return existed

    def op_MAP_PUT_IF_ABSENT(self, b: dict[str, Any]) -> bool:
        """-> whether the key was absent (and is now set)."""
        m = self.get_or_create(b["name"])
        if m.live(b["key"], self.core.now) is not None:
            return False
        self.set(b["name"], m, b["key"], b["value"], self._exp(b))
        return True

    def op_MAP_REPLACE(self, b: dict[str, Any]) -> bool:
        """-> whether the key was present (and is now replaced)."""
        m = self.items.get(b["name"])
        if m is None or m.live(b["key"], self.core.now) is None:
            return False
        self.set(b["name"], m, b["key"], b["value"], self._exp(b))
        return True

    def op_MAP_CLEAR(self, b: dict[str, Any]) -> int:
        """-> number of entries removed (expired ones not counted). O(1) journal."""
        name = b["name"]
        m = self.items.get(name)
        if m is None:
            return 0
        removed = len(m.data) - m.expired_count(self.core.now)
        saved = (m.data, m.keys, m.exp, m.exp_idx, m.lru, m.nbytes)
        had_ttl = bool(m.exp)
        m.data, m.keys, m.exp, m.exp_idx = {}, SortedList(), {}, SortedList()
        m.lru = None if m.lru is None else OrderedDict()
        self.core.charge(m, -m.nbytes, check=False)
        if had_ttl:
            self.ttl_maps.discard(name)

        def undo() -> None:
            m.data, m.keys, m.exp, m.exp_idx, m.lru, nbytes = saved
            self.core.charge(m, nbytes, check=False)
            if had_ttl:
                self.ttl_maps.add(name)

        self.core.record(undo)
        return removed

    def op_MAP_PUT_ALL(self, b: dict[str, Any]) -> int:
        """-> number of entries written (all or nothing)."""
        m = self.get_or_create(b["name"])
        exp = self._exp(b)
        for k in sorted(b["entries"]):  # sorted: dict order of a decoded body is not trusted
            self.set(b["name"], m, k, b["entries"][k], exp)
        return len(b["entries"])

    def op_MAP_COMPARE_AND_SET(self, b: dict[str, Any]) -> bool:
        """-> whether the live value equalled expected (and was replaced)."""
        m = self.items.get(b["name"])
        if m is None or m.live(b["key"], self.core.now) != b["expected"]:
            return False
        self.set(b["name"], m, b["key"], b["value"], self._exp(b))
        return True

    def op_MAP_REMOVE_IF_EQUAL(self, b: dict[str, Any]) -> bool:
        """-> whether the live value equalled expected (and was removed)."""
        m = self.items.get(b["name"])
        if m is None or m.live(b["key"], self.core.now) != b["expected"]:
            return False
        self.delete(b["name"], m, b["key"])
        return True

    def op_MAP_SET_TTL(self, b: dict[str, Any]) -> bool:
        """-> whether the key exists (its TTL is then set, or cleared with 0/absent)."""
        m = self.items.get(b["name"])
        if m is None:
            return False
        v = m.live(b["key"], self.core.now)
        if v is None:
            return False
        self.set(b["name"], m, b["key"], v, self._exp(b))
        return True

    def op_MAP_GET_AND_DELETE(self, b: dict[str, Any]) -> bytes | None:
        """-> the removed live value, or None."""
        m = self.items.get(b["name"])
        if m is None or b["key"] not in m.data:
            return None
        v = m.live(b["key"], self.core.now)
        self.delete(b["name"], m, b["key"])
        return v

    # -- reads (never mutate; `now` is the command's time) ----------------------------------
    def op_MAP_GET(self, b: dict[str, Any]) -> bytes | None:
        """-> the live value or None."""
        m = self.items.get(b["name"])
        return None if m is None else m.live(b["key"], self.core.now)

    def op_MAP_CONTAINS(self, b: dict[str, Any]) -> bool:
        """-> whether a live entry exists."""
        return self.op_MAP_GET(b) is not None

    def op_MAP_SIZE(self, b: dict[str, Any]) -> int:
        """-> number of live entries."""
        m = self.items.get(b["name"])
        return 0 if m is None else len(m.data) - m.expired_count(self.core.now)

    def op_MAP_GET_ALL(self, b: dict[str, Any]) -> dict[str, bytes]:
        """-> {key: value} of the live keys among those asked (absent keys omitted)."""
        m = self.items.get(b["name"])
        out: dict[str, bytes] = {}
        if m is not None:
            for k in b["keys"]:
                v = m.live(k, self.core.now)
                if v is not None:
                    out[k] = v
        return out

    def op_MAP_GET_TTL(self, b: dict[str, Any]) -> int | None:
        """-> remaining TTL in ms, None when the key has no TTL; NOT_FOUND if absent."""
        m = self.items.get(b["name"])
        now = self.core.now
        if m is None or m.live(b["key"], now) is None:
            raise NotFound(f"key not found in map {b['name']}")
        e = m.exp.get(b["key"])
        return None if e is None else e - now

    def op_MAP_KEYS(self, b: dict[str, Any]) -> dict[str, Any]:
        """-> {"keys": [live keys in order], "cursor": str | None (None: no more pages)}.
        Examines at most scan_budget keys, so a page may be short while cursor is not None."""
        m = self.items.get(b["name"])
        if m is None:
            return {"keys": [], "cursor": None}
        now = self.core.now
        has_exp = bool(m.exp)
        keys, cursor = page_sorted(
            m.keys, b.get("cursor"), b["limit"], self.core.limits.scan_budget,
            (lambda k: m.live(k, now) is not None) if has_exp else (lambda k: True))
        return {"keys": keys, "cursor": cursor}

    def op_MAP_SCAN(self, b: dict[str, Any]) -> dict[str, Any]:
        """-> {"entries": [[key, value], ...] in key order, "cursor": str | None}.
        Same bounded-work paging as MAP_KEYS; `match` is a glob (loom/wire/glob.py: the ACL's
        dialect, with its bound on work per key)."""
        glob = Glob.compile(b.get("match", "*"))  # a bad pattern: BAD_REQUEST, always
        m = self.items.get(b["name"])
        if m is None:
            return {"entries": [], "cursor": None}
        now, lim, match = self.core.now, self.core.limits, glob.match
        # A key costs at most MAX_KEY_BYTES x search_width comparisons: keep a call within
        # scan_match_work whatever the pattern (F4).
        budget = max(1, min(lim.scan_budget,
                            lim.scan_match_work // (MAX_KEY_BYTES * glob.search_width)))
        keys, cursor = page_sorted(
            m.keys, b.get("cursor"), b["limit"], budget,
            lambda k: match(k) and m.live(k, now) is not None)
        return {"entries": [[k, m.data[k]] for k in keys], "cursor": cursor}

    # -- snapshot -----------------------------------------------------------------------------
    def dump(self) -> Any:
        out = []
        for name, m in sorted(self.items.items()):
            out.append([name, m.max_size, [[k, m.data[k]] for k in m.keys], sorted(m.exp.items()),
                        None if m.lru is None else list(m.lru), canon(m.ops)])
        return [out, self.sweep_after]

    def dump_cbor(self, batch: int = 4096) -> Iterator[bytes]:
        """`dump()` encoded a batch of entries at a time: a map of millions of entries is never
        a whole list of pairs, nor a whole encoding, in memory (the snapshot file is written
        from these pieces as they come)."""
        yield cbor_array_head(2) + cbor_array_head(len(self.items))
        for name, m in sorted(self.items.items()):
            n = len(m.keys)
            yield (cbor_array_head(6) + cbor2.dumps(name) + cbor2.dumps(m.max_size)
                   + cbor_array_head(n))
            for lo in range(0, n, batch):
                pairs = [[k, m.data[k]] for k in m.keys.islice(lo, lo + batch)]
                yield cbor2.dumps(pairs)[len(cbor_array_head(len(pairs))):]
            yield (cbor2.dumps(sorted(m.exp.items()))
                   + cbor2.dumps(None if m.lru is None else list(m.lru))
                   + cbor2.dumps(canon(m.ops)))
        yield cbor2.dumps(self.sweep_after)

    def load(self, data: Any) -> None:
        maps, self.sweep_after = data
        for name, max_size, entries, exps, lru, ops in maps:
            m = MapS(max_size)
            m.data = dict(entries)
            m.keys = SortedList(m.data)
            m.exp = dict(exps)
            m.exp_idx = SortedList((e, k) for k, e in m.exp.items())
            if lru is not None:
                m.lru = OrderedDict.fromkeys(lru)
            m.ops = ops
            m.nbytes = sum(_cost(k, v, k in m.exp) for k, v in m.data.items())
            self.core.total_bytes += m.nbytes
            if m.exp:
                self.ttl_maps.add(name)
            self.items[name] = m


__all__ = ["MapFamily", "MapS"]


