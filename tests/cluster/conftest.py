"""Real multi-process clusters on loopback: N `loomd` processes, real TLS, real peer links.

`Cluster` writes one config per node (a fast Raft profile, free 127.0.0.1 ports, its own data
directory and log file), starts and signals the processes (SIGKILL, SIGTERM, SIGSTOP/SIGCONT),
asks each node for CLUSTER_STATUS, and at teardown stops every process it started (SIGTERM, then
SIGKILL as a last resort) and prints the tail of every node's log (shown when a test fails).

With `proxied=True` every directed peer link src -> dst goes through its own fault proxy (the
chaos harness's `ProxyNetwork`, a TCP forwarder per link in the test process): each node's
`peers` map names the proxy in front of the other nodes, so a test can cut one pair of nodes
(both directions) and heal it again. `NodeProc` and the way loomd is spawned are the chaos
harness's too (loom/chaos/cluster.py owns them).

`Client` speaks frames over TLS like `tests.conftest.RawConn`, follows NOT_LEADER to the named
leader, and retries BUSY / UNAVAILABLE / NOT_LEADER / connection errors with bounded backoff.
Every loop here is bounded both in attempts and in time.
"""

from __future__ import annotations

import random
import signal
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio

from loom.chaos.cluster import FAST_RAFT, NodeProc, free_ports, gather_statuses, spawn_loomd
from loom.chaos.proxy import ProxyNetwork
from loom.client.protocol import hello_body
from loom.node.config import AuditConfig, Limits, NodeConfig, RaftSettings, TLSConfig, to_toml
from loom.wire import catalog
from loom.wire.codec import decode_payload, encode
from loom.wire.session import Session, SessionLimits
from tests.conftest import PKI, make_config, tls_client_ctx

OK, CONFLICT, BUSY, TIMEOUT, UNAVAILABLE, NOT_LEADER = 0, 5, 7, 8, 9, 10
LOST = -1  # synthetic: the connection broke after the request was sent (outcome unknown)
INDETERMINATE = frozenset({TIMEOUT, LOST})

# FAST_RAFT (elections after 200..400 ms) and free_ports come from loom.chaos.cluster.


class ConnError(Exception):
    """The connection failed or closed; `sent` tells whether the request left."""

    def __init__(self, msg: str, *, sent: bool) -> None:
        super().__init__(msg)
        self.sent = sent


class Conn:
    """One TLS client connection speaking frames (HELLO done by `open`)."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream], timeout: float) -> None:
        self.stream = stream
        # The clients' side of the session protocol; answers up to 16 MiB (snapshots).
        self.session = Session(SessionLimits(max_frame=1 << 24, hello_timeout_s=timeout,
                                             pre_hello_max_frame=1 << 24),
                               now=trio.current_time())
        self.next_id = 1
        # replies read while waiting for another id: kept for their own recv_id (a node
        # answers the requests of one connection as each finishes, not in the order sent)
        self._early: dict[int, dict[str, Any]] = {}

    @classmethod
    async def open(cls, pki: PKI, port: int, *, name: str = "admin", client_id: str = "",
                   timeout: float = 5.0) -> Conn:
        try:
            with trio.fail_after(timeout):
                tcp = await trio.open_tcp_stream("127.0.0.1", port)
        except (OSError, trio.TooSlowError) as e:
            raise ConnError(f"connect to {port}: {e!r}", sent=False) from None
        c = cls(trio.SSLStream(tcp, tls_client_ctx(pki, name), server_hostname="localhost"),
                timeout)
        try:
            hello = hello_body("cluster-tests", client_id)
            if not client_id:
                del hello["client_id"]
            r = await c.request("HELLO", timeout=timeout, **hello)
        except BaseException:
            await c.aclose()
            raise
        if r["s"] != OK:
            await c.aclose()
            raise ConnError(f"HELLO refused: {r}", sent=False)
        c.session.hello_accepted()
        return c

    def frame(self, op: str, seq: int = 0, stale: bool = False, **body: Any
              ) -> tuple[int, bytes]:
        rid = self.next_id
        self.next_id += 1
        f: dict[str, Any] = {"v": 1, "id": rid, "op": catalog.BY_NAME[op].opcode, "b": body}
        if seq:
            f["q"] = seq
        if stale:
            f["c"] = "stale"
        return rid, encode(f)

    async def send(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as e:
            raise ConnError(f"send: {e!r}", sent=False) from None

    async def recv_id(self, rid: int, timeout: float) -> dict[str, Any]:
        """The reply to request `rid`; replies to other requests read meanwhile are kept for
        their own call (at most 4,096), frames without a request id are skipped."""
        if (early := self._early.pop(rid, None)) is not None:
            return early
        try:
            with trio.fail_after(timeout):
                while True:
                    p = self.session.next_payload()
                    if p is not None:
                        obj = decode_payload(p)
                        if isinstance(obj, dict) and obj.get("id") == rid:
                            return obj
                        if (isinstance(obj, dict) and isinstance(obj.get("id"), int)
                                and len(self._early) < 4096):
                            self._early[obj["id"]] = obj
                        continue
                    data = await self.stream.receive_some(65536)
                    self.session.receive_data(data)
                    if not data:
                        raise ConnError("closed by the server", sent=True)
        except trio.TooSlowError:
            raise ConnError(f"no reply within {timeout:g} s", sent=True) from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                ssl.SSLError) as e:
            raise ConnError(f"receive: {e!r}", sent=True) from None

    async def request(self, op: str, *, seq: int = 0, timeout: float = 10.0,
                      stale: bool = False, **body: Any) -> dict[str, Any]:
        rid, data = self.frame(op, seq, stale, **body)
        await self.send(data)
        return await self.recv_id(rid, timeout)

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


class Cluster:
    def __init__(self, pki: PKI, root: Path, nursery: trio.Nursery, ids: tuple[str, ...],
                 raft: RaftSettings, proxied: bool, name: str = "cluster-tests") -> None:
        self.pki = pki
        self.root = root
        self.nursery = nursery
        self.ids = ids
        self.raft = raft
        self.proxied = proxied
        self.name = name
        ports = free_ports(2 * len(ids))
        self.nodes = {nid: NodeProc(nid, ports[2 * i], ports[2 * i + 1], root / nid)
                      for i, nid in enumerate(ids)}
        self.net = ProxyNetwork(ids, random.Random(0)) if proxied else None
        self.extra_procs: list[trio.Process] = []
        self._clients: list[Client] = []
        self._conns: list[Conn] = []

    def client(self, name: str = "admin", client_id: str = "") -> Client:
        """A Client closed at teardown (also when the test fails)."""
        c = Client(self, name, client_id)
        self._clients.append(c)
        return c

    async def connect(self, nid: str, *, name: str = "admin", client_id: str = "") -> Conn:
        """A direct connection to `nid`, closed at teardown."""
        c = await Conn.open(self.pki, self.nodes[nid].client_port, name=name,
                            client_id=client_id)
        self._conns.append(c)
        return c

    # -- configuration ------------------------------------------------------------------------
    def peers_of(self, nid: str) -> dict[str, str]:
        out = {}
        for other, n in self.nodes.items():
            if other != nid and self.net is not None:
                out[other] = self.net.peer_addr(nid, other, n.peer_port)
            else:
                out[other] = f"127.0.0.1:{n.peer_port}"
        return out

    def config_for(self, nid: str) -> NodeConfig:
        n = self.nodes[nid]
        cfg = make_config(self.pki, n.dir, node_id=nid, data_dir=n.data_dir,
                          client_listen=n.client_addr,
                          peer_listen=f"127.0.0.1:{n.peer_port}", peers=self.peers_of(nid),
                          cluster_name=self.name, raft=self.raft,
                          audit=AuditConfig(sink="off"),
                          limits=Limits(shutdown_grace_s=3.0))
        return replace(cfg, tls=TLSConfig(ca=self.pki.ca, cert=self.pki.dir / f"{nid}.pem",
                                          key=self.pki.dir / f"{nid}.key"))

    def write_configs(self) -> None:
        for nid, n in self.nodes.items():
            n.dir.mkdir(parents=True, exist_ok=True)
            n.config.write_text(to_toml(self.config_for(nid)), encoding="utf-8")

    # -- processes ----------------------------------------------------------------------------
    async def spawn(self, config: Path, log: Path, *args: str) -> trio.Process:
        return await spawn_loomd(config, log, *args)

    async def start(self, *ids: str, timeout: float = 30.0) -> None:
        """Start these nodes (all by default) and wait until each accepts clients."""
        if self.net is not None and not self.net.proxies:
            await self.nursery.start(self.net.run,
                                     {nid: n.peer_port for nid, n in self.nodes.items()})
        if not any(n.config.exists() for n in self.nodes.values()):
            self.write_configs()
        ids = ids or self.ids
        for nid in ids:
            n = self.nodes[nid]
            assert not n.running, f"{nid} is already running"
            # a founder's first start founds the cluster (loom.node.bootstrap)
            first = ("--initial-cluster-state", "new") if nid in self.ids and not n.starts else ()
            n.proc = await self.spawn(n.config, n.log, *first)
            n.paused = False
            n.starts += 1
        with trio.fail_after(timeout):
            async with trio.open_nursery() as ns:
                for nid in ids:
                    ns.start_soon(self.wait_serving, nid)

    async def wait_serving(self, nid: str) -> None:
        n = self.nodes[nid]
        for _ in range(600):  # bounded by the caller's deadline as well
            assert n.proc is not None
            if n.proc.returncode is not None:
                raise AssertionError(f"{nid} exited with {n.proc.returncode}:\n"
                                     f"{n.log_text()[-3000:]}")
            try:
                c = await Conn.open(self.pki, n.client_port, timeout=2)
            except ConnError:
                await trio.sleep(0.05)
                continue
            await c.aclose()
            return
        raise AssertionError(f"{nid} never accepted a client connection")

    async def kill(self, nid: str) -> None:
        n = self.nodes[nid]
        assert n.proc is not None
        n.proc.kill()
        with trio.fail_after(10):
            await n.proc.wait()
        n.paused = False

    async def stop(self, nid: str, timeout: float = 20.0) -> int:
        """SIGTERM and wait; SIGKILL if it does not exit in time. Returns the exit code."""
        n = self.nodes[nid]
        assert n.proc is not None
        if n.proc.returncode is None:
            if n.paused:
                n.proc.send_signal(signal.SIGCONT)
                n.paused = False
            n.proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(timeout):
                await n.proc.wait()
            if n.proc.returncode is None:
                n.proc.kill()
                with trio.move_on_after(10):
                    await n.proc.wait()
        return n.proc.returncode if n.proc.returncode is not None else -999

    def pause(self, nid: str) -> None:
        n = self.nodes[nid]
        assert n.proc is not None
        n.proc.send_signal(signal.SIGSTOP)
        n.paused = True

    def resume(self, nid: str) -> None:
        n = self.nodes[nid]
        assert n.proc is not None
        n.proc.send_signal(signal.SIGCONT)
        n.paused = False

    def cut(self, a: str, b: str) -> None:
        """Cut both directions between a and b (open connections dropped, new ones refused)."""
        assert self.net is not None, "cut needs proxied=True"
        self.net.cut(a, b)

    def isolate(self, nid: str) -> None:
        for other in self.ids:
            if other != nid:
                self.cut(nid, other)

    def heal(self) -> None:
        if self.net is not None:
            self.net.heal()

    def live(self) -> list[str]:
        return [nid for nid, n in self.nodes.items() if n.running and not n.paused]

    def id_of_addr(self, addr: str | None) -> str | None:
        for nid, n in self.nodes.items():
            if n.client_addr == addr:
                return nid
        return None

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for cl in self._clients:
                await cl.aclose()
            for conn in self._conns:
                await conn.aclose()
            for p in self.extra_procs:
                await _terminate(p)
            async with trio.open_nursery() as ns:
                for nid, n in self.nodes.items():
                    if n.proc is not None and n.proc.returncode is None:
                        ns.start_soon(self.stop, nid, 10.0)
            if self.net is not None:
                self.net.close()

    def dump_logs(self, tail: int = 60) -> None:
        for nid, n in self.nodes.items():
            lines = n.log_text().splitlines()
            print(f"===== {nid} log ({len(lines)} lines, last {tail}) =====")
            for line in lines[-tail:]:
                print(line)

    # -- observation --------------------------------------------------------------------------
    async def request(self, nid: str, op: str, timeout: float = 2.0, **body: Any
                      ) -> dict[str, Any] | None:
        """One request on a fresh connection to `nid`; None if it cannot be had in time."""
        n = self.nodes[nid]
        if not n.running or n.paused:
            return None
        try:
            with trio.fail_after(timeout):
                c = await Conn.open(self.pki, n.client_port, timeout=timeout)
                try:
                    return await c.request(op, timeout=timeout, **body)
                finally:
                    await c.aclose()
        except (ConnError, trio.TooSlowError):
            return None

    async def status(self, nid: str) -> dict[str, Any] | None:
        r = await self.request(nid, "CLUSTER_STATUS")
        if r is None or r["s"] != OK:
            return None
        out: dict[str, Any] = r["r"]
        return out

    async def stats(self, nid: str) -> dict[str, Any] | None:
        r = await self.request(nid, "NODE_STATS")
        if r is None or r["s"] != OK:
            return None
        out: dict[str, Any] = r["r"]
        return out

    async def statuses(self, ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
        return await gather_statuses(ids if ids is not None else self.live(), self.status)

    async def wait_leader(self, among: list[str] | None = None, timeout: float = 20.0,
                          not_in: tuple[str, ...] = ()) -> str:
        """A node of `among` that says it leads and that another node of `among` follows."""
        last: dict[str, dict[str, Any]] = {}
        with trio.move_on_after(timeout):
            for _ in range(1000):
                ids = among if among is not None else self.live()
                last = await self.statuses(ids)
                for nid, st in last.items():
                    if st["role"] != "leader" or nid in not_in:
                        continue
                    follows = [o for o, s in last.items()
                               if o != nid and s["leader"] == nid and s["term"] == st["term"]]
                    if follows or len(ids) == 1:
                        return nid
                await trio.sleep(0.05)
        raise AssertionError(f"no leader within {timeout} s: {last}")

    async def transfer_leadership(self, c: Client, to: str, timeout: float = 40.0,
                                  per_try: float = 5.0) -> None:
        """LEADER_TRANSFER to `to` until `to` leads (it says so and another node follows it
        in its term).

        OK means `to` took office (the old leader heard from it as leader of a later term);
        BUSY (the transfer window closed: a target stalled on a loaded machine) is asked again
        by `Client.call`; CONFLICT (another node took office meanwhile) is asked again here, of
        whoever leads. After OK, each try waits up to `per_try` seconds for every node's status
        to show it, within `timeout` in all."""
        last: dict[str, dict[str, Any]] = {}
        r: dict[str, Any] | None = None
        with trio.move_on_after(timeout):
            for _ in range(20):
                r = await c.call("LEADER_TRANSFER", to=to, retry_unknown=True)
                if r["s"] == CONFLICT:  # another node took office: ask again
                    continue
                assert r["s"] == OK, r
                assert r["r"]["leader"] == to, r
                with trio.move_on_after(per_try):
                    for _ in range(1000):
                        last = await self.statuses()
                        if _leads(last, to):
                            return
                        await trio.sleep(0.05)
        raise AssertionError(f"{to} does not lead after {timeout} s of transfers (last answer "
                             f"{r}): { {k: _brief(v) for k, v in last.items()} }")

    async def wait_converged(self, ids: list[str] | None = None, timeout: float = 30.0
                             ) -> dict[str, dict[str, Any]]:
        """All of `ids` agree on the leader and have applied the same index (the leader's
        commit index)."""
        ids = ids or list(self.ids)
        last: dict[str, dict[str, Any]] = {}
        with trio.move_on_after(timeout):
            for _ in range(1000):
                last = await self.statuses(ids)
                if len(last) == len(ids):
                    leaders = {s["leader"] for s in last.values()}
                    applied = {s["applied_index"] for s in last.values()}
                    commits = {s["commit_index"] for s in last.values()}
                    if len(leaders) == 1 and None not in leaders and len(applied) == 1 \
                            and applied == commits:
                        return last
                await trio.sleep(0.1)
        raise AssertionError(f"not converged within {timeout} s: "
                             f"{ {k: _brief(v) for k, v in last.items()} }")


def _leads(sts: dict[str, dict[str, Any]], nid: str) -> bool:
    st = sts.get(nid)
    return st is not None and st["role"] == "leader" and any(
        o != nid and s["leader"] == nid and s["term"] == st["term"] for o, s in sts.items())


def _brief(st: dict[str, Any]) -> dict[str, Any]:
    return {k: st[k] for k in ("role", "term", "leader", "commit_index", "applied_index")}


async def _terminate(p: trio.Process) -> None:
    if p.returncode is None:
        p.send_signal(signal.SIGCONT)
        p.terminate()
        with trio.move_on_after(10):
            await p.wait()
        if p.returncode is None:
            p.kill()
            with trio.move_on_after(10):
                await p.wait()


class Client:
    """Follows NOT_LEADER, retries BUSY / UNAVAILABLE / NOT_LEADER / connection errors with
    bounded backoff. Writes answered TIMEOUT, or whose connection broke after they were sent,
    come back as TIMEOUT / LOST (indeterminate) unless `retry_unknown` (reads, idempotent or
    deduplicated writes)."""

    def __init__(self, cluster: Cluster, name: str = "admin", client_id: str = "") -> None:
        self.cluster = cluster
        self.name = name
        self.client_id = client_id
        self.conn: Conn | None = None
        self.node: str | None = None
        self.retries = 0
        self.redirects = 0
        self.only: list[str] | None = None  # talk to these nodes only (one side of a partition)

    async def _drop(self) -> None:
        if self.conn is not None:
            await self.conn.aclose()
        self.conn, self.node = None, None

    def _pick(self, hint: str | None) -> str | None:
        live = [n for n in self.cluster.live() if self.only is None or n in self.only]
        if hint in live:
            return hint
        return random.choice(live) if live else None

    async def call(self, op: str, *, seq: int = 0, retry_unknown: bool = False,
                   deadline_s: float = 30.0, max_attempts: int = 400, request_timeout: float = 8.0,
                   **body: Any) -> dict[str, Any]:
        hint = self.node
        last: Any = None
        delay = 0.02
        with trio.move_on_after(deadline_s):
            for _ in range(max_attempts):
                target = self._pick(hint)
                if target is None:
                    await trio.sleep(0.1)
                    continue
                try:
                    if self.conn is None or self.node != target:
                        await self._drop()
                        self.conn = await Conn.open(self.cluster.pki,
                                                    self.cluster.nodes[target].client_port,
                                                    name=self.name, client_id=self.client_id,
                                                    timeout=3)
                        self.node = target
                    r = await self.conn.request(op, seq=seq, timeout=request_timeout, **body)
                except ConnError as e:
                    last = repr(e)
                    await self._drop()
                    if e.sent and not retry_unknown:
                        return {"s": LOST, "e": {"code": "LOST", "msg": str(e)}}
                    hint = None
                    await self._backoff(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                last = r
                s = r["s"]
                if s == NOT_LEADER:
                    self.redirects += 1
                    hint = self.cluster.id_of_addr((r.get("e") or {}).get("leader_addr"))
                    if hint is None or hint == target:
                        await self._backoff(delay)
                        delay = min(delay * 2, 0.5)
                    continue
                if s in (BUSY, UNAVAILABLE) or (s == TIMEOUT and retry_unknown):
                    hint = target if s == BUSY else None
                    await self._backoff(delay)
                    delay = min(delay * 2, 0.5)
                    continue
                return r
        raise AssertionError(f"{op} did not get an answer (deadline {deadline_s} s); last: {last}")

    async def _backoff(self, delay: float) -> None:
        self.retries += 1
        await trio.sleep(delay * (0.5 + random.random()))

    async def aclose(self) -> None:
        await self._drop()


ClusterFactory = Callable[..., Awaitable[Cluster]]


@pytest.fixture
async def cluster_factory(pki: PKI, tmp_path: Path, nursery: trio.Nursery
                          ) -> AsyncIterator[ClusterFactory]:
    """`c = await cluster_factory(n=3, proxied=False, start=True, **raft overrides)`."""
    made: list[Cluster] = []

    async def make(n: int = 3, *, proxied: bool = False, start: bool = True,
                   **raft: Any) -> Cluster:
        ids = tuple(f"n{i}" for i in range(1, n + 1))
        c = Cluster(pki, tmp_path / f"cluster{len(made)}", nursery, ids,
                    replace(FAST_RAFT, **raft), proxied)
        made.append(c)
        if start:
            await c.start()
        return c

    try:
        yield make
    finally:
        for c in made:
            await c.aclose()
            c.dump_logs()


@pytest.fixture
async def cluster(cluster_factory: ClusterFactory) -> Cluster:
    return await cluster_factory()
