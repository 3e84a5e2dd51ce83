"""loomd configuration: one dataclass tree, loaded from TOML and flags, validated in one place.

Every error names the offending key (`ConfigError("limits.max_frame_bytes: must be ...")`) so
`loomd` can print one clear line and exit 2. `to_toml()` writes a complete config (tomli-w),
omitting absent optional keys because TOML has no null.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import tomli_w

from loom.raft import RaftConfig
from loom.security.revocation import RevocationError, parse_serial
from loom.security.tls import KeyPassphrase, TLSConfigError
from loom.state.limits import StateLimits
from loom.storage import StorageOptions


class ConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class TLSConfig:
    ca: Path = Path("certs-dev/ca.pem")
    cert: Path = Path("certs-dev/n1.pem")
    key: Path = Path("certs-dev/n1.key")
    crl: Path | None = None
    # Certificates refused even though they verify, by serial number (hex): checked at every
    # handshake and, on reload, against every open connection (security/revocation.py).
    denied_serials: tuple[str, ...] = ()
    # An encrypted key's passphrase: a file (mode 0600), or a systemd credential name read from
    # $CREDENTIALS_DIRECTORY (LoadCredential=). Never the passphrase itself (security/tls.py).
    key_passphrase_file: Path | None = None
    key_passphrase_credential: str | None = None

    def passphrase(self) -> KeyPassphrase | None:
        if self.key_passphrase_file is None and self.key_passphrase_credential is None:
            return None
        return KeyPassphrase(self.key_passphrase_file, self.key_passphrase_credential)


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int = 1024  # every client connection, handshaking or established
    # Connections whose TLS handshake has not produced an identity yet (at most
    # max_connections), and of those, from one source address: silent or slow connections
    # cannot take the pool from authenticated ones (admission.py).
    max_handshaking: int = 128
    max_handshaking_per_source: int = 32
    max_connections_per_identity: int = 256  # established connections of one principal
    max_outstanding_per_identity: int = 4096  # requests in flight across its connections
    max_frame_bytes: int = 1 << 20
    handshake_timeout_s: float = 5.0
    hello_timeout_s: float = 5.0
    idle_timeout_s: float = 300.0
    max_outstanding_per_connection: int = 256
    max_output_buffer_frames: int = 1024  # queued replies; a client that never reads is dropped
    write_stall_timeout_s: float = 10.0
    shutdown_grace_s: float = 10.0
    max_pending_proposals: int = 10_000  # beyond this writes answer BUSY


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The HTTP listener (`[http]`; off while `listen` is empty). Its TLS, client certificate
    rules (`require_client_auth`, principal mapping, guests) and gateway identities are the
    client listener's; a request body is bounded by `limits.max_frame_bytes`."""

    listen: str = ""  # HOST:PORT; advertised to peers (for redirects) unless the port is 0
    max_connections: int = 1024  # beyond: accepted and closed at once, before TLS
    handshake_timeout_s: float = 5.0
    idle_timeout_s: float = 60.0  # between requests on a keep-alive connection
    request_timeout_s: float = 30.0  # first byte to last body byte (slowloris): 408
    max_header_bytes: int = 16 * 1024  # request line + headers: 431
    max_header_count: int = 100  # 431
    max_requests_in_flight: int = 1024  # node-wide; beyond: 429 BUSY with Retry-After
    ready_max_lag: int = 1000  # /readyz: applied index within this many entries of commit
    sse_keepalive_s: float = 15.0  # a comment line on an idle event stream this often
    max_stream_s: float = 3600.0  # an event stream ends after this (the client resumes)


@dataclass(frozen=True, slots=True)
class AuditConfig:
    sink: str = "stdout"  # "stdout" | "file" | "off"
    path: Path | None = None
    max_bytes: int = 64 << 20
    backups: int = 5
    queue_size: int = 8192  # data lane
    priority_queue_size: int = 1024  # denials, spoofing attempts, admin commands
    audit_reads: bool = False
    # Failed authentications of one (reason, listener, source host) within this window are
    # audited as one record with their count (node/handshakes.py).
    auth_failure_window_s: float = 10.0


@dataclass(frozen=True, slots=True)
class LogConfig:
    """`[log]`: the operational log's format (loom/obs/logging.py owns the schema)."""

    format: str = "auto"  # "json" | "text" | "auto": JSON when JOURNAL_STREAM is set (systemd)


@dataclass(frozen=True, slots=True)
class TraceConfig:
    """`[trace]`: OpenTelemetry traces (loom/obs/tracing.py); off while `endpoint` is empty."""

    endpoint: str = ""  # OTLP/HTTP traces URL, e.g. "http://127.0.0.1:4318/v1/traces"
    sample_ratio: float = 1.0  # of the requests that arrive without a sampled parent
    service_name: str = "loomd"
    max_queue: int = 2048  # spans waiting for export; beyond, dropped (and counted)
    export_timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class RaftSettings:
    tick_ms: int = 50
    election_ticks_min: int = 10  # election timeout drawn from [min, max) ticks
    election_ticks_max: int = 20
    heartbeat_ticks: int = 2
    snapshot_every: int = 10_000  # applied entries between snapshots (and log >= half the last)
    trailing_entries: int = 1_000  # kept behind a snapshot for slow followers
    trailing_bytes: int = 16 << 20  # ... holding at most this much (they are kept in memory)
    max_snapshot_bytes: int = 64 << 30  # a snapshot received from a leader: larger, refused
    max_uncommitted_bytes: int = 64 << 20  # proposals beyond this answer BUSY
    lease_reads: bool = False  # serve linearizable reads from a leader lease (bounded drift)
    fast_failover: bool = True  # campaign once the leader's address refuses connections
    proposal_timeout_s: float = 10.0  # a write not applied by then answers TIMEOUT (unknown)
    read_timeout_s: float = 5.0
    snapshot_in_child: bool = True  # serialise snapshots in a forked child (where fork exists)
    # a synced save of at most this many entries runs on the event loop, not the storage
    # thread, while recent syncs took under inline_sync_below_ms (storage/aio.py); 0: never
    inline_sync_entries: int = 8
    inline_sync_below_ms: float = 1.0


@dataclass(frozen=True, slots=True)
class StorageSettings:
    segment_bytes: int = 64 << 20
    keyring: Path | None = None  # encryption at rest when set
    # The PIN of the key-encryption key a wrapped keyring names (PKCS#11: storage/kms.py): a
    # file (mode 0600) or a systemd credential name, read like the TLS key's passphrase.
    kek_pin_file: Path | None = None
    kek_pin_credential: str | None = None
    pkcs11_module: Path | None = None  # the PKCS#11 library (e.g. SoftHSM2's, an HSM vendor's)

    def kek_pin(self) -> KeyPassphrase | None:
        if self.kek_pin_file is None and self.kek_pin_credential is None:
            return None
        return KeyPassphrase(self.kek_pin_file, self.kek_pin_credential, "KEK PIN")


@dataclass(frozen=True, slots=True)
class PeerLimits:
    """Limits of the peer transport (`[peer]` in the TOML); node/peer.py and peerlink.py
    obey them."""

    queue_len: int = 1024  # bulk lane per peer (AppendEntries, InstallSnapshot)
    priority_queue_len: int = 256  # control lane per peer (heartbeats, votes, responses)
    max_frame: int = 16 << 20  # largest frame accepted or sent (snapshot chunks)
    max_batch_bytes: int = 4 << 20  # one TLS write carries at most about this much
    handshake_timeout_s: float = 5.0  # TCP connect + TLS handshake (+ PEER_HELLO inbound)
    write_timeout_s: float = 10.0  # a peer that stops reading for this long is dropped
    backoff_min_s: float = 0.05
    backoff_max_s: float = 2.0
    keepalive_s: float = 1.0  # an idle link repeats its PEER_HELLO this often
    idle_timeout_s: float = 10.0  # an inbound connection silent for this long is closed
    reachable_s: float = 3.0  # `reachable`: a frame arrived from the peer within this window
    max_inbound_connections: int = 64  # concurrent inbound connections, before authentication
    log_burst: int = 20  # refusal / malformed-frame log lines per reason and window ...
    log_window_s: float = 60.0  # ... the rest are counted, and reported by the next line


@dataclass(frozen=True, slots=True)
class StateSettings:
    """Limits of the replicated state. They decide the results of applies, so every member of
    a cluster must run with the same values."""

    max_value_bytes: int = 1 << 20
    max_entries: int = 10_000_000  # per structure
    max_structures: int = 100_000
    max_total_bytes: int = 8 << 30
    max_sessions: int = 100_000
    topic_ring: int = 1024  # recent messages kept per topic for resuming subscribers
    # Maps used as caches: name glob -> maximum entries (least recently written evicted).
    map_caches: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: str = "n1"
    data_dir: Path = Path("data/n1")
    client_listen: str = "127.0.0.1:6001"
    trust_domain: str = "loom.dev"
    require_client_auth: bool = True
    allow_insecure_guest_bind: bool = False
    log_level: str = "info"
    tls: TLSConfig = field(default_factory=TLSConfig)
    limits: Limits = field(default_factory=Limits)
    audit: AuditConfig = field(default_factory=AuditConfig)
    gateway_identities: tuple[str, ...] = ()
    acl: dict[str, Any] = field(default_factory=dict)
    # The cluster. Without peers the node is a cluster of one (its own majority).
    cluster_name: str = "loom"
    join: bool = False  # start empty and wait to be added (MEMBER_ADD) instead of bootstrapping
    peer_listen: str = ""
    peers: dict[str, str] = field(default_factory=dict)  # member id -> peer address
    raft: RaftSettings = field(default_factory=RaftSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    state: StateSettings = field(default_factory=StateSettings)
    peer: PeerLimits = field(default_factory=PeerLimits)
    http: HttpConfig = field(default_factory=HttpConfig)
    log: LogConfig = field(default_factory=LogConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)

    @property
    def client_host_port(self) -> tuple[str, int]:
        return parse_host_port(self.client_listen, "client_listen")

    # -- the layers' own limit objects, made here and nowhere else --------------------------
    def to_raft_config(self) -> RaftConfig:
        """The consensus core's configuration (`[raft]`)."""
        return raft_config(self.node_id, self.raft)

    def to_state_limits(self) -> StateLimits:
        """The replicated state's limits (`[state]`: every member must use the same)."""
        st = self.state
        return StateLimits(
            max_value_bytes=st.max_value_bytes, max_entries=st.max_entries,
            max_structures=st.max_structures, max_total_bytes=st.max_total_bytes,
            max_sessions=st.max_sessions, topic_ring=st.topic_ring,
            map_caches=tuple(sorted(st.map_caches.items())))

    def to_storage_options(self) -> StorageOptions:
        """The write-ahead log's options (`[storage]`, and `[raft] trailing_entries`)."""
        keyring = str(self.storage.keyring) if self.storage.keyring else None
        source = self.storage.kek_pin()
        try:
            pin = source.read() if source is not None and keyring else None
        except TLSConfigError as e:
            raise ConfigError(f"storage: {e}") from None
        return StorageOptions(segment_size=self.storage.segment_bytes, keyring_path=keyring,
                              trailing_entries=self.raft.trailing_entries, kek_pin=pin,
                              pkcs11_module=str(self.storage.pkcs11_module)
                              if self.storage.pkcs11_module else None)

    def to_peer_limits(self) -> PeerLimits:
        """The peer transport's limits (`[peer]`)."""
        return self.peer


def raft_config(node_id: str, r: RaftSettings) -> RaftConfig:
    """The consensus core's configuration from `[raft]` (NodeConfig.to_raft_config)."""
    return RaftConfig(
        node_id=node_id, election_tick_min=r.election_ticks_min,
        election_tick_max=r.election_ticks_max, heartbeat_tick=r.heartbeat_ticks,
        lease_reads=r.lease_reads, fast_failover=r.fast_failover,
        max_uncommitted_bytes=r.max_uncommitted_bytes,
        trailing_entries=r.trailing_entries, trailing_bytes=r.trailing_bytes,
        max_snapshot_bytes=r.max_snapshot_bytes)


def parse_host_port(s: str, key: str) -> tuple[str, int]:
    host, sep, port = s.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{key}: expected HOST:PORT, got {s!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_LOG_LEVELS = ("debug", "info", "warning", "error")


def _coerce(key: str, want: Any, v: Any) -> Any:
    """Check one scalar against the dataclass field's declared type (as a string)."""
    t = str(want)
    if t in ("int",):
        if not isinstance(v, int) or isinstance(v, bool):
            raise ConfigError(f"{key}: must be an integer, got {v!r}")
        return v
    if t == "float":
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise ConfigError(f"{key}: must be a number, got {v!r}")
        return float(v)
    if t == "bool":
        if not isinstance(v, bool):
            raise ConfigError(f"{key}: must be true or false, got {v!r}")
        return v
    if t in ("str", "str | None"):
        if not isinstance(v, str):
            raise ConfigError(f"{key}: must be a string, got {v!r}")
        return v
    if t in ("Path", "Path | None"):
        if not isinstance(v, str) or not v:
            raise ConfigError(f"{key}: must be a path string, got {v!r}")
        return Path(v)
    if t == "tuple[str, ...]":
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(f"{key}: must be a list of strings")
        return tuple(v)
    if t == "dict[str, Any]":
        if not isinstance(v, dict):
            raise ConfigError(f"{key}: must be a table")
        return v
    if t == "dict[str, int]":
        if not isinstance(v, dict) or not all(
                isinstance(a, str) and isinstance(b, int) and not isinstance(b, bool) and b > 0
                for a, b in v.items()):
            raise ConfigError(f"{key}: must be a table of \"name-glob\" = positive integer")
        return dict(v)
    if t == "dict[str, str]":
        if isinstance(v, str):  # the --peers flag: "n1=host:port,n2=host:port"
            pairs = [x.partition("=") for x in v.split(",") if x.strip()]
            if any(not sep or not a or not b for a, sep, b in pairs):
                raise ConfigError(f"{key}: expected ID=HOST:PORT[,ID=HOST:PORT...], got {v!r}")
            v = {a.strip(): b.strip() for a, _, b in pairs}
        if not isinstance(v, dict) or not all(
                isinstance(a, str) and isinstance(b, str) for a, b in v.items()):
            raise ConfigError(f"{key}: must be a table of id = \"host:port\"")
        return dict(v)
    raise ConfigError(f"{key}: unsupported type {t}")  # pragma: no cover


def _build(cls: Any, data: dict[str, Any], prefix: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in known:
            raise ConfigError(f"{key}: unknown key")
        ftype = known[k].type
        sub = {"TLSConfig": TLSConfig, "Limits": Limits, "AuditConfig": AuditConfig,
               "RaftSettings": RaftSettings, "StorageSettings": StorageSettings,
               "StateSettings": StateSettings, "PeerLimits": PeerLimits,
               "HttpConfig": HttpConfig, "LogConfig": LogConfig,
               "TraceConfig": TraceConfig}.get(str(ftype))
        if sub is not None:
            if not isinstance(v, dict):
                raise ConfigError(f"{key}: must be a table")
            kwargs[k] = _build(sub, v, f"{key}.")
        else:
            kwargs[k] = _coerce(key, ftype, v)
    return cls(**kwargs)


def validate(cfg: NodeConfig) -> NodeConfig:
    """Cross-field checks; returns cfg unchanged or raises ConfigError naming the key."""
    import re

    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", cfg.node_id):
        raise ConfigError(f"node_id: must match [A-Za-z0-9._-]{{1,64}}, got {cfg.node_id!r}")
    host, _ = cfg.client_host_port
    if cfg.log_level not in _LOG_LEVELS:
        raise ConfigError(f"log_level: must be one of {', '.join(_LOG_LEVELS)}")
    lim = cfg.limits
    for f in fields(lim):
        v = getattr(lim, f.name)
        if v <= 0:
            raise ConfigError(f"limits.{f.name}: must be positive, got {v}")
    if not 4096 <= lim.max_frame_bytes <= 64 << 20:
        raise ConfigError("limits.max_frame_bytes: must be between 4096 and 67108864")
    if lim.max_output_buffer_frames <= lim.max_outstanding_per_connection:
        raise ConfigError("limits.max_output_buffer_frames: must exceed "
                          "limits.max_outstanding_per_connection (every answer must fit, with "
                          "room left for topic pushes)")
    if cfg.audit.sink not in ("stdout", "file", "off"):
        raise ConfigError("audit.sink: must be 'stdout', 'file' or 'off'")
    if cfg.audit.sink == "file" and cfg.audit.path is None:
        raise ConfigError("audit.path: required when audit.sink = 'file'")
    r = cfg.raft
    if not (0 < r.heartbeat_ticks < r.election_ticks_min < r.election_ticks_max):
        raise ConfigError("raft: need 0 < heartbeat_ticks < election_ticks_min < "
                          "election_ticks_max")
    if r.tick_ms < 1 or r.snapshot_every < 1 or r.trailing_entries < 0:
        raise ConfigError("raft.tick_ms: tick_ms and snapshot_every must be positive")
    if r.trailing_bytes < 0:
        raise ConfigError("raft.trailing_bytes: must be >= 0")
    if not 0 <= r.inline_sync_entries <= 64:
        raise ConfigError("raft.inline_sync_entries: must be between 0 (never) and 64")
    if not 0 < r.inline_sync_below_ms <= 100:
        raise ConfigError("raft.inline_sync_below_ms: must be in (0, 100]")
    if r.max_snapshot_bytes < 1:
        raise ConfigError("raft.max_snapshot_bytes: must be positive")
    for f in fields(cfg.state):
        v = getattr(cfg.state, f.name)
        if isinstance(v, int) and v <= 0:
            raise ConfigError(f"state.{f.name}: must be positive, got {v}")
    for f in fields(cfg.peer):
        v = getattr(cfg.peer, f.name)
        if v <= 0:
            raise ConfigError(f"peer.{f.name}: must be positive, got {v}")
    if cfg.peer.backoff_min_s > cfg.peer.backoff_max_s:
        raise ConfigError("peer.backoff_min_s: must not exceed peer.backoff_max_s")
    # A peer frame carries an AppendEntries (up to 1 MiB of entries, or one larger entry
    # alone) or a snapshot chunk: it must hold the largest value the state accepts.
    if not max(2 << 20, cfg.state.max_value_bytes + (64 << 10)) <= cfg.peer.max_frame <= 1 << 30:
        raise ConfigError("peer.max_frame: must be between 2 MiB (and state.max_value_bytes + "
                          "64 KiB) and 1 GiB")
    if cfg.peers:
        if cfg.node_id not in cfg.peers:
            raise ConfigError(f"peers: must include this node ({cfg.node_id})")
        for nid, addr in cfg.peers.items():
            if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", nid):
                raise ConfigError(f"peers: bad node id {nid!r}")
            parse_host_port(addr, f"peers.{nid}")
        if not cfg.peer_listen:
            raise ConfigError("peer_listen: required when peers are configured")
    if cfg.peer_listen:
        parse_host_port(cfg.peer_listen, "peer_listen")
    _validate_http(cfg)
    for serial in cfg.tls.denied_serials:
        try:
            parse_serial(serial)
        except RevocationError as e:
            raise ConfigError(f"tls.denied_serials: {e}") from None
    try:
        cfg.tls.passphrase()
    except TLSConfigError as e:
        raise ConfigError(f"tls.key_passphrase_credential: {e}") from None
    try:
        cfg.storage.kek_pin()
    except TLSConfigError as e:
        raise ConfigError(f"storage.kek_pin_credential: {e}") from None
    _validate_obs(cfg)
    if cfg.audit.queue_size < 1 or cfg.audit.priority_queue_size < 1:
        raise ConfigError("audit.queue_size: must be positive")
    if not cfg.audit.auth_failure_window_s > 0:
        raise ConfigError("audit.auth_failure_window_s: must be positive")
    if not cfg.require_client_auth and not is_loopback(host) and not cfg.allow_insecure_guest_bind:
        raise ConfigError(
            f"require_client_auth: false with client_listen on non-loopback {host!r} would "
            "serve unauthenticated guests to the network; set allow_insecure_guest_bind = true "
            "(--allow-insecure-guest-bind) if you really mean it")
    return cfg


def _validate_obs(cfg: NodeConfig) -> None:
    if cfg.log.format not in ("auto", "json", "text"):
        raise ConfigError(f"log.format: must be auto, json or text, got {cfg.log.format!r}")
    t = cfg.trace
    if t.endpoint and not t.endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"trace.endpoint: must be an http:// or https:// URL, got {t.endpoint!r}")
    if not 0.0 <= t.sample_ratio <= 1.0:
        raise ConfigError(f"trace.sample_ratio: must be between 0 and 1, got {t.sample_ratio}")
    if t.max_queue < 1 or t.export_timeout_s <= 0:
        raise ConfigError("trace.max_queue, trace.export_timeout_s: must be positive")


def _validate_http(cfg: NodeConfig) -> None:
    h = cfg.http
    for f in fields(h):
        v = getattr(h, f.name)
        if f.name != "listen" and v <= 0:
            raise ConfigError(f"http.{f.name}: must be positive, got {v}")
    if not h.listen:
        return
    host, _ = parse_host_port(h.listen, "http.listen")
    if not cfg.require_client_auth and not is_loopback(host) and not cfg.allow_insecure_guest_bind:
        raise ConfigError(
            f"require_client_auth: false with http.listen on non-loopback {host!r} would "
            "serve unauthenticated guests to the network; set allow_insecure_guest_bind = true "
            "(--allow-insecure-guest-bind) if you really mean it")


def load(path: Path | None, overrides: dict[str, Any] | None = None) -> NodeConfig:
    """Read TOML (if given), apply flag overrides (dotted keys), validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config: file not found: {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config: {path}: invalid TOML: {e}") from None
        except OSError as e:
            raise ConfigError(f"config: {path}: {e.strerror}") from None
    if "gateway" in data:
        gw = data.pop("gateway")
        if not isinstance(gw, dict) or set(gw) - {"identities"}:
            raise ConfigError("gateway: only 'identities' is allowed")
        data["gateway_identities"] = gw.get("identities", [])
    for dotted, v in (overrides or {}).items():
        if v is None:
            continue
        node = data
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    cfg = _build(NodeConfig, data, "")
    return validate(cfg)


def to_toml(cfg: NodeConfig) -> str:
    """A complete config file for `cfg` (absent optional values omitted)."""

    def dump(obj: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(obj):
            v = getattr(obj, f.name)
            if v is None:
                continue
            if isinstance(v, Path):
                v = str(v)
            elif isinstance(v, tuple):
                v = list(v)
            elif hasattr(v, "__dataclass_fields__"):
                v = dump(v)
            out[f.name] = v
        return out

    d = dump(cfg)
    if not d["state"].get("map_caches"):
        d["state"].pop("map_caches", None)
    if not d.get("peers"):
        d.pop("peers", None)
    if not d.get("peer_listen"):
        d.pop("peer_listen", None)
    if not d["http"].get("listen"):
        d.pop("http")
    if not d["trace"].get("endpoint"):
        d.pop("trace")
    d["gateway"] = {"identities": d.pop("gateway_identities", [])}
    acl = d.pop("acl", {})
    if acl:
        d["acl"] = acl
    return tomli_w.dumps(d)


def with_overrides(cfg: NodeConfig, **kw: Any) -> NodeConfig:
    return validate(replace(cfg, **kw))
