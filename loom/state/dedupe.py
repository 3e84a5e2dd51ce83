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

Fingerprints: a deduplicated command may carry `Command.fingerprint`, a digest of what was
asked (`request_fingerprint`: the type and its validated body). It is kept with the outcome;
a later command with the same (client_id, seq) and another fingerprint is not a retry but a
reused identity, and is refused with CONFLICT (details `reason: IDEMPOTENCY_KEY_REUSED`),
changing nothing and storing nothing, instead of being answered the first request's outcome.
The check is made only when both fingerprints are present: records and log entries written
before fingerprints existed, and commands proposed without one, are answered as before. The
HTTP door's Idempotency-Key clients (`FINGERPRINTED_SCOPE`) are the ones fingerprinted (the
dispatcher computes it); a binary-protocol session's retries carry none (its client library
resends the same request under the same seq, and hashing every write would cost its hot path).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import cbor2

from loom.state.command import Outcome
from loom.state.limits import StateLimits
from loom.wire.errors import Conflict, Status

# The `reason` of the CONFLICT outcome of a reused dedupe identity with another request (the
# HTTP door answers it 422, loom/node/http.py).
IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"

# Dedupe client ids (after the dispatcher's "<principal>/") whose writes carry a fingerprint:
# the HTTP door's Idempotency-Key clients (loom/node/http_codec.py `idempotency_client`).
FINGERPRINTED_SCOPE = "idem:"


def request_fingerprint(op: str, body: dict[str, Any]) -> bytes:
    """What a deduplicated request asked: 16 bytes of SHA-256 over the canonical CBOR of
    (type name, validated body). Equal for a retry of the same request, whichever node
    computes it; another type, target or body gives another one."""
    return hashlib.sha256(cbor2.dumps([op, body], canonical=True)).digest()[:16]


class ClientRecord:
    __slots__ = ("fingerprints", "floor", "last_ms", "results")

    def __init__(self, last_ms: int) -> None:
        self.results: dict[int, Outcome] = {}
        self.fingerprints: dict[int, bytes] = {}  # only the seqs stored with one
        self.floor = 0
        self.last_ms = last_ms


class DedupeTable:
    def __init__(self, limits: StateLimits) -> None:
        self.limits = limits
        self.clients: OrderedDict[str, ClientRecord] = OrderedDict()  # least recent first

    def lookup(self, client_id: str, seq: int, now: int, fingerprint: bytes = b""
               ) -> Outcome | None:
        """The stored outcome of a retry, a CONFLICT outcome for a forgotten seq or for a
        reused identity with another fingerprint, or None."""
        rec = self.clients.get(client_id)
        if rec is None:
            return None
        out = rec.results.get(seq)
        if out is not None:
            first = rec.fingerprints.get(seq, b"")
            if fingerprint and first and fingerprint != first:
                return Outcome.from_error(Conflict(
                    "this Idempotency-Key was already used for another request (another "
                    "type, target or body); nothing was applied",
                    reason=IDEMPOTENCY_KEY_REUSED))
            rec.last_ms = max(rec.last_ms, now)
            self.clients.move_to_end(client_id)
            return out
        if seq <= rec.floor:
            return Outcome.from_error(Conflict(
                f"request seq {seq} of client {client_id!r} is outside the deduplication window "
                f"(last {self.limits.dedupe_per_client} outcomes); its outcome is unknown"))
        return None

    def store(self, client_id: str, seq: int, outcome: Outcome, now: int,
              fingerprint: bytes = b"") -> None:
        rec = self.clients.get(client_id)
        if rec is None:
            while len(self.clients) >= self.limits.dedupe_clients:
                self.clients.popitem(last=False)
            rec = self.clients[client_id] = ClientRecord(now)
        else:
            self.clients.move_to_end(client_id)
            rec.last_ms = max(rec.last_ms, now)
        rec.results[seq] = outcome
        if fingerprint:
            rec.fingerprints[seq] = fingerprint
        while len(rec.results) > self.limits.dedupe_per_client:
            old = next(iter(rec.results))
            del rec.results[old]
            rec.fingerprints.pop(old, None)
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
        # an outcome stored with a fingerprint has it as a 6th element
        return [
            [cid, rec.floor, rec.last_ms,
             [[s, int(o.status), o.value, o.message, o.details]
              + ([rec.fingerprints[s]] if s in rec.fingerprints else [])
              for s, o in rec.results.items()]]
            for cid, rec in self.clients.items()
        ]

    def load(self, data: Any) -> None:
        """Also loads outcomes dumped before fingerprints existed (5 elements: no check)."""
        for cid, floor, last_ms, results in data:
            rec = ClientRecord(last_ms)
            rec.floor = floor
            for s, status, value, message, details, *fp in results:
                rec.results[s] = Outcome(Status(status), value, message, details)
                if fp:
                    if type(fp[0]) is not bytes or len(fp) > 1:
                        raise ValueError("a deduplicated outcome's fingerprint is not bytes")
                    rec.fingerprints[s] = fp[0]
            self.clients[cid] = rec
