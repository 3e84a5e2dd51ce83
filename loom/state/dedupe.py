"""Exactly-once effects for client retries: (client_id, seq) -> the original Outcome.

Bounds (StateLimits):
- per client, the outcomes of its last `dedupe_per_client` distinct seqs (in apply order). When
  one is dropped, the client's `floor` rises to the highest dropped seq; a later command with
  seq <= floor that is not remembered is refused with CONFLICT ("outside the deduplication
  window") instead of being applied a second time. A client must therefore keep fewer than
  `dedupe_per_client` requests in flight.
- at most `dedupe_clients` clients; a new client evicts the least recently active one.
- a client inactive for `dedupe_idle_ms` of log time is forgotten (at most
  `housekeeping_budget` per apply); a retry arriving after that is applied again.
"Active" means a command of that client was applied; the order is the apply order, so eviction
is the same on every replica. Waiting outcomes are never stored.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from loom.state.command import Outcome
from loom.state.limits import StateLimits
from loom.wire.errors import Conflict, Status


class ClientRecord:
    __slots__ = ("floor", "last_ms", "results")

    def __init__(self, last_ms: int) -> None:
        self.results: dict[int, Outcome] = {}
        self.floor = 0
        self.last_ms = last_ms


class DedupeTable:
    def __init__(self, limits: StateLimits) -> None:
        self.limits = limits
        self.clients: OrderedDict[str, ClientRecord] = OrderedDict()  # least recent first

    def lookup(self, client_id: str, seq: int, now: int) -> Outcome | None:
        """The stored outcome of a retry, a CONFLICT outcome for a forgotten seq, or None."""
        rec = self.clients.get(client_id)
        if rec is None:
            return None
        out = rec.results.get(seq)
        if out is not None:
            rec.last_ms = max(rec.last_ms, now)
            self.clients.move_to_end(client_id)
            return out
        if seq <= rec.floor:
            return Outcome.from_error(Conflict(
                f"request seq {seq} of client {client_id!r} is outside the deduplication window "
                f"(last {self.limits.dedupe_per_client} outcomes); its outcome is unknown"))
        return None

    def store(self, client_id: str, seq: int, outcome: Outcome, now: int) -> None:
        rec = self.clients.get(client_id)
        if rec is None:
            while len(self.clients) >= self.limits.dedupe_clients:
                self.clients.popitem(last=False)
            rec = self.clients[client_id] = ClientRecord(now)
        else:
            self.clients.move_to_end(client_id)
            rec.last_ms = max(rec.last_ms, now)
        rec.results[seq] = outcome
        while len(rec.results) > self.limits.dedupe_per_client:
            old = next(iter(rec.results))
            del rec.results[old]
            rec.floor = max(rec.floor, old)

    def housekeeping(self, now: int, budget: int) -> None:
        idle = self.limits.dedupe_idle_ms
        while budget > 0 and self.clients:
            cid, rec = next(iter(self.clients.items()))
            if rec.last_ms + idle > now:
                break
            del self.clients[cid]
            budget -= 1

    def dump(self) -> Any:
        return [
            [cid, rec.floor, rec.last_ms,
             [[s, int(o.status), o.value, o.message, o.details] for s, o in rec.results.items()]]
            for cid, rec in self.clients.items()
        ]

    def load(self, data: Any) -> None:
        for cid, floor, last_ms, results in data:
            rec = ClientRecord(last_ms)
            rec.floor = floor
            for s, status, value, message, details in results:
                rec.results[s] = Outcome(Status(status), value, message, details)
            self.clients[cid] = rec
