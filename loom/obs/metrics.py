"""Every metric a node exports, defined in one place, in the Prometheus text exposition.

Two kinds, two costs:

- Request metrics are counted where the dispatcher records a request's outcome and duration
  (`Dispatcher._audit`, the one place every answer passes): `observe(type, listener, result,
  seconds)` is a dict lookup and two increments, with the label children cached (about
  1.6 us per answer on the benchmark machine, against ~150-500 us of node CPU per request).
- Everything else is read when a scraper asks: `READINGS` is a table of rows, each naming a
  value in the node's existing statistics (the NODE_STATS document). Nothing is copied or
  updated on the request path for them. Adding a metric is one row.

Naming follows Prometheus' rules: a `loom_` prefix, base units (`_seconds`, plain counts), a
counter's family named without `_total` (the client library appends it). Labels are bounded:
a message type name from the catalog (or "unknown"), a listener from `LISTENERS` (connections
add "peer"), a result from `loom.security.audit.result_of` (one per status code), a role from
`ROLES`, an audit lane. No key, principal or structure name is ever a label.

The format itself is `prometheus_client.generate_latest` over a registry of this node's own
(never the process-global one): two nodes in one process export their own values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

__all__ = [
    "CONTENT_TYPE",
    "LISTENERS",
    "READINGS",
    "ROLES",
    "NodeMetrics",
    "Reading",
    "exported_names",
]

# The text format version 0.0.4 every Prometheus server (and promtool) reads.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
LISTENERS = ("client", "http")
ROLES = ("follower", "pre_candidate", "candidate", "leader", "learner")
# Request latency buckets, seconds: from a local answer (~50 us) to a write that waited for a
# slow quorum or a long-poll (timeout_ms up to 300 s lands in +Inf).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# Storage latency buckets, seconds: a buffered append (~10 us) to a stalled disk (fsync on this
# machine kind: ~0.12 ms; a slow cloud disk: 5-50 ms).
STORAGE_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                   0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# Entries per persisted batch: group commit at work (1 at one client, hundreds under load).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

Stats = Mapping[str, Any]
# A reading: one value, or one value per label value (e.g. {"client": 3, "http": 1}).
Value = float | Mapping[str, float] | Mapping[tuple[str, ...], float]


@dataclass(frozen=True, slots=True)
class Reading:
    """A metric read at scrape time from the NODE_STATS document.

    `read` is a dotted path into it ("log.term"), or a function of it; a reading with a
    `label` returns one value per label value (with several labels, keyed by tuples of
    values). A path that is absent (a node without an HTTP listener has no "http" part)
    exports nothing rather than a made-up zero."""

    name: str
    doc: str
    read: str | Callable[[Stats], Value | None]
    kind: Literal["gauge", "counter"] = "gauge"  # a counter is monotonic: name_total
    label: str | tuple[str, ...] | None = None

    @property
    def labels(self) -> list[str] | None:
        if self.label is None:
            return None
        return [self.label] if isinstance(self.label, str) else list(self.label)


def _path(stats: Stats, dotted: str) -> Any:
    v: Any = stats
    for part in dotted.split("."):
        if not isinstance(v, Mapping) or part not in v:
            return None
        v = v[part]
    return v


def _role(stats: Stats) -> Mapping[str, float] | None:
    role = _path(stats, "log.role")
    return None if role is None else {r: float(r == role) for r in ROLES}


def _connections(stats: Stats) -> Mapping[str, float]:
    out = {"client": _path(stats, "connections"), "http": _path(stats, "http.connections")}
    peers = _path(stats, "peer.peers")  # the peer listener: authenticated inbound links
    if isinstance(peers, Mapping):
        out["peer"] = sum(1 for p in peers.values() if p.get("inbound"))
    return {k: float(v) for k, v in out.items() if v is not None}


def _tls_failures(stats: Stats) -> Mapping[tuple[str, ...], float] | None:
    f = _path(stats, "tls.failures")  # {"reason/listener": n}
    if not isinstance(f, Mapping):
        return None
    return {tuple(k.split("/", 1)): float(n) for k, n in f.items()}


def _per_peer(field: str, scale: Callable[[Any], float] = float
              ) -> Callable[[Stats], Mapping[str, float] | None]:
    """One value per peer (a member's node id: bounded by the cluster's size) from the peer
    transport's statistics; a node without peers exports nothing."""
    def read(stats: Stats) -> Mapping[str, float] | None:
        peers = _path(stats, "peer.peers")
        if not isinstance(peers, Mapping):
            return None
        return {pid: scale(p[field]) for pid, p in peers.items() if p.get(field) is not None}
    return read


def _peer_queued(stats: Stats) -> Mapping[str, float] | None:
    peers = _path(stats, "peer.peers")
    if not isinstance(peers, Mapping):
        return None
    return {pid: float(sum(p.get("queued") or (0,))) for pid, p in peers.items()}


def _audit_queued(stats: Stats) -> Mapping[str, float] | None:
    a = _path(stats, "audit")
    return None if a is None else {"data": a["queued_data"], "priority": a["queued_priority"]}


# Every metric read at scrape time. One row per metric.
READINGS: tuple[Reading, ...] = (
    Reading("loom_raft_term", "The current Raft term.", "log.term"),
    Reading("loom_raft_role", "1 for this node's Raft role, 0 for the others.", _role,
            label="role"),
    Reading("loom_raft_commit_index", "The highest log index known committed.",
            "log.commit_index"),
    Reading("loom_raft_applied_index", "The highest log index applied to the state machine.",
            "log.applied_index"),
    Reading("loom_raft_last_index", "The last index of this node's log.", "log.last_index"),
    Reading("loom_raft_proposals_pending", "Proposals waiting for their entry to apply.",
            "log.proposals_pending"),
    Reading("loom_raft_entries_persisted", "Log entries written to storage.",
            "log.entries_persisted", kind="counter"),
    Reading("loom_raft_apply_lag", "Entries committed but not yet applied here.",
            lambda s: None if _path(s, "log.commit_index") is None else
            max(0, s["log"]["commit_index"] - s["log"]["applied_index"])),
    Reading("loom_raft_has_leader", "1 when this node knows a leader, else 0.",
            lambda s: None if _path(s, "log") is None else float(bool(s["log"].get("leader")))),
    Reading("loom_raft_batches", "Ready batches that persisted entries.",
            "log.batches", kind="counter"),
    Reading("loom_raft_entries_per_batch", "Entries per persisted batch, on average.",
            "log.entries_per_batch"),
    Reading("loom_raft_snapshot_index", "The index of the newest snapshot taken or installed.",
            "log.snapshot_index"),
    Reading("loom_raft_snapshots_taken", "Snapshots this node has taken.",
            "log.snapshots_taken", kind="counter"),
    Reading("loom_raft_peer_messages_dropped", "Peer messages dropped on a full driver inbox.",
            "log.dropped_peer_messages", kind="counter"),
    Reading("loom_raft_leader_transfers", "Leadership transfers this node began as leader.",
            "log.transfers_started", kind="counter"),
    Reading("loom_raft_leader_changes", "Times the known leader changed (elections seen).",
            "log.leader_changes", kind="counter"),
    Reading("loom_raft_read_index_rounds", "Linearizable reads confirmed by a heartbeat round "
            "(as leader).", "log.read_index_rounds", kind="counter"),
    Reading("loom_raft_lease_reads", "Linearizable reads answered under the leader lease.",
            "log.lease_reads", kind="counter"),
    Reading("loom_raft_snapshots_sent", "Snapshot transfers started to a follower.",
            "log.snapshots_sent", kind="counter"),
    Reading("loom_audit_emitted", "Audit records produced (written, queued or dropped).",
            "audit.emitted", kind="counter"),
    Reading("loom_wal_written_bytes", "Bytes appended to the write-ahead log.",
            "storage.wal_bytes_written", kind="counter"),
    Reading("loom_wal_segments", "Write-ahead log segment files on disk.",
            "storage.wal_segments"),
    Reading("loom_wal_fsyncs", "Write-ahead log syncs (one per durable batch).",
            "storage.fsyncs", kind="counter"),
    Reading("loom_disk_full_events", "Writes refused for lack of disk space (then retried).",
            "storage.disk_full", kind="counter"),
    Reading("loom_disk_free_bytes", "Free bytes (for unprivileged users) on the data "
            "directory's file system.", "disk.free_bytes"),
    Reading("loom_disk_size_bytes", "Size of the data directory's file system.",
            "disk.size_bytes"),
    Reading("loom_state_structures", "Structures in the state machine, by kind.",
            "state.structures", label="kind"),
    Reading("loom_state_estimated_bytes", "Estimated bytes held by the state machine, by "
            "structure kind.", "state.bytes", label="kind"),
    Reading("loom_state_sessions", "Open client sessions (locks, semaphores, dedupe).",
            "state.sessions"),
    Reading("loom_peer_link_up", "1 when this node's outbound link to the peer is up.",
            _per_peer("connected"), label="peer"),
    Reading("loom_peer_connects", "Outbound connections made to the peer (reconnects).",
            _per_peer("connects"), kind="counter", label="peer"),
    Reading("loom_peer_queue_depth", "Messages queued on the link to the peer.",
            _peer_queued, label="peer"),
    Reading("loom_peer_messages_dropped", "Messages to the peer dropped on a full link queue.",
            _per_peer("dropped"), kind="counter", label="peer"),
    Reading("loom_peer_last_contact_seconds", "Seconds since a frame arrived from the peer.",
            _per_peer("last_contact_age_s"), label="peer"),
    Reading("loom_peer_refused", "Inbound peer connections refused, by reason.",
            "peer.refused_by_reason", kind="counter", label="reason"),
    Reading("loom_tls_handshakes", "TLS handshakes (and certificate checks) passed, by "
            "listener.", "tls.handshakes", kind="counter", label="listener"),
    Reading("loom_tls_handshake_failures", "Failed authentications on a listener, by reason "
            "(security/handshake.py REASONS) and listener.", _tls_failures, kind="counter",
            label=("reason", "listener")),
    Reading("loom_audit_queued", "Audit records queued for the sink, by lane.", _audit_queued,
            label="lane"),
    Reading("loom_audit_written", "Audit records written to the sink.", "audit.written",
            kind="counter"),
    Reading("loom_audit_dropped", "Audit records lost (a full lane or a failed sink write).",
            "audit.dropped", kind="counter"),
    Reading("loom_connections", "Open connections, by listener (client, http, peer).", _connections,
            label="listener"),
    Reading("loom_http_requests_in_flight", "HTTP requests between routing and answer.",
            "http.in_flight"),
    Reading("loom_http_responses", "HTTP answers by status code, refusals and probes included.",
            "http.answered", kind="counter", label="code"),
    Reading("loom_http_refused", "HTTP connections and requests refused before routing, by "
            "reason (max_connections, handshake_timeout, handshake_failed, idle_timeout, ...).",
            "http.refused", kind="counter", label="reason"),
    Reading("loom_connections_refused", "Client connections refused by a connection budget.",
            "refused_connections", kind="counter"),
    Reading("loom_client_refused", "Client connections refused, by connection budget "
            "(node/admission.py: max_connections, max_handshaking, per source, per identity).",
            "admission.refused_by", kind="counter", label="budget"),
    Reading("loom_client_handshaking", "Client connections still in their TLS handshake.",
            "admission.handshaking"),
)


class _Readings(Collector):
    """A prometheus_client collector: the READINGS, read from one statistics document per
    scrape (so the values of one scrape are taken together)."""

    def __init__(self, stats: Callable[[], Stats], readings: tuple[Reading, ...]) -> None:
        self._stats = stats
        self._readings = readings

    def describe(self) -> list[Metric]:
        return []  # families are known only at scrape time; the registry then never asks

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        for r in self._readings:
            v = _path(stats, r.read) if isinstance(r.read, str) else r.read(stats)
            if v is None:
                continue
            family: GaugeMetricFamily | CounterMetricFamily
            if r.kind == "counter":
                family = CounterMetricFamily(r.name, r.doc, labels=r.labels)
            else:
                family = GaugeMetricFamily(r.name, r.doc, labels=r.labels)
            if isinstance(v, Mapping):
                assert r.label is not None, f"{r.name}: several values need a label"
                for lv, x in v.items():
                    family.add_metric([lv] if isinstance(lv, str) else list(lv), float(x))
            else:
                family.add_metric([], float(v))
            yield family


@dataclass(frozen=True, slots=True)
class MetricsStatistics:
    observed: int  # requests counted (every answer the dispatcher gave)
    series: int  # request label combinations seen (bounded: types x listeners x results)


class NodeMetrics:
    """One node's registry: request counters and latency histograms, plus the READINGS
    taken from `stats` (a function returning the NODE_STATS document) at each scrape."""

    def __init__(self, stats: Callable[[], Stats],
                 readings: tuple[Reading, ...] = READINGS) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._requests = Counter(
            "loom_requests", "Requests answered by the dispatcher, by message type, listener "
            "and result.", ["type", "listener", "result"], registry=self.registry)
        self._latency = Histogram(
            "loom_request_duration_seconds", "Time from a request reaching the dispatcher to "
            "its answer, by message type and listener.", ["type", "listener"],
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self._append = Histogram(
            "loom_raft_append_duration_seconds", "Time to write one persisted batch to the "
            "write-ahead log (before its sync).", buckets=STORAGE_BUCKETS,
            registry=self.registry)
        self._fsync = Histogram(
            "loom_raft_fsync_duration_seconds", "Time to sync one persisted batch.",
            buckets=STORAGE_BUCKETS, registry=self.registry)
        self._batch = Histogram(
            "loom_raft_batch_entries", "Log entries per persisted batch.",
            buckets=BATCH_BUCKETS, registry=self.registry)
        self._audit_write = Histogram(
            "loom_audit_sink_write_duration_seconds", "Time to write one batch of audit "
            "records to the sink.", buckets=STORAGE_BUCKETS, registry=self.registry)
        self.registry.register(_Readings(stats, readings))
        # Label children, cached: `labels()` takes a lock and builds a tuple on every call.
        self._children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._observed = 0

    def observe(self, type_name: str, listener: str, result: str, seconds: float) -> None:
        """One answered request. The label values are bounded by the caller's vocabulary (a
        catalog type name or "unknown", a LISTENERS entry, an audit result)."""
        key = (type_name, listener, result)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = (self._requests.labels(*key),
                                       self._latency.labels(type_name, listener))
        c[0].inc()
        c[1].observe(seconds)
        self._observed += 1

    def observe_save(self, entries: int, append_s: float, sync_s: float | None) -> None:
        """One persisted batch (storage's `on_save`: once per batch, never per entry; maybe
        from a worker thread, which prometheus_client's metrics allow)."""
        if entries:
            self._batch.observe(entries)
            self._append.observe(append_s)
        if sync_s is not None:
            self._fsync.observe(sync_s)

    def observe_audit_write(self, records: int, seconds: float) -> None:
        """One sink write of `records` audit records (the drainer: once per batch)."""
        self._audit_write.observe(seconds)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (`CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    def statistics(self) -> MetricsStatistics:
        return MetricsStatistics(self._observed, len(self._children))


def exported_names(registry: CollectorRegistry | None = None,
                   readings: tuple[Reading, ...] = READINGS) -> frozenset[str]:
    """Every sample name a node can export (a counter's `_total`, a histogram's `_bucket`,
    `_count` and `_sum`), or, given another registry and its readings (the gateway's), the
    ones those can: what dashboards and alert rules may reference (tests check deploy/)."""
    out = {f"{r.name}_total" if r.kind == "counter" else r.name for r in readings}
    if registry is None:
        registry = NodeMetrics(dict).registry
    for fam in registry.collect():
        if fam.type == "counter":
            out.add(f"{fam.name}_total")
        elif fam.type == "histogram":
            out.update(f"{fam.name}{x}" for x in ("_bucket", "_count", "_sum"))
        else:
            out.add(fam.name)
    return frozenset(out)
