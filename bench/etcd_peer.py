"""The etcd side of the cluster benchmark: install, build the load generator, run, measure.

Uses the scripts in `../shared/peers/` (certificates, a 3-member etcd cluster with client and
peer mutual TLS, fsync on, and the `etcdload` Go load generator built offline against Debian's
etcd client library). Everything listens on 127.0.0.1. Every process started here is stopped by
the PIDs recorded at start, also when the benchmark is interrupted.

Failover is measured like Loom's: SIGKILL the leader, then every surviving member gets its own
prober that sends puts one at a time over a long-lived mutual-TLS connection (etcd's HTTP/JSON
gateway on the client port, `POST /v3/kv/put`, stdlib only), each attempt bounded by a short
timeout, until the first acknowledged put. The figure is the time from the kill to that ack;
its resolution is about one attempt timeout (a put forwarded to the dead leader hangs until the
attempt times out).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import os
import resource
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PEERS_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "peers"
APT_PACKAGES = ("etcd-server", "etcd-client", "golang-go", "golang-etcd-server-dev")
GOPATH_LIB = Path("/usr/share/gocode")
CLIENT_LIB = GOPATH_LIB / "src" / "go.etcd.io" / "etcd" / "clientv3"
BUILD_ROOT = Path(tempfile.gettempdir()) / "loom-bench-etcdload"
MODE = "tls"
BASE = Path(tempfile.gettempdir()) / "etcdbench" / MODE  # where etcd_cluster.sh keeps its state
CLIENT_PORTS = (23379, 23479, 23579)  # etcd_cluster.sh's tls layout, members m1..m3

Log = Callable[[str], None]


class EtcdUnavailable(Exception):
    """The etcd side cannot run here; the message says why (the benchmark skips etcd)."""


def _missing() -> list[str]:
    need = []
    if shutil.which("etcd") is None:
        need.append("etcd-server")
    if shutil.which("etcdctl") is None:
        need.append("etcd-client")
    if shutil.which("go") is None:
        need.append("golang-go")
    if not CLIENT_LIB.is_dir():
        need.append("golang-etcd-server-dev")
    return need


def ensure_installed(log: Log) -> None:
    """Install the Debian packages that are missing (apt-get, bounded); raise EtcdUnavailable."""
    need = _missing()
    if not need:
        return
    if shutil.which("apt-get") is None:
        raise EtcdUnavailable(f"missing {', '.join(need)} and no apt-get to install them")
    if os.geteuid() != 0:
        raise EtcdUnavailable(f"missing {', '.join(need)}; install them as root: "
                              f"apt-get install -y {' '.join(APT_PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log(f"etcd: installing {', '.join(need)} with apt-get (bounded to 15 minutes)")
    for attempt in ("install", "update+install"):
        try:
            if attempt == "update+install":
                subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=300,
                               check=False)
            r = subprocess.run(["apt-get", "install", "-y", *need], env=env,
                               capture_output=True, text=True, timeout=600, check=False)
        except subprocess.TimeoutExpired:
            raise EtcdUnavailable("apt-get timed out") from None
        if r.returncode == 0 and not _missing():
            return
    tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
    raise EtcdUnavailable(f"apt-get install failed: {tail[0]}")


def build_etcdload(peers_dir: Path, log: Log) -> Path:
    """Build etcdload offline (GOPATH mode against Debian's library); cached by source hash."""
    src = peers_dir / "etcdload" / "main.go"
    if not src.is_file():
        raise EtcdUnavailable(f"{src} not found")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    binary = BUILD_ROOT / "bin" / f"etcdload-{digest}"
    if binary.is_file():
        return binary
    pkg = BUILD_ROOT / "src" / "etcdload"
    pkg.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, pkg / "main.go")
    binary.parent.mkdir(parents=True, exist_ok=True)
    log("etcd: building etcdload (offline, about 30 s the first time)")
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": f"{BUILD_ROOT}:{GOPATH_LIB}",
           "GOCACHE": str(BUILD_ROOT / "cache")}
    try:
        r = subprocess.run(["go", "build", "-o", str(binary), "."], cwd=pkg, env=env,
                           capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        raise EtcdUnavailable("building etcdload timed out") from None
    if r.returncode != 0:
        raise EtcdUnavailable(f"building etcdload failed: {r.stderr.strip()[-300:]}")
    return binary


@dataclass
class LoadResult:
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    done: int
    errors: int
    seconds: float
    cpu_s: float  # the load generator's own CPU time (user + system)


@dataclass
class Failover:
    ms: float | None  # None: no acknowledged write within the bound
    acked_by: str  # the member that acknowledged the first write after the kill
    attempts: int
    failures: dict[str, int] = field(default_factory=dict)


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class EtcdCluster:
    """A running 3-member mutual-TLS etcd cluster (start with `started()`)."""

    def __init__(self, peers_dir: Path, etcdload: Path, certs: Path, log: Log) -> None:
        self.peers_dir = peers_dir
        self.etcdload = etcdload
        self.certs = certs
        self.log = log
        self.pids: list[int] = []  # index i = member m{i+1}
        self.killed: set[int] = set()
        self.ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        self.ctx.load_cert_chain(str(certs / "client.pem"), str(certs / "client.key"))

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in CLIENT_PORTS]

    @classmethod
    @contextlib.contextmanager
    def started(cls, peers_dir: Path, etcdload: Path, workdir: Path,
                log: Log) -> Iterator[EtcdCluster]:
        pidfile = BASE / "pids"
        if pidfile.exists():
            for pid in _read_pids(pidfile):
                if _alive(pid):
                    raise EtcdUnavailable(
                        f"an etcd cluster from an earlier run is still up (pid {pid}); stop it "
                        f"with {peers_dir / 'etcd_cluster.sh'} stop {MODE}")
        certs = workdir / "etcd-certs"
        r = subprocess.run([str(peers_dir / "make_certs.sh"), str(certs)], capture_output=True,
                           text=True, timeout=60, check=False)
        if r.returncode != 0:
            raise EtcdUnavailable(f"make_certs.sh failed: {r.stderr.strip()[-300:]}")
        self = cls(peers_dir, etcdload, certs, log)
        try:
            # own session: Ctrl-C reaches this process only; the members are stopped by PID below
            proc = subprocess.Popen([str(peers_dir / "etcd_cluster.sh"), "start", MODE,
                                     str(certs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, start_new_session=True)
            try:
                out, err = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            self.pids = _read_pids(pidfile) if pidfile.exists() else []
            if proc.returncode != 0 or len(self.pids) != 3:
                raise EtcdUnavailable(f"etcd_cluster.sh start failed: {(err or out).strip()}")
            yield self
        finally:
            self.stop()

    def stop(self) -> None:
        if not self.pids:
            return
        with contextlib.suppress(Exception):
            subprocess.run([str(self.peers_dir / "etcd_cluster.sh"), "stop", MODE],
                           capture_output=True, timeout=30, check=False, start_new_session=True)
        for pid in self.pids:  # whatever the script did, nothing we started stays up
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.pids = []

    # -- the gateway (HTTP/JSON on the client port), for status and failover probes --------

    def _conn(self, endpoint: str, timeout: float) -> http.client.HTTPSConnection:
        host, _, port = endpoint.rpartition(":")
        return http.client.HTTPSConnection(host, int(port), context=self.ctx, timeout=timeout)

    def _post(self, conn: http.client.HTTPSConnection, path: str,
              body: dict[str, Any]) -> dict[str, Any]:
        conn.request("POST", path, body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise OSError(f"HTTP {resp.status}: {data[:200]!r}")
        out = json.loads(data)
        assert isinstance(out, dict)
        return out

    def leader(self, timeout: float = 30.0) -> int:
        """Index (0..2) of the member that every reachable member agrees is the leader."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, ep in enumerate(self.endpoints):
                if i in self.killed:
                    continue
                conn = self._conn(ep, 2.0)
                try:
                    st = self._post(conn, "/v3/maintenance/status", {})
                    if st.get("leader") and st["leader"] == st["header"]["member_id"]:
                        return i
                except (OSError, ValueError, KeyError):
                    pass
                finally:
                    conn.close()
            time.sleep(0.1)
        raise EtcdUnavailable(f"no etcd leader within {timeout:.0f} s")

    # -- load -------------------------------------------------------------------------------

    def load(self, op: str, clients: int, total: int, seconds: float) -> LoadResult:
        conns = min(clients, 8)
        cmd = [str(self.etcdload), "-endpoints", ",".join(self.endpoints), "-leader-only",
               "-cacert", str(self.certs / "ca.pem"), "-cert", str(self.certs / "client.pem"),
               "-key", str(self.certs / "client.key"), "-val-size", "256", "-op", op,
               "-clients", str(clients), "-conns", str(conns), "-total", str(total),
               "-max-seconds", str(seconds)]
        if op == "get":
            cmd += ["-consistency", "l"]
        cpu0 = _children_cpu()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60,
                           check=False)
        cpu = _children_cpu() - cpu0
        if r.returncode != 0:
            raise EtcdUnavailable(f"etcdload failed: {r.stderr.strip()[-300:]}")
        d = json.loads(r.stdout.strip().splitlines()[-1])
        return LoadResult(float(d["ops_per_sec"]), float(d["p50_ms"]), float(d["p99_ms"]),
                          int(d["done"]), int(d["errors"]), float(d["seconds"]), cpu)

    # -- failover ---------------------------------------------------------------------------

    def failover(self, *, bound_s: float = 30.0, attempt_timeout_s: float = 0.1,
                 backoff_s: float = 0.01) -> Failover:
        lead = self.leader()
        survivors = [i for i in range(3) if i != lead and i not in self.killed]
        value = base64.b64encode(b"f" * 256).decode()
        done = threading.Event()
        lock = threading.Lock()
        result: dict[str, Any] = {"t": None, "who": "", "attempts": 0}
        failures: dict[str, int] = {}
        # warm one connection per survivor before the kill (long-lived, like a real client)
        conns = {i: self._conn(self.endpoints[i], attempt_timeout_s) for i in survivors}
        for c in conns.values():
            with contextlib.suppress(OSError, ValueError):
                self._post(c, "/v3/maintenance/status", {})

        def probe(i: int, t_kill: float) -> None:
            conn = conns[i]
            n = 0
            while not done.is_set() and time.perf_counter() - t_kill < bound_s:
                n += 1
                key = base64.b64encode(f"failover/{i}/{n}".encode()).decode()
                try:
                    self._post(conn, "/v3/kv/put", {"key": key, "value": value})
                except (OSError, ValueError) as e:  # timeouts, refused, HTTP errors
                    kind = type(e).__name__ if not str(e).startswith("HTTP") else str(e)[:8]
                    with lock:
                        failures[kind] = failures.get(kind, 0) + 1
                    conn.close()
                    conn = self._conn(self.endpoints[i], attempt_timeout_s)
                    time.sleep(backoff_s)
                    continue
                t = time.perf_counter()
                with lock:
                    if result["t"] is None or t < result["t"]:
                        result["t"], result["who"] = t, f"m{i + 1}"
                done.set()
            with lock:
                result["attempts"] += n
            conn.close()

        pid = self.pids[lead]
        os.kill(pid, signal.SIGKILL)
        t_kill = time.perf_counter()
        self.killed.add(lead)
        threads = [threading.Thread(target=probe, args=(i, t_kill), daemon=True)
                   for i in survivors]
        for t in threads:
            t.start()
        for t in threads:
            t.join(bound_s + 5)
        ms = (result["t"] - t_kill) * 1000 if result["t"] is not None else None
        return Failover(ms, result["who"], int(result["attempts"]), failures)


def _read_pids(p: Path) -> list[int]:
    return [int(x) for x in p.read_text().split() if x.strip().isdigit()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
