"""The node: one nursery tree, started in order, stopped as a protocol.

    Node.run
    ├── audit drainer          the only reader of the audit lanes
    ├── raft driver            the only writer of state (raftdriver.py): ticks, persists, sends,
    │                          applies; with peers, the peer transport (peer.py) beside it
    ├── client listener        accept loop; each connection in its own task (connection.py)
    ├── http listener          when [http] listen is set: the HTTP door (http.py), same dispatcher
    └── signal watcher         SIGTERM/SIGINT: shut down; SIGHUP: reload certificates, gateways

Start-up order is a security property (SECURITY-CATALOGUE B4): TLS material and the ACL policy
are loaded and checked before any port is opened, so nothing is ever served half-configured.

Shutdown (`shutdown()`), after hypercorn: stop accepting; stop reading new requests on every
connection while in-flight ones finish and their replies are flushed, within
`limits.shutdown_grace_s`; then cancel what is left; then drain the log driver and flush the
audit log, again within `limits.shutdown_grace_s` (a stalled sink's unwritten records are
counted lost and reported: loom/node/audit.py); then return (loomd exits 0).
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from loom.node import sdnotify, testhooks
from loom.node.audit import AuditLog, SinkConfigError, make_sink
from loom.node.backup import SnapshotSaver
from loom.node.bootstrap import StartMode, clear_joining, is_joining, mark_joining, start_mode
from loom.node.clientport import ClientListener
from loom.node.clock import ProposalClock
from loom.node.config import ConfigError, NodeConfig, load
from loom.node.connection import ConnectionContext
from loom.node.dispatcher import Dispatcher
from loom.node.handshakes import Handshakes
from loom.node.http import HttpDoor, advertised_http_addr, http_context
from loom.node.keys import KeyAdmin
from loom.node.raftdriver import RaftDriver, prepare_storage
from loom.node.testhooks import FaultHooks
from loom.node.topics import TopicHub
from loom.security.acl import Policy, PolicyError
from loom.security.revocation import Revocation, RevocationError
from loom.security.tls import (
    TLSConfigError,
    peer_client_context,
    peer_server_context,
    server_context,
)
from loom.state.command import Command
from loom.storage.storage import Storage

if TYPE_CHECKING:
    from loom.obs.tracing import Tracing

log = logging.getLogger("loom.node")


class Node:
    def __init__(self, cfg: NodeConfig, *, config_path: Path | None = None,
                 audit_sink: Any = None, initial_cluster_state: str = "new",
                 test_hooks: FaultHooks | None = None) -> None:
        """`initial_cluster_state` only matters for an empty data directory without `join`
        (loom.node.bootstrap): "new" founds the cluster of `peers`, "existing" refuses (the
        default of `loomd`, which says "new" only when told to)."""
        if test_hooks is not None:  # test-only (loom/node/testhooks.py); never in production
            cfg = replace(cfg, raft=replace(
                cfg.raft, tick_ms=max(1, round(cfg.raft.tick_ms / test_hooks.clock_rate))))
        self.test_hooks = test_hooks
        self.cfg = cfg
        self._initial_cluster_state = initial_cluster_state
        self.config_path = config_path
        # Everything that can fail on bad input fails here, before a port is opened.
        self.ssl_context = self._load_tls(cfg)
        self.revocation = self._load_revocation(cfg)
        try:
            self.seed_policy = Policy.from_config(cfg.acl)
        except PolicyError as e:
            raise ConfigError(f"acl: {e}") from None
        try:
            sink = audit_sink or make_sink(cfg.audit.sink, cfg.audit.path, cfg.audit.max_bytes,
                                           cfg.audit.backups)
        except SinkConfigError as e:
            raise ConfigError(str(e)) from None
        self.audit = AuditLog(cfg.node_id, sink, queue_size=cfg.audit.queue_size,
                              priority_queue_size=cfg.audit.priority_queue_size)
        self.storage = self._open_storage(cfg)
        host, port = cfg.client_host_port
        self.log = RaftDriver(
            cfg.raft, self.storage, self._recovered, node_id=cfg.node_id,
            client_addr=f"{host}:{port}", inbox=cfg.limits.max_pending_proposals,
            member_addrs=dict(cfg.peers),
            on_applied=self._on_applied, on_leader=self._on_leader,
            joining=self._joining, on_joined=lambda: clear_joining(cfg.data_dir),
            limits=cfg.to_state_limits())
        self._nursery: trio.Nursery | None = None
        self._seeding = False
        self.clock = ProposalClock(lambda: self.log.state().core.now) if test_hooks is None \
            else ProposalClock(lambda: self.log.state().core.now,
                               wall_ms=testhooks.wall_ms(test_hooks),
                               mono_s=testhooks.mono_s(test_hooks))
        self.dispatcher = Dispatcher(
            node_id=cfg.node_id, replicator=self.log, audit=self.audit,
            gateways=frozenset(cfg.gateway_identities), seed_policy=self.seed_policy,
            audit_reads=cfg.audit.audit_reads, extra_stats=self._stats,
            clock_ms=self.clock.now_ms, tracing=_tracing(cfg))
        self.dispatcher.removed = lambda: self.log.removed
        # Failed authentications on every listener: counted and audited (node/handshakes.py).
        self.handshakes = Handshakes(self.audit, window_s=cfg.audit.auth_failure_window_s)
        self.topics = TopicHub(self.log.state)
        self.terminated = trio.Event()  # set when shutdown begins: connections stop reading
        self.clients = ClientListener(
            ConnectionContext(node_id=cfg.node_id, limits=cfg.limits,
                              dispatcher=self.dispatcher, topics=self.topics,
                              terminated=self.terminated),
            ssl_context=lambda: self.ssl_context, audit=self.audit,
            trust_domain=cfg.trust_domain, require_client_auth=cfg.require_client_auth,
            handshakes=self.handshakes)
        self.clients.set_revocation(self.revocation)
        self.backup = SnapshotSaver(
            node_id=cfg.node_id, data_dir=cfg.data_dir, log_=self.log, clock_ms=self.clock.now_ms,
            keyring=cfg.storage.keyring, keys=lambda: self.storage.keyring,
            chunk_bytes=min(256 << 10, cfg.limits.max_frame_bytes // 2))
        self.dispatcher.snapshot_saver = self.backup.handle
        self.keys = KeyAdmin(cfg, self.storage)
        self.dispatcher.node_tasks.update(KEYS_ROTATE=self.keys.rotate,
                                          KEYS_REWRAP=self.keys.rewrap)
        self.port = 0
        self._stop = trio.Event()
        self.http: HttpDoor | None = HttpDoor(self) if cfg.http.listen else None
        # Append and fsync latency and batch sizes: observed once per persisted batch.
        self.storage.on_save = self.dispatcher.metrics.observe_save
        self.audit.on_write = self.dispatcher.metrics.observe_audit_write

    def _open_storage(self, cfg: NodeConfig) -> Storage:
        """Recover the data directory (0700, locked against a second node) before anything is
        served. A corrupt log stops here with the file and offset; the node never skips it."""
        cfg.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        opts = cfg.to_storage_options()
        if self.test_hooks is not None:
            opts = replace(opts, fs=testhooks.HookedFS(self.test_hooks))
        storage, recovered = Storage.open(str(cfg.data_dir / "raft"), opts, keep_retained=False)
        founders = sorted(cfg.peers) if cfg.peers else [cfg.node_id]
        empty = (recovered.hard_state.term == 0 and not recovered.entries
                 and recovered.snapshot is None)
        try:
            mode = start_mode(empty=empty, join=cfg.join, node_id=cfg.node_id,
                              founders=founders, initial_cluster_state=self._initial_cluster_state,
                              data_dir=cfg.data_dir)
        except ConfigError:
            storage.close()
            raise
        if mode is StartMode.JOIN:
            mark_joining(cfg.data_dir)
        self._joining = is_joining(cfg.data_dir)
        self._recovered = prepare_storage(
            storage, recovered, founders if mode is StartMode.FOUND else None)
        return storage

    @staticmethod
    def _load_tls(cfg: NodeConfig) -> ssl.SSLContext:
        t = cfg.tls
        try:
            return server_context(t.ca, t.cert, t.key,
                                  require_client_auth=cfg.require_client_auth, crl=t.crl,
                                  passphrase=t.passphrase())
        except TLSConfigError as e:
            raise ConfigError(f"tls: {e}") from None

    @staticmethod
    def _load_revocation(cfg: NodeConfig) -> Revocation:
        """The CRL and deny list, also checked against open connections (revocation.py)."""
        try:
            crl = cfg.tls.crl.read_bytes() if cfg.tls.crl else None
            return Revocation(crl_pem=crl, denied_serials=cfg.tls.denied_serials)
        except OSError as e:
            raise ConfigError(f"tls.crl: {e}") from None
        except RevocationError as e:
            raise ConfigError(f"tls: {e}") from None

    @property
    def stopping(self) -> bool:
        """Shutdown has begun: new requests are answered UNAVAILABLE (both doors)."""
        return self.terminated.is_set()

    @property
    def state(self) -> Any:
        """The state machine in force (replaced wholesale when a snapshot is installed)."""
        return self.log.state()

    def _on_applied(self, applied: Any) -> None:
        if self.cfg.node_id in self.log.core.conf.removed:
            self.log.mark_removed("removed from the configuration (applied its removal)")
        self.dispatcher.on_applied(applied)
        self.topics.on_applied(applied)

    def _on_leader(self) -> None:
        self.clock.anchor()
        # Before serving, run() seeds the policy itself (and waits for it).
        if self._nursery is not None and self.port and not self._seeding:
            self._nursery.start_soon(self._seed_acl)

    def _stats(self) -> dict[str, Any]:
        adm = self.clients.statistics()
        out: dict[str, Any] = {"connections": adm.connections, "refused_connections": adm.refused,
                               "revoked_connections": self.clients.revoked,
                               "admission": asdict(adm),
                               "topics": asdict(self.topics.statistics()),
                               "tls": self.handshakes.statistics(),
                               "storage": asdict(self.storage.statistics()),
                               "state": self.log.state().statistics(),
                               "disk": self._disk()}
        if self.http is not None:
            d = self.http.statistics()
            out["http"] = {"connections": d.server.connections_open, "in_flight": d.in_flight,
                           "answered": {str(k): v for k, v in d.answered.items()},
                           "refused": dict(d.server.refused),
                           "refused_in_flight": d.refused_in_flight}
        if self.log.transport is not None:
            out["peer"] = asdict(self.log.transport.statistics())
        out["peer_trust"] = asdict(self.log.membership.trust.statistics())
        out["backup"] = asdict(self.backup.statistics())
        out["keys"] = asdict(self.keys.statistics())
        return out

    def _disk(self) -> dict[str, int] | None:
        """Space on the data directory's file system (one statvfs, at scrape time)."""
        try:
            st = os.statvfs(self.cfg.data_dir)
        except OSError:
            return None
        return {"free_bytes": st.f_bavail * st.f_frsize, "size_bytes": st.f_blocks * st.f_frsize}

    # -- lifecycle ------------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        host, port = self.cfg.client_host_port
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            transport_scope = trio.CancelScope()
            await nursery.start(self.audit.run)
            handshakes_scope = trio.CancelScope()
            nursery.start_soon(self._run_handshakes, handshakes_scope)
            if self.cfg.peers:
                self.log.transport = self._make_transport()
                self.log.transport.set_revocation(self.revocation)
                await nursery.start(self._run_transport, transport_scope)
                self.log.transport.set_peers({n: a for n, a in self.cfg.peers.items()
                                              if n != self.cfg.node_id})
            await nursery.start(self.log.run)
            # A cluster of one leads at once: seed the policy before serving anyone, so the
            # first client already sees the replicated policy (version 1).
            await self._seed_acl()
            listeners = await trio.open_tcp_listeners(port, host=host)
            self.port = listeners[0].socket.getsockname()[1]
            log.info("node %s serving clients on %s:%d (client certificates %s)",
                     self.cfg.node_id, host, self.port,
                     "required" if self.cfg.require_client_auth else "optional: guests allowed")
            if not self.cfg.require_client_auth:
                log.warning("GUEST MODE: connections without a client certificate are served "
                            "with the guest roles %s", list(self.seed_policy.guest_roles))
            if self.http is not None:  # same start-up gate as the client listener
                await nursery.start(self.http.serve, self._stop)
            signals_scope = trio.CancelScope()
            nursery.start_soon(self._watch_signals, signals_scope)
            sdnotify.notify("READY=1")
            task_status.started(self)
            try:
                await self._serve(listeners)
            finally:
                for lst in listeners:  # also when cancelled from outside
                    lst.socket.close()
            if self.http is not None:  # its requests need the log: wait for them first
                await self.http.stopped.wait()
            # Shutdown, after the listener returned: log driver, then audit.
            # Every connection task has ended, so nothing emits audit records any more.
            sdnotify.notify("STOPPING=1")
            await self.log.transfer_before_stop()
            self.log.stop()
            handshakes_scope.cancel()
            self.handshakes.flush()
            self.audit.close(grace_s=self.cfg.limits.shutdown_grace_s)
            signals_scope.cancel()
            transport_scope.cancel()  # after the hand-over: nothing more to tell the peers
        await trio.to_thread.run_sync(self.storage.close)
        if self.dispatcher.tracing is not None:  # export what is queued, off the loop
            await trio.to_thread.run_sync(self.dispatcher.tracing.shutdown)
        # The log driver and drainer have returned: queued writes applied, audit flushed.
        st = self.audit.statistics()
        log.log(logging.ERROR if st.lost_at_shutdown else logging.INFO,
                "node %s stopped (audit: %d records written, %d dropped, %d of them lost at "
                "shutdown)", self.cfg.node_id, st.written, st.dropped, st.lost_at_shutdown)

    async def _run_handshakes(self, scope: trio.CancelScope) -> None:
        with scope:
            await self.handshakes.run()

    def shutdown(self) -> None:
        self._stop.set()

    async def _serve(self, listeners: list[trio.SocketListener]) -> None:
        grace = self.cfg.limits.shutdown_grace_s
        async with trio.open_nursery() as conns:
            async with trio.open_nursery() as accepting:
                accepting.start_soon(self.clients.serve, listeners, conns)
                await self._stop.wait()
                accepting.cancel_scope.cancel()
            for lst in listeners:
                await lst.aclose()
            # Stop reading new requests; in-flight ones finish and flush within the grace period.
            self.terminated.set()
            self.clients.stop_reading()
            conns.cancel_scope.deadline = trio.current_time() + grace

    def _admits_peer(self, node: str) -> bool:
        """Peers admitted on the peer listener (node/membership.py, security/peertrust.py): the
        current members, those of a newer configuration a trusted member vouches for, and,
        while a joining node knows no configuration yet, its configured `peers` (node
        certificates of this cluster's CA, as always)."""
        return self.log.admits_peer(node)

    async def _run_transport(self, scope: trio.CancelScope, *,
                             task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                             ) -> None:
        with scope:
            await self.log.transport.run(task_status=task_status)

    def _make_transport(self) -> Any:
        from loom.node.peer import PeerTransport

        t = self.cfg.tls
        try:
            pw = t.passphrase()
            server_ctx = peer_server_context(t.ca, t.cert, t.key, crl=t.crl, passphrase=pw)
            client_ctx = peer_client_context(t.ca, t.cert, t.key, crl=t.crl, passphrase=pw)
        except TLSConfigError as e:
            raise ConfigError(f"tls: {e}") from None
        transport = PeerTransport(
            node_id=self.cfg.node_id, cluster=self.cfg.cluster_name, listen=self.cfg.peer_listen,
            peers={n: a for n, a in self.cfg.peers.items() if n != self.cfg.node_id},
            client_addr=self.log.client_addr, server_ctx=server_ctx, client_ctx=client_ctx,
            http_addr=advertised_http_addr(self.cfg),
            trust_domain=self.cfg.trust_domain, is_member=self._admits_peer,
            on_message=self.log.on_peer_message, limits=self.cfg.to_peer_limits(),
            handshakes=self.handshakes, is_removed=lambda n: n in self.log.core.conf.removed,
            on_removed=self.log.told_removed, on_gone=self.log.peer_gone,
            on_members=self.log.heard_members)
        transport.hooks = self.test_hooks
        return transport

    # -- ACL seeding and reload -----------------------------------------------------------------
    async def _seed_acl(self) -> None:
        """A new cluster's first leader makes the configured policy the replicated one."""
        doc = self.log.state().read(Command("ACL_GET", {}, 0)).value
        if self._seeding or (doc and doc.get("version", 0) > 0) or self.log.leader != \
                self.cfg.node_id:
            return
        self._seeding = True
        try:
            await self._propose_acl(self.seed_policy.to_config())
        except Exception as e:  # lost leadership meanwhile: the next leader seeds it
            log.info("ACL seeding deferred: %s", e)
        finally:
            self._seeding = False

    async def _propose_acl(self, policy_doc: dict[str, Any]) -> None:
        out = await self.log.propose(Command("ACL_SET", {"policy": policy_doc},
                                             self.clock.now_ms()))
        out.raise_for_status()

    async def reload(self) -> None:
        """SIGHUP: re-read the config file and apply, all or nothing, exactly this:

        - TLS material (certificate, key, CA bundle, CRL) of the client listener, the HTTP
          listener, the peer listener and the outbound peer links, for every new connection;
        - the gateway allow-list (`[gateway] identities`), for every request from now on;
        - the log level.

        The ACL policy is NOT reloaded. Its one owner is the replicated document: the config's
        `[acl]` seeds a new cluster (version 1) and every later change goes through ACL_SET
        (`loomctl acl set`). A reload that proposed the file's policy would silently undo every
        change made since, on every node; when the file differs from the policy in force this
        says so and names the explicit way to push it. Other keys (listen addresses, limits,
        Raft and storage settings) need a restart."""
        try:
            cfg = load(self.config_path) if self.config_path else self.cfg
            new_ctx = self._load_tls(cfg)
            t = cfg.tls
            pw = t.passphrase()
            peer_ctxs = (peer_server_context(t.ca, t.cert, t.key, crl=t.crl, passphrase=pw),
                         peer_client_context(t.ca, t.cert, t.key, crl=t.crl, passphrase=pw))
            http_ctx = http_context(cfg) if self.http is not None else None
            file_policy = Policy.from_config(cfg.acl)
            revocation = self._load_revocation(cfg)
        except (ConfigError, PolicyError, OSError, ssl.SSLError, TLSConfigError) as e:
            log.error("reload refused, keeping the running configuration: %s", e)
            return
        self.ssl_context = new_ctx
        self.revocation = revocation
        self.clients.set_revocation(revocation)  # open connections too
        if self.http is not None and http_ctx is not None:
            self.http.server.ssl_context = http_ctx
        if self.log.transport is not None:
            self.log.transport.set_contexts(*peer_ctxs)
            self.log.transport.set_revocation(revocation)
        self.dispatcher.gateways = frozenset(cfg.gateway_identities)
        logging.getLogger().setLevel(cfg.log_level.upper())
        log.info("reload: certificates, CA, CRL, gateway identities (%d) and log level "
                 "reloaded", len(cfg.gateway_identities))
        doc = self.log.state().read(Command("ACL_GET", {}, 0)).value or {}
        if doc.get("version", 0) and doc.get("policy") != file_policy.to_config():
            log.warning("reload: the config's [acl] differs from the replicated ACL policy "
                        "(version %d), which stays in force; to make the file's the cluster's, "
                        "run 'loomctl acl set %s'", doc["version"],
                        self.config_path or "CONFIG.toml")

    async def _watch_signals(self, scope: trio.CancelScope) -> None:
        with scope, trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for signum in sigs:
                if signum == signal.SIGHUP:
                    await self.reload()
                else:
                    log.info("received %s: shutting down", signal.Signals(signum).name)
                    self.shutdown()


def _tracing(cfg: NodeConfig) -> Tracing | None:
    """The node's tracer when `[trace] endpoint` is set; otherwise the SDK is not imported."""
    t = cfg.trace
    if not t.endpoint:
        return None
    from loom.obs.tracing import TraceSettings, Tracing

    log.info("tracing: request spans to %s (sample ratio %s for requests without a parent)",
             t.endpoint, t.sample_ratio)
    return Tracing(TraceSettings(t.endpoint, t.service_name, cfg.node_id, t.sample_ratio,
                                 t.max_queue, t.export_timeout_s))
