"""The client listener: accept, admit, handshake, identify, then hand over to a Connection.

    accept loop (one per listening socket)
    └── per accepted socket, admitted by `Admission` (admission.py)
        ├── TLS handshake under limits.handshake_timeout_s, in this task, never in the
        │   accept loop: a silent or slow client holds nothing but its own task and one of
        │   the `max_handshaking` slots (SECURITY-CATALOGUE G1)
        ├── identity from the verified certificate (identity.py); refused -> audited, closed
        ├── the identity's budget (max_connections_per_identity) -> Connection.run
        └── every open connection in its own cancel scope, whose deadline is its certificate's
            expiry; `set_revocation` (a reload) cancels the ones whose certificate a new CRL
            or deny list revokes (security/revocation.py)

Every refusal is counted (`statistics()`, NODE_STATS `admission`) and logged, at most
`LOG_BURST` lines per budget a minute: whoever reaches the port can cause one.
"""

from __future__ import annotations

import itertools
import logging
import math
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import trio

from loom.node.admission import Admission, AdmissionStatistics, Refusal, Ticket
from loom.node.audit import AuditLog
from loom.node.config import Limits
from loom.node.connection import Connection, ConnectionContext
from loom.node.handshakes import Handshakes
from loom.node.listen import accept
from loom.node.ratelog import RateLimitedLog
from loom.security.handshake import revocation_reason
from loom.security.identity import Identity, IdentityError, identity_or_guest
from loom.security.revocation import Revocation, seconds_left
from loom.security.tlsstream import TLSStream

log = logging.getLogger("loom.conn")

LOG_BURST = 20  # refusal lines per budget per LOG_WINDOW_S
LOG_WINDOW_S = 60.0

# How a handshake normally fails: the peer went away, TLS failed, the deadline passed.
_HANDSHAKE_ENDINGS = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError,
                      OSError, trio.TooSlowError)


class _Refused(Exception):
    """The certificate verified but names no identity we accept."""


@dataclass(slots=True)
class _Open:
    conn: Connection
    scope: trio.CancelScope
    der: bytes  # the peer's certificate (empty for a guest)


class ClientListener:
    def __init__(self, ctx: ConnectionContext, *, ssl_context: Callable[[], ssl.SSLContext],
                 audit: AuditLog, trust_domain: str, require_client_auth: bool,
                 handshakes: Handshakes | None = None) -> None:
        lim: Limits = ctx.limits
        self.ctx = ctx
        self._ssl_context = ssl_context  # read per connection: a reload replaces it
        self._audit = audit
        self._handshakes = handshakes  # failed authentications: counted and audited
        self._trust_domain = trust_domain
        self._require_client_auth = require_client_auth
        self.admission = Admission(
            max_connections=lim.max_connections,
            max_handshaking=min(lim.max_handshaking, lim.max_connections),
            max_handshaking_per_source=min(lim.max_handshaking_per_source,
                                           lim.max_handshaking, lim.max_connections),
            max_connections_per_identity=min(lim.max_connections_per_identity,
                                             lim.max_connections))
        self._ids = itertools.count(1)
        self._open: dict[str, _Open] = {}  # conn id -> established connection
        self._identity_slots: dict[str, trio.Semaphore] = {}  # principal -> shared budget
        self._outsider_log = RateLimitedLog(log, burst=LOG_BURST, window_s=LOG_WINDOW_S,
                                            clock=trio.current_time)
        self.revocation = Revocation()
        self.revoked = 0  # open connections closed because their certificate stopped passing

    @property
    def connections(self) -> list[Connection]:
        return [o.conn for o in self._open.values()]

    def statistics(self) -> AdmissionStatistics:
        return self.admission.statistics()

    async def serve(self, listeners: list[trio.SocketListener], conns: trio.Nursery) -> None:
        """Accept on every listener until cancelled; connections run in `conns`."""
        async with trio.open_nursery() as accepting:
            for lst in listeners:
                accepting.start_soon(self._accept_loop, lst, conns)

    async def _accept_loop(self, listener: trio.SocketListener, conns: trio.Nursery) -> None:
        while True:
            tcp = await accept(listener, "client listener")
            try:
                source = str(tcp.socket.getpeername()[0])
            except OSError:  # already reset by the peer
                await trio.aclose_forcefully(tcp)
                continue
            ticket, victim = self.admission.admit(source)
            if victim is not None:
                self._log_refusal(Refusal.HANDSHAKING, victim.source, evicted=True)
                if victim.evict is not None:
                    victim.evict()
            if isinstance(ticket, Refusal):
                self._log_refusal(ticket, source)
                await trio.aclose_forcefully(tcp)
                continue
            # The handshake's scope exists before its task runs: an eviction that comes first
            # ends the task as soon as it starts.
            handshake = trio.CancelScope()
            ticket.evict = handshake.cancel
            conns.start_soon(self._connection, tcp, ticket, handshake)

    def _log_refusal(self, why: Refusal, who: str, evicted: bool = False) -> None:
        what = "ended a handshaking connection of" if evicted else "refused a connection from"
        self._outsider_log.warning(
            why.value, "client listener: %s %s: %s reached (refused so far: %d)", what, who,
            why.value, self.admission.statistics().refused)

    async def _connection(self, tcp: trio.SocketStream, ticket: Ticket,
                          handshake: trio.CancelScope) -> None:
        conn_id = f"c{next(self._ids)}"
        try:
            host, port = tcp.socket.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            peer = "?"
        try:
            tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        except OSError:
            pass
        stream = TLSStream(tcp, self._ssl_context(), server_side=True)
        try:
            try:
                with trio.fail_after(self.ctx.limits.handshake_timeout_s), handshake:
                    await stream.do_handshake()
                    identity = self._identify(stream, conn_id, peer)
                ticket.evict = None
                if handshake.cancelled_caught:
                    return  # evicted for a newcomer (admission.py)
            except (*_HANDSHAKE_ENDINGS, _Refused) as e:
                log.debug("%s %s: handshake failed: %r", conn_id, peer, e)
                if self._handshakes is not None and not isinstance(e, _Refused):
                    self._handshakes.failed("client", peer, e)  # _Refused: counted already
                return
            if self._handshakes is not None:
                self._handshakes.succeeded("client")
            refusal = self.admission.establish(ticket, identity.principal)
            if refusal is Refusal.PER_IDENTITY:
                self._log_refusal(refusal, identity.principal)
            if refusal is not None:  # or evicted while finishing its handshake (logged then)
                return
            await self._run(Connection(self.ctx, stream, conn_id, peer, identity,
                                       self._slots_of(identity.principal)),
                            stream.getpeercert(binary_form=True) or b"")
        finally:
            self.admission.close(ticket)
            if ticket.principal is not None and not self.admission.established(
                    ticket.principal):
                self._identity_slots.pop(ticket.principal, None)  # its last one ended
            with trio.move_on_after(1) as cs:
                cs.shield = True
                await trio.aclose_forcefully(stream)

    def _slots_of(self, principal: str) -> trio.Semaphore:
        sem = self._identity_slots.get(principal)
        if sem is None:
            sem = self._identity_slots[principal] = trio.Semaphore(
                self.ctx.limits.max_outstanding_per_identity)
        return sem

    def set_revocation(self, revocation: Revocation) -> None:
        """A new CRL or deny list (SIGHUP): every open connection whose certificate it revokes
        is closed now (its in-flight requests are abandoned, as when a client disconnects);
        new ones are refused at the handshake."""
        self.revocation = revocation
        for o in list(self._open.values()):
            why = revocation.reason(o.der)
            if why is not None:
                self._revoke(o, why)

    def _revoke(self, o: _Open, why: str) -> None:
        self.revoked += 1
        log.warning("%s %s (%s): closing, %s", o.conn.conn_id, o.conn.peer,
                    o.conn.identity.principal, why)
        self._audit.emit({"client_id": o.conn.conn_id, "event": "certificate_revoked",
                          "principal": o.conn.identity.principal, "reason": why,
                          "result": "denied"}, priority=True)
        o.scope.cancel()

    async def _run(self, conn: Connection, der: bytes) -> None:
        # The certificate holds the connection until it expires, no longer (a guest has none).
        deadline = trio.current_time() + seconds_left(der) if der else math.inf
        with trio.CancelScope(deadline=deadline) as scope:
            self._open[conn.conn_id] = _Open(conn, scope, der)
            try:
                await conn.run()
            finally:
                del self._open[conn.conn_id]
        if scope.cancelled_caught and not scope.cancel_called:
            log.info("%s %s (%s): certificate expired, connection closed", conn.conn_id,
                     conn.peer, conn.identity.principal)

    def _identify(self, stream: TLSStream, conn_id: str, peer: str) -> Identity:
        """The identity rule (security/identity.py, the same for every listener): a verified
        certificate names the caller; none is the guest, where certificates are optional."""
        der = stream.getpeercert(binary_form=True)
        if not der and self._require_client_auth:
            raise _Refused("no client certificate")  # the TLS layer refuses first; belt and braces
        why = self.revocation.reason(der or b"")
        try:
            if why is not None:
                raise IdentityError(why)
            return identity_or_guest(der, self._trust_domain)
        except IdentityError as e:
            log.warning("%s %s: refused certificate: %s", conn_id, peer, e)
            if self._handshakes is not None:  # counted and audited, aggregated
                self._handshakes.failed("client", peer, e,
                                        revocation_reason(why) if why else None)
            else:
                self._audit.emit(
                    {"client_id": conn_id, "event": "certificate_refused", "reason": str(e),
                     "result": "denied"}, priority=True)
            raise _Refused(str(e)) from None

    def stop_reading(self) -> None:
        """Shutdown: every connection stops reading new requests (in-flight ones finish)."""
        for o in self._open.values():
            o.conn.reader_scope.cancel()
