"""Who may hold a client connection: the budgets, as a pure bookkeeper (no I/O, no clock).

A connection is *handshaking* from accept until its TLS handshake has produced an identity,
then *established* until it closes. Budgets (all `[limits]` keys, checked by config.validate):

    max_connections                   every connection, handshaking or established
    max_handshaking                   connections still handshaking (smaller: see below)
    max_handshaking_per_source        handshaking connections from one source address
    max_connections_per_identity      established connections of one principal

Why separate budgets: a connection that has not finished its handshake has proved nothing,
and holding one costs the holder a socket and nothing else. With one pool, about a thousand
silent TCP connections locked every client out for as long as they stayed open (issue #14,
item 10). Handshaking connections now take at most `max_handshaking` of the pool, and one
address at most `max_handshaking_per_source` of those, so the rest of the pool is left to
connections that have authenticated. Once authenticated, a principal is accountable, and its
own budget (`max_connections_per_identity`) keeps one identity from taking the whole pool (G2).

When the handshake budget is full, a connection from an address holding fewer handshaking
connections than the busiest address does not wait for a slot: the busiest address's oldest
handshaking connection is evicted for it. A real client finishes its handshake within
milliseconds, so silent connections spread over many addresses still cannot keep a newcomer
out until `handshake_timeout_s` frees a slot; they can only evict one another. A connection
from an address already among the busiest is refused instead (flooding from one address
only ever evicts itself).

Refusals are decided here and counted per reason; the shell closes the socket and writes the
rate-limited log line. Invariant: every ticket `admit` hands out is closed exactly once
(`close` is idempotent), after at most one `establish`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum


class Refusal(Enum):
    CONNECTIONS = "max_connections"
    HANDSHAKING = "max_handshaking"
    PER_SOURCE = "max_handshaking_per_source"
    PER_IDENTITY = "max_connections_per_identity"


@dataclass(slots=True, eq=False)
class Ticket:
    """One admitted connection: where it counts. `evict` is the shell's way to end it while
    it is still handshaking (set by the shell, called by it when `admit` names it)."""

    source: str
    handshaking: bool = True
    principal: str | None = None  # set once `establish` accepted it
    closed: bool = False
    evict: Callable[[], None] | None = None


@dataclass(frozen=True, slots=True)
class AdmissionStatistics:
    """connections: open now (handshaking + established); handshaking: of which not yet
    authenticated; sources / identities: distinct addresses handshaking / principals
    established; refused: every refusal since start; refused_by: the same per budget;
    evicted: of the max_handshaking refusals, handshaking connections ended for a newcomer."""

    connections: int
    handshaking: int
    sources: int
    identities: int
    refused: int
    refused_by: dict[str, int]
    evicted: int


class Admission:
    def __init__(self, *, max_connections: int, max_handshaking: int,
                 max_handshaking_per_source: int, max_connections_per_identity: int) -> None:
        assert 0 < max_handshaking <= max_connections
        assert 0 < max_handshaking_per_source <= max_handshaking
        assert 0 < max_connections_per_identity <= max_connections
        self.max_connections = max_connections
        self.max_handshaking = max_handshaking
        self.max_per_source = max_handshaking_per_source
        self.max_per_identity = max_connections_per_identity
        self._open = 0
        # Both tables hold only keys with a count above zero, so they are bounded by the pool.
        # source -> its handshaking connections, oldest first
        self._handshaking: dict[str, dict[Ticket, None]] = {}
        self._handshaking_total = 0
        self._identities: dict[str, int] = {}  # principal -> established connections
        self._refused = dict.fromkeys(Refusal, 0)
        self.evicted = 0

    def admit(self, source: str) -> tuple[Ticket | Refusal, Ticket | None]:
        """A connection from `source` was accepted: its ticket if it may start its handshake
        (else why not), and a handshaking connection the shell must end to make room."""
        mine = len(self._handshaking.get(source, ()))
        if mine >= self.max_per_source:
            return self._refuse(Refusal.PER_SOURCE), None
        victim = None
        if self._handshaking_total >= self.max_handshaking:
            busiest = max(self._handshaking.values(), key=len)
            if len(busiest) <= mine + 1:  # the newcomer's address is among the busiest
                return self._refuse(Refusal.HANDSHAKING), None
            victim = next(iter(busiest))
            self._done_handshaking(victim)
            victim.closed = True  # it leaves the pool now; the shell ends its task
            self._open -= 1
            self.evicted += 1
            self._refused[Refusal.HANDSHAKING] += 1
        elif self._open >= self.max_connections:
            return self._refuse(Refusal.CONNECTIONS), None
        ticket = Ticket(source)
        self._open += 1
        self._handshaking_total += 1
        self._handshaking.setdefault(source, {})[ticket] = None
        return ticket, victim

    def establish(self, ticket: Ticket, principal: str) -> Refusal | None:
        """The handshake produced `principal`: None if the connection may stay. Either way it
        no longer counts as handshaking; a refused one must still be closed."""
        if ticket.closed:  # evicted meanwhile: it must be closed
            return Refusal.HANDSHAKING
        self._done_handshaking(ticket)
        if self._identities.get(principal, 0) >= self.max_per_identity:
            return self._refuse(Refusal.PER_IDENTITY)
        self._identities[principal] = self._identities.get(principal, 0) + 1
        ticket.principal = principal
        return None

    def close(self, ticket: Ticket) -> None:
        """The connection ended (at any stage); a second call changes nothing."""
        if ticket.closed:
            return
        ticket.closed = True
        self._open -= 1
        if ticket.handshaking:
            self._done_handshaking(ticket)
        if ticket.principal is not None:
            _decrement(self._identities, ticket.principal)

    def established(self, principal: str) -> int:
        """Established connections of `principal` now."""
        return self._identities.get(principal, 0)

    def _done_handshaking(self, ticket: Ticket) -> None:
        ticket.handshaking = False
        self._handshaking_total -= 1
        mine = self._handshaking[ticket.source]
        del mine[ticket]
        if not mine:
            del self._handshaking[ticket.source]

    def _refuse(self, why: Refusal) -> Refusal:
        self._refused[why] += 1
        return why

    def statistics(self) -> AdmissionStatistics:
        return AdmissionStatistics(
            connections=self._open, handshaking=self._handshaking_total,
            sources=len(self._handshaking), identities=len(self._identities),
            refused=sum(self._refused.values()),
            refused_by={r.value: n for r, n in self._refused.items()}, evicted=self.evicted)


def _decrement(table: dict[str, int], key: str) -> None:
    n = table[key] - 1
    if n:
        table[key] = n
    else:
        del table[key]
