"""The peer plane: the peer listener (inbound, authenticated, one-way) and the outbound links.

    PeerTransport.run (one nursery)
    ├── accept loop            per listening socket; each connection in its own task
    │   └── inbound task       handshake -> identity -> membership -> PEER_HELLO -> Raft frames
    └── link  x(peers - 1)     peerlink.Link: dial, check identity, PEER_HELLO, batched writes

Admission of an inbound connection (SECURITY-CATALOGUE A1, A2, A4, A7), in this order, and
nothing of the connection is decoded before all of it passed:
1. TLS 1.3 with a client certificate chaining to the cluster CA (the context enforces both),
   under `handshake_timeout_s` in the connection's own task, never in the accept loop.
2. The certificate names a NODE identity (`check_peer`): client and gateway certificates from
   the same CA are refused.
3. `is_member(node id)` is true now (a valid node certificate of a non-member or of a removed
   member is refused). It is asked again for every frame, so removing a member also closes its
   open connection. The node answers it with loom/security/peertrust.py's rule: its own
   configuration's members, and those of a newer one that a member it trusts vouches for.
4. The first frame, at most PRE_HELLO_MAX_FRAME bytes and within `handshake_timeout_s` of the
   handshake, is PEER_HELLO naming the same node id and our cluster (the session protocol,
   wire/session.py, the same as the client listener's).
Every refusal is logged with its reason and counted. After admission, only PEER_HELLO
(keepalive), PEER_MEMBERS (the peer's vouch, handed to `on_members`) and RAFT opcodes of the
peer listener decode; any malformed frame closes the connection. A Raft message whose `frm`
is not the certificate's node id, or whose `to` is not us, is dropped, logged and counted, and
never reaches Raft (A4).

The transport calls into Raft only through `on_message`; `send` never blocks; nothing raised in
a connection escapes its task. One authenticated inbound connection per node id: a newer one
replaces the older (a peer that redials after a half-open connection is not refused).
"""

from __future__ import annotations

import itertools
import logging
import ssl
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio

from loom.node.config import PeerLimits, parse_host_port
from loom.node.handshakes import Handshakes
from loom.node.listen import accept
from loom.node.peerlink import READ_CHUNK, REMOVED_NOTICE, Link, PeerStats
from loom.node.ratelog import RateLimitedLog
from loom.node.testhooks import FaultHooks
from loom.raft.config import RaftConfig
from loom.raft.messages import MalformedMessage, Message, from_wire
from loom.security.handshake import revocation_reason
from loom.security.identity import IdentityError, check_peer, identity_from_der
from loom.security.peertrust import Vouch, VouchError, parse_vouch
from loom.security.revocation import Revocation, seconds_left
from loom.security.tlsstream import TLSStream
from loom.wire import catalog
from loom.wire.catalog import Listener
from loom.wire.codec import (
    SUPPORTED_VERSIONS,
    FrameError,
    ItemLimits,
    decode_payload,
    parse_request,
)
from loom.wire.errors import LoomError
from loom.wire.framed import FramedReader
from loom.wire.session import RemoteProtocolError, Session, SessionLimits, check_peer_hello

__all__ = ["PeerLimits", "PeerStats", "PeerTransport"]

log = logging.getLogger("loom.peer")

_FRAME_KEYS = frozenset({"v", "id", "op", "b"})
# What one peer frame may make the decoder build (SECURITY-CATALOGUE F2, for members too: a
# member's bug or a stolen member certificate must not make this node build millions of objects
# on its event loop). The largest Raft message is an AppendEntries of max_entries_per_append
# entries of about 5 items each (347 items for 64); a PEER_MEMBERS lists one configuration.
# 16 times that, so no legitimate frame comes near it. Scanned only above per_frame bytes.
_MAX_ENTRIES = RaftConfig("limits").max_entries_per_append
PEER_ITEM_LIMITS = ItemLimits(per_frame=128 * _MAX_ENTRIES, per_container=16 * _MAX_ENTRIES)


@dataclass(frozen=True, slots=True)
class PeerTransportStatistics:
    """What `PeerTransport.statistics()` returns (NODE_STATS' `peer`, as a map)."""

    port: int | None
    # Per peer id: counters and timings of its link (peerlink.PeerStats.as_dict), whether a
    # member link is open, its queued (entries, bytes), its client address.
    peers: dict[str, dict[str, Any]]
    refused: int  # inbound connections refused (any reason)
    refused_by_reason: dict[str, int]
    unroutable: int  # messages for a peer with no link
    malformed: int  # frames that did not decode
    log_lines_suppressed: int  # refusal lines the rate-limited log left out


class _Refused(Exception):
    """Admission failed: log, count, close."""

    def __init__(self, reason: str, node: str | None = None) -> None:
        super().__init__(reason)
        self.node = node


class _Malformed(Exception):
    """The stream can no longer be trusted: close the connection."""


class PeerTransport:
    # Test-only mutants (loom/node/testhooks.py), set by the server only under
    # --enable-test-hooks; None in production, where no hook is ever consulted.
    hooks: FaultHooks | None = None

    def __init__(self, *, node_id: str, cluster: str, listen: str, peers: dict[str, str],
                 client_addr: str, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
                 trust_domain: str, is_member: Callable[[str], bool],
                 on_message: Callable[[Message], None],
                 limits: PeerLimits = PeerLimits(),  # noqa: B008 - frozen dataclass
                 http_addr: str = "", handshakes: Handshakes | None = None,
                 is_removed: Callable[[str], bool] = lambda node: False,
                 on_removed: Callable[[str], None] | None = None,
                 on_gone: Callable[[str], None] | None = None,
                 on_members: Callable[[str, Vouch], None] | None = None) -> None:
        self.node_id = node_id
        self.cluster = cluster
        self.listen = listen
        self.client_addr = client_addr
        self.http_addr = http_addr  # advertised in PEER_HELLO (HTTP redirects to the leader)
        self._server_ctx = server_ctx
        self._client_ctx = client_ctx
        self._td = trust_domain
        self._is_member = is_member
        self._on_message = on_message
        self._is_removed = is_removed  # ids in ConfState.removed: told so before we hang up
        self.on_removed = on_removed  # a member we dialled says we were removed
        self.on_gone = on_gone  # a peer's address refused our dial: its process is gone
        self._on_members = on_members  # an admitted peer's committed configuration (its vouch)
        self._vouch: Vouch | None = None  # ours, told to every peer we dial
        self.limits = limits
        self._handshakes = handshakes  # failed authentications: counted and audited
        self._port = 0
        self._nursery: trio.Nursery | None = None
        self._links: dict[str, Link] = {}
        self._stats: dict[str, PeerStats] = {}
        self._client_addrs: dict[str, str] = {}
        self._http_addrs: dict[str, str] = {}
        self._inbound_scopes: dict[str, trio.CancelScope] = {}  # node id -> its current connection
        self._inbound_der: dict[str, bytes] = {}  # node id -> its connection's certificate
        self._revocation = Revocation()
        self._inbound_slots = trio.Semaphore(limits.max_inbound_connections)
        self._conn_ids = itertools.count(1)
        self.refused = 0  # inbound connections refused, all reasons
        self.refused_by_reason: Counter[str] = Counter()
        self.unroutable = 0  # messages to a node we have no link to
        self.malformed = 0  # inbound connections closed for a malformed frame
        # Refusals and malformed frames are caused by whoever reaches the port: bounded lines.
        self._outsider_log = RateLimitedLog(log, burst=limits.log_burst,
                                            window_s=limits.log_window_s,
                                            clock=trio.current_time)
        self.set_peers(peers)

    # -- the API the Raft driver uses (all synchronous, trio thread) ---------------------------
    @property
    def port(self) -> int:
        return self._port

    def send(self, msgs: Iterable[Message]) -> None:
        """Queue each message on its `to` peer's link, then write each link's share at once
        where its writer is idle. Never blocks; full lanes drop and count."""
        touched: list[Link] = []
        for m in msgs:
            link = self._links.get(m.to)
            if link is None:
                self.unroutable += 1
                continue
            link.enqueue(m)
            if link not in touched:
                touched.append(link)
        for link in touched:
            link.flush()

    def set_peers(self, peers: dict[str, str]) -> None:
        """Membership changed: links to new peers start, removed ones stop, moved ones redial."""
        wanted = {p: a for p, a in peers.items() if p != self.node_id}
        for pid in list(self._links):
            if pid not in wanted:
                self._links.pop(pid).stop()
                log.info("peer link %s removed", pid)
        for pid, addr in wanted.items():
            link = self._links.get(pid)
            if link is None:
                link = Link(peer_id=pid, addr=addr, node_id=self.node_id, cluster=self.cluster,
                            client_addr=self.client_addr, client_ctx=self._client_ctx,
                            trust_domain=self._td, limits=self.limits, stats=self._stat(pid),
                            http_addr=self.http_addr)
                link.revocation = self._revocation
                link.on_removed = self.on_removed
                link.on_gone = self.on_gone
                link.set_vouch(self._vouch)
                self._links[pid] = link
                if self._nursery is not None:
                    self._nursery.start_soon(link.run)
            elif link.addr != addr:
                link.retarget(addr)

    def set_vouch(self, vouch: Vouch | None) -> None:
        """Our committed configuration changed: every link tells its peer (PEER_MEMBERS)."""
        self._vouch = vouch
        for link in self._links.values():
            link.set_vouch(vouch)

    def set_contexts(self, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
        """Reloaded certificates (SIGHUP): every new connection, in and out, uses them;
        established ones keep theirs until they end."""
        self._server_ctx, self._client_ctx = server_ctx, client_ctx
        for link in self._links.values():
            link.set_context(client_ctx)

    def set_revocation(self, revocation: Revocation) -> None:
        """A new CRL or deny list (SIGHUP): open connections, in and out, whose peer
        certificate it revokes are closed now; new ones are refused."""
        self._revocation = revocation
        for node, der in list(self._inbound_der.items()):
            why = revocation.reason(der)
            if why is not None:
                log.warning("peer connection from %s: closing, %s", node, why)
                self._inbound_scopes[node].cancel()
        for link in self._links.values():
            link.revocation = revocation
            link.recheck()

    def client_addr_of(self, node_id: str) -> str | None:
        return self._client_addrs.get(node_id)

    def http_addr_of(self, node_id: str) -> str | None:
        """The HTTP address `node_id` advertised in its PEER_HELLO (None: it serves none)."""
        return self._http_addrs.get(node_id)

    def reachable(self, node_id: str) -> bool:
        """A frame (Raft message or keepalive) arrived from `node_id` within `reachable_s`.
        Every link sends a keepalive at least every `keepalive_s`, so a live peer is reachable
        even when Raft has nothing to say to us."""
        st = self._stats.get(node_id)
        if st is None or st.last_received is None:
            return False
        return trio.current_time() - st.last_received <= self.limits.reachable_s

    def statistics(self) -> PeerTransportStatistics:
        now = trio.current_time()
        peers = {}
        for pid, st in sorted(self._stats.items()):
            d = st.as_dict(now)
            link = self._links.get(pid)
            d["member_link"] = link is not None
            d["queued"] = list(link.queued()) if link is not None else [0, 0]
            d["client_addr"] = self._client_addrs.get(pid)
            peers[pid] = d
        return PeerTransportStatistics(self._port, peers, self.refused,
                                       dict(self.refused_by_reason), self.unroutable,
                                       self.malformed, self._outsider_log.suppressed)

    def _stat(self, node_id: str) -> PeerStats:
        st = self._stats.get(node_id)
        if st is None:
            st = self._stats[node_id] = PeerStats()
        return st

    # -- lifecycle ------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        host, port = parse_host_port(self.listen, "peer listen address")
        listeners = await trio.open_tcp_listeners(port, host=host)
        try:
            self._port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for lst in listeners:
                    nursery.start_soon(self._accept_loop, lst, nursery)
                for link in self._links.values():
                    nursery.start_soon(link.run)
                log.info("node %s: peer listener on %s:%d, %d peer link(s)", self.node_id, host,
                         self._port, len(self._links))
                task_status.started()
        finally:
            self._nursery = None
            for lst in listeners:
                lst.socket.close()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            tcp = await accept(listener, "peer listener")
            try:
                self._inbound_slots.acquire_nowait()
            except trio.WouldBlock:
                await trio.aclose_forcefully(tcp)
                self._refuse(None, "?", "too many inbound connections")
                continue
            nursery.start_soon(self._inbound_task, tcp)

    # -- inbound connections --------------------------------------------------------------------
    def _refuse(self, node: str | None, where: str, reason: str) -> None:
        self.refused += 1
        kind = reason.split(":", maxsplit=1)[0]
        self.refused_by_reason[kind] += 1
        if node is not None and node in self._stats:
            self._stats[node].refused += 1
        self._outsider_log.warning(
            f"refused:{kind}",
            "peer listener: refused connection from %s%s: %s", where,
            f" ({node})" if node else "", reason)

    async def _inbound_task(self, tcp: trio.SocketStream) -> None:
        try:
            host, port = tcp.socket.getpeername()[:2]
            where = f"{host}:{port}#{next(self._conn_ids)}"
        except OSError:
            where = f"?#{next(self._conn_ids)}"
        stream = TLSStream(tcp, self._server_ctx, server_side=True)
        try:
            await self._inbound(stream, where)
        except _Refused as e:
            self._refuse(e.node, where, str(e))
        except _Malformed as e:
            self.malformed += 1
            self._outsider_log.warning("malformed", "peer connection %s: malformed frame, "
                                       "closing: %s", where, e)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError,
                trio.TooSlowError) as e:
            log.debug("peer connection %s closed: %s", where, e)
        except Exception:
            log.exception("peer connection %s: unexpected error; closing it", where)
        finally:
            self._inbound_slots.release()
            with trio.move_on_after(1) as cs:
                cs.shield = True
                await trio.aclose_forcefully(stream)

    def _auth_failed(self, where: str, exc: BaseException | str,
                     reason: str | None = None) -> None:
        if self._handshakes is not None:
            self._handshakes.failed("peer", where, exc, reason)

    async def _inbound(self, stream: TLSStream, where: str) -> None:
        lim = self.limits
        # 1-3: handshake, NODE identity, membership.
        try:
            with trio.fail_after(lim.handshake_timeout_s):
                await stream.do_handshake()
        except (trio.BrokenResourceError, ssl.SSLError, OSError) as e:
            # Foreign CA, no certificate, TLS <= 1.2, plaintext: the TLS layer said no.
            self._auth_failed(where, e)
            raise _Refused(f"tls handshake failed: {_cause(e)}") from None
        except trio.TooSlowError as e:
            self._auth_failed(where, e)
            raise _Refused("tls handshake failed: timed out") from None
        der = stream.getpeercert(binary_form=True) or b""
        try:
            ident = identity_from_der(der, self._td)
            check_peer(ident)
        except IdentityError as e:
            self._auth_failed(where, e)
            raise _Refused(f"not a node identity: {e}") from None
        node = ident.name
        revoked = self._revocation.reason(der)
        if revoked is not None:
            self._auth_failed(where, revoked, revocation_reason(revoked))
            raise _Refused(f"certificate revoked: {revoked}", node)
        if node == self.node_id:
            raise _Refused("our own node id", node)
        if self._is_removed(node) and not (self.hooks and self.hooks.forget_removed):
            # The only bytes a listener writes: the removed node learns why (peerlink.py).
            self._auth_failed(where, "not_a_member")
            try:
                with trio.move_on_after(lim.handshake_timeout_s):
                    await stream.send_all(REMOVED_NOTICE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
                pass  # it hung up first; it hears again on its next dial
            raise _Refused("not a member: removed from the configuration", node)
        if not self._is_member(node):
            self._auth_failed(where, "not_a_member")
            raise _Refused("not a member", node)
        if self._handshakes is not None:
            self._handshakes.succeeded("peer")
        # 4: PEER_HELLO, then Raft frames (the session protocol: wire/session.py).
        session = Session(SessionLimits(
            max_frame=lim.max_frame, hello_timeout_s=lim.handshake_timeout_s,
            idle_timeout_s=lim.idle_timeout_s), now=trio.current_time())
        frames = FramedReader(session, lambda: stream.receive_some(READ_CHUNK),
                              trio.CancelScope(), trio.current_time)
        scope: trio.CancelScope | None = None  # set once admitted; a newer connection cancels it
        try:
            # The certificate holds the connection until it expires, no longer.
            with trio.CancelScope(deadline=trio.current_time() + seconds_left(der)) as scope:
                admission = scope
                try:
                    ended = await frames.run(
                        lambda payload: self._payload(payload, session, node, admission, where,
                                                      der))
                except RemoteProtocolError as e:
                    if not session.greeted:
                        raise _Refused(f"bad first frame: {e}", node) from None
                    raise _Malformed(str(e)) from None
                if ended is None:
                    return  # clean EOF
                if not session.greeted:
                    raise _Refused("no PEER_HELLO in time", node)
                log.info("peer connection %s (%s): idle, closing", where, node)
                return
            log.info("peer connection %s (%s): ended (replaced by a newer connection, or its "
                     "certificate revoked or expired)", where, node)
        finally:
            if scope is not None and self._inbound_scopes.get(node) is scope:
                del self._inbound_scopes[node]
                self._inbound_der.pop(node, None)
                self._stat(node).inbound = False

    def _payload(self, payload: bytes, session: Session, node: str, scope: trio.CancelScope,
                 where: str, der: bytes) -> None:
        """One frame of an inbound connection: PEER_HELLO first (admission), then Raft."""
        if not self._is_member(node):
            session.close("no longer a member")
            raise _Refused("no longer a member", node)
        if session.open:
            try:
                self._frame(payload, node, hello_only=False)
            except _Malformed as e:
                session.protocol_error(str(e))
                raise _Malformed(f"from {node}: {e}") from None
            return
        try:
            self._frame(payload, node, hello_only=True)
        except _Malformed as e:
            session.hello_refused(str(e))
            raise _Refused(f"bad PEER_HELLO: {e}", node) from None
        session.hello_accepted()
        self._admit(node, scope, where)
        self._inbound_der[node] = der  # checked again when the CRL or deny list changes

    def _admit(self, node: str, scope: trio.CancelScope, where: str) -> None:
        old = self._inbound_scopes.get(node)
        if old is not None:
            old.cancel()
        self._inbound_scopes[node] = scope
        self._stat(node).inbound = True
        log.info("peer connection %s admitted: node %s", where, node)

    def _frame(self, payload: bytes, node: str, *, hello_only: bool) -> None:
        """Decode and act on one frame from authenticated `node`. Raises _Malformed."""
        try:
            obj = decode_payload(payload, limits=PEER_ITEM_LIMITS)
            if not isinstance(obj, dict) or set(obj) != _FRAME_KEYS:
                raise _Malformed(f"a peer frame is a map with exactly {sorted(_FRAME_KEYS)}")
            req = parse_request(obj)
            if req.version not in SUPPORTED_VERSIONS:
                raise _Malformed(f"unsupported protocol version {req.version}")
            mt = catalog.lookup(req.opcode, Listener.PEER)
            if hello_only and mt.name != "PEER_HELLO":
                raise _Malformed("the first frame must be PEER_HELLO")
            body = catalog.validate_body(mt, req.body)
            if mt.name == "PEER_MEMBERS":
                vouch: Vouch | None = parse_vouch(body)
                msg = None
            else:
                vouch = None
                msg = None if mt.name == "PEER_HELLO" else from_wire(body["msg"])
        except (FrameError, LoomError, MalformedMessage, VouchError) as e:
            raise _Malformed(str(e)) from None
        if vouch is not None:
            self._stat(node).last_received = trio.current_time()
            if self._on_members is not None:
                try:
                    self._on_members(node, vouch)
                except Exception:
                    log.exception("peer %s: on_members raised", node)
            return
        if msg is None:
            try:
                check_peer_hello(body, node, self.cluster)
            except LoomError as e:
                raise _Malformed(e.message) from None
            self._client_addrs[node] = body["client_addr"]
            if body.get("http_addr"):
                self._http_addrs[node] = body["http_addr"]
            else:
                self._http_addrs.pop(node, None)
            self._stat(node).last_received = trio.current_time()
            return
        if mt.name != msg.KIND:
            raise _Malformed(f"opcode {mt.name} carries a {msg.KIND}")
        # Contact is recorded only for frames that decoded and passed the checks above.
        st = self._stat(node)
        st.last_received = trio.current_time()
        if (msg.frm != node and not (self.hooks and self.hooks.skip_identity_pin)) \
                or msg.to != self.node_id:
            # A4: an authenticated peer speaking for someone else (or misrouted): never stepped.
            st.rejected += 1
            log.warning("peer %s: dropped %s claiming frm=%r to=%r (certificate: %r, us: %r)",
                        node, msg.KIND, msg.frm, msg.to, node, self.node_id)
            return
        st.received += 1
        try:
            self._on_message(msg)
        except Exception:
            log.exception("peer %s: on_message raised on %s", node, msg.KIND)


def _cause(e: BaseException) -> str:
    """The TLS layer's own words: trio wraps ssl errors in BrokenResourceError."""
    inner = e.__cause__ or e.__context__
    if not str(e) and inner is not None:
        return str(inner) or type(inner).__name__
    return str(e) or type(e).__name__
