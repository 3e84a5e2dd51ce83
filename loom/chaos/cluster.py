"""A real Loom cluster for one chaos run: `loomd` processes joined by a partition network.

`ChaosCluster` creates a development PKI (node certificates for the voters and for spare ids
that membership changes add), writes one config per node (mutual TLS, fsync on as always, its own
data directory and log file, a fast Raft profile), starts every process in its own process group,
and joins them by a partition network: each node in its own network namespace (netns.py) when
the machine allows it, else a `FaultProxy` on every directed peer link on 127.0.0.1 (proxy.py),
which needs no privileges. `network="auto"` chooses; `network_note` says what and why.

Ownership rule: every process started here is in `self.procs` until it has been reaped, and
`aclose()` (called from a `finally` by the runner) SIGKILLs the process group of each one that
is still alive, then closes the network (namespaces and bridge deleted, proxies stopped), so
nothing outlives a run, even one that failed or was cancelled.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from loom.chaos import netns
from loom.chaos.netns import NetnsNetwork
from loom.chaos.proxy import ProxyNetwork
from loom.cli.loomd import EXAMPLE_ACL
from loom.client import AsyncClient, RetryPolicy, open_client
from loom.client.errors import ClientError
from loom.node.config import (
    AuditConfig,
    Limits,
    NodeConfig,
    RaftSettings,
    StorageSettings,
    TLSConfig,
    to_toml,
)
from loom.node.testhooks import ENV as TEST_HOOKS_ENV
from loom.security.devpki import create_dev_pki
from loom.wire.errors import LoomError

LOOMD = (sys.executable, "-m", "loom.cli.loomd")
# 20 ms ticks: elections time out after 200..400 ms, heartbeats every 40 ms.
FAST_RAFT = RaftSettings(tick_ms=20, election_ticks_min=10, election_ticks_max=20,
                         heartbeat_ticks=2, proposal_timeout_s=5.0, read_timeout_s=3.0)
ELECTION_TIMEOUT_S = FAST_RAFT.tick_ms * FAST_RAFT.election_ticks_max / 1000
CLUSTER_NAME = "loom-chaos"
SPARES = 2  # ids beyond the voters that membership changes may add
PORT_RANGE = (20_000, 32_000)
STATUS_ERRORS = (ClientError, LoomError, trio.TooSlowError, OSError)


def free_ports(n: int) -> list[int]:
    """n distinct loopback ports that were free just now, drawn below the kernel's ephemeral
    range (32768 and up on Linux), where neither `bind(port 0)` nor an outgoing connection
    can take one between this call and the node's own bind (a port that a node restarted
    much later binds again stays ours the same way)."""
    rng = random.SystemRandom()
    out: list[int] = []
    for _ in range(100 * n):  # bounded: a busy range fails loudly instead of looping
        if len(out) == n:
            return out
        port = rng.randrange(*PORT_RANGE)
        if port in out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        out.append(port)
    if len(out) == n:
        return out
    raise OSError(f"no {n} free ports in {PORT_RANGE}")


@dataclass
class NodeProc:
    id: str
    client_port: int
    peer_port: int
    dir: Path
    host: str = "127.0.0.1"  # the address it listens on (its namespace's, or loopback)
    proc: trio.Process | None = None
    paused: bool = False
    starts: int = 0

    @property
    def config(self) -> Path:
        return self.dir / "loomd.toml"

    @property
    def log(self) -> Path:
        return self.dir / "loomd.log"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def client_addr(self) -> str:
        return f"{self.host}:{self.client_port}"

    @property
    def peer_listen(self) -> str:
        return f"{self.host}:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def log_text(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


async def spawn_loomd(config: Path, log: Path, *args: str, env: dict[str, str] | None = None,
                      banner: str = "", wrap: Sequence[str] = ()) -> trio.Process:
    """`loomd --config config *args` (behind `wrap`, e.g. `ip netns exec NS`) in its own
    process group, appending its output to `log` (after `banner`), unbuffered."""
    fd = _open_log(log, banner)
    try:  # the child keeps its own descriptor
        return await trio.lowlevel.open_process(
            [*wrap, *LOOMD, "--config", str(config), *args], stdin=subprocess.DEVNULL,
            stdout=fd, stderr=subprocess.STDOUT, start_new_session=True,
            env={**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"})
    finally:
        os.close(fd)


async def gather_statuses(ids: Sequence[str],
                          status: Callable[[str], Awaitable[dict[str, Any] | None]]
                          ) -> dict[str, dict[str, Any]]:
    """`status` of every node of `ids`, asked in parallel; the nodes that answered."""
    out: dict[str, dict[str, Any]] = {}

    async def one(nid: str) -> None:
        st = await status(nid)
        if st is not None:
            out[nid] = st

    async with trio.open_nursery() as ns:
        for nid in ids:
            ns.start_soon(one, nid)
    return out


@dataclass
class ChaosCluster:
    root: Path
    size: int
    rng: random.Random
    lease_reads: bool = False
    network: str = "auto"  # "netns", "proxy", or "auto": netns when available
    mutant: str = ""  # a planted bug (loom/node/testhooks.py) every node runs with, or none
    nodes: dict[str, NodeProc] = field(default_factory=dict)
    members: list[str] = field(default_factory=list)  # current voters and learners
    removed: set[str] = field(default_factory=set)
    exits: list[str] = field(default_factory=list)  # unexpected exits seen (node: code)
    expect_exit: set[str] = field(default_factory=set)  # an injected fault may stop these
    network_note: str = ""

    def __post_init__(self) -> None:
        ids = [f"n{i}" for i in range(1, self.size + SPARES + 1)]
        why_not = netns.available() if self.network != "proxy" else "asked for the proxy"
        if self.network == "netns" and why_not is not None:
            raise netns.NetnsError(f"network namespaces asked for but unavailable: {why_not}")
        self.net: NetnsNetwork | ProxyNetwork = \
            NetnsNetwork(ids) if why_not is None else ProxyNetwork(ids, self.rng)
        self.network_note = self.net.describe() + (f"; netns: {why_not}" if why_not else "")
        ports = free_ports(2 * len(ids))
        for i, nid in enumerate(ids):
            self.nodes[nid] = NodeProc(nid, ports[2 * i], ports[2 * i + 1], self.root / nid,
                                       self.net.host(nid))
        self.members = ids[: self.size]
        self.founders = frozenset(self.members)
        self.certs = self.root / "certs"

    @property
    def spares(self) -> list[str]:
        return [n for n in self.nodes if n not in self.members and n not in self.removed]

    @property
    def endpoints(self) -> list[str]:
        return [n.client_addr for n in self.nodes.values()]

    def client_kwargs(self) -> dict[str, Any]:
        # node certificates name localhost and 127.0.0.1: a namespace's address is checked
        # against the name (the certificate is still verified against the CA)
        return {"ca": self.certs / "ca.pem", "cert": self.certs / "admin.pem",
                "key": self.certs / "admin.key", "client_name": "loom-chaos",
                **({"server_hostname": "localhost"} if self.net.kind == "netns" else {})}

    # -- set-up ---------------------------------------------------------------------------------
    async def setup(self, nursery: trio.Nursery) -> None:
        """PKI, the network (proxies run in `nursery`), configs; then start the voters."""
        create_dev_pki(self.certs, nodes=tuple(self.nodes))
        if isinstance(self.net, ProxyNetwork):
            await nursery.start(self.net.run, {n.id: n.peer_port for n in self.nodes.values()})
        else:
            await trio.to_thread.run_sync(self.net.setup)
        for nid in self.nodes:
            self.write_config(nid, join=nid not in self.members)
        for nid in self.members:
            await self.start(nid)

    def peer_addr(self, src: str, dst: str) -> str:
        """The address `src` uses to reach `dst` (its proxy, or `dst`'s namespace address)."""
        return self.net.peer_addr(src, dst, self.nodes[dst].peer_port)

    def write_config(self, nid: str, *, join: bool) -> None:
        n = self.nodes[nid]
        n.dir.mkdir(parents=True, exist_ok=True)
        # a config's peers name the node itself (its own listener) and, for a founding voter,
        # the founders; a joiner knows every id. Others are reached through the network.
        peers = {o: self.peer_addr(nid, o) for o in (self.nodes if join else self.members)
                 if o != nid}
        peers[nid] = n.peer_listen
        cfg = NodeConfig(
            node_id=nid, data_dir=n.data_dir, client_listen=n.client_addr,
            peer_listen=n.peer_listen, peers=peers, join=join,
            cluster_name=CLUSTER_NAME, log_level="info",
            tls=TLSConfig(ca=self.certs / "ca.pem", cert=self.certs / f"{nid}.pem",
                          key=self.certs / f"{nid}.key"),
            audit=AuditConfig(sink="off"), acl=EXAMPLE_ACL,
            limits=Limits(shutdown_grace_s=3.0),
            raft=RaftSettings(**{**_fields(FAST_RAFT), "lease_reads": self.lease_reads}),
            storage=StorageSettings(segment_bytes=16 << 20))
        n.config.write_text(to_toml(cfg), encoding="utf-8")

    # -- processes ------------------------------------------------------------------------------
    async def start(self, nid: str, hooks: dict[str, Any] | None = None) -> None:
        """Start `nid` on its own data directory (a restart keeps it) in its own process group,
        with test-only fault hooks (loom/node/testhooks.py) when `hooks` is given."""
        n = self.nodes[nid]
        if n.running:
            return
        self._note_exit(nid)
        env = {k: v for k, v in os.environ.items() if k != TEST_HOOKS_ENV}
        args: list[str] = []
        if nid in self.founders:  # ignored once the node has a log
            args += ["--initial-cluster-state", "new"]
        hooks = {**({self.mutant: True} if self.mutant else {}), **(hooks or {})}
        if hooks:
            env[TEST_HOOKS_ENV] = json.dumps(hooks)
            args.append("--enable-test-hooks")
        n.proc = await spawn_loomd(n.config, n.log, *args, env=env,
                                   banner=f"=== chaos: start #{n.starts + 1} hooks {hooks}\n",
                                   wrap=self.net.wrap(nid, []))
        n.paused = False
        n.starts += 1

    async def kill(self, nid: str) -> None:
        """SIGKILL and reap."""
        n = self.nodes[nid]
        if n.proc is None or n.proc.returncode is not None:
            return
        _signal_group(n.proc, signal.SIGKILL)
        with trio.move_on_after(10):
            await n.proc.wait()
        n.paused = False

    async def kill_all(self, ids: Sequence[str]) -> None:
        """SIGKILL every one of `ids` at once (a power cut of those machines), then reap."""
        procs = [self.nodes[n].proc for n in ids if self.nodes[n].running]
        for p in procs:
            _signal_group(p, signal.SIGKILL)
        for nid in ids:
            await self.kill(nid)

    def pause(self, nid: str) -> None:
        n = self.nodes[nid]
        if n.running and not n.paused:
            _signal_group(n.proc, signal.SIGSTOP)
            n.paused = True

    def resume(self, nid: str) -> None:
        n = self.nodes[nid]
        if n.running and n.paused:
            _signal_group(n.proc, signal.SIGCONT)
        n.paused = False

    async def stop(self, nid: str, grace_s: float = 8.0) -> None:
        """SIGTERM (after SIGCONT) and wait; SIGKILL when the grace runs out."""
        n = self.nodes[nid]
        if n.proc is None or n.proc.returncode is not None:
            return
        # however it ends is ours (SIGTERM before loomd installed its handler ends it at once)
        self.expect_exit.add(nid)
        _signal_group(n.proc, signal.SIGCONT)
        n.proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(grace_s):
            await n.proc.wait()
        await self.kill(nid)

    def _note_exit(self, nid: str) -> None:
        """Record the end of `nid`'s last process if it ended by itself (not SIGKILL, not a
        clean stop) and no fault made that expected."""
        n = self.nodes[nid]
        if n.proc is not None and n.proc.returncode not in (None, 0, -signal.SIGKILL) \
                and nid not in self.expect_exit and nid not in self.removed:
            self.exits.append(f"{nid} exited with code {n.proc.returncode}")
        self.expect_exit.discard(nid)

    def check_exits(self) -> list[str]:
        """Nodes that exited by themselves during the run (not killed or stopped here, nor
        stopped by an injected fault): each one a finding."""
        for nid in self.nodes:
            self._note_exit(nid)
        return list(self.exits)

    async def aclose(self) -> None:
        """Stop every process, then the network (shielded: also on failure and cancellation)."""
        with trio.CancelScope(shield=True):
            for n in self.nodes.values():
                if n.proc is not None and n.proc.returncode is None:
                    _signal_group(n.proc, signal.SIGKILL)
            for n in self.nodes.values():
                if n.proc is not None:
                    with trio.move_on_after(10):
                        await n.proc.wait()
            self.net.close()

    # -- the network ----------------------------------------------------------------------------
    def cut(self, a: str, b: str) -> None:
        self.net.cut(a, b)

    def heal_network(self) -> None:
        self.net.heal()

    # -- observation ----------------------------------------------------------------------------
    def live(self) -> list[str]:
        return [m for m in self.members if self.nodes[m].running and not self.nodes[m].paused]

    async def status(self, nid: str, limit_s: float = 2.0) -> dict[str, Any] | None:
        """CLUSTER_STATUS from `nid` alone (no retries elsewhere); None when it cannot answer."""
        return await self._local_call(nid, "CLUSTER_STATUS", limit_s)

    async def _local_call(self, nid: str, op: str, limit_s: float) -> dict[str, Any] | None:
        n = self.nodes[nid]
        if not n.running or n.paused:
            return None
        try:
            with trio.fail_after(limit_s):
                async with open_client([n.client_addr], timeout=limit_s, connect_timeout=limit_s,
                                       retry=RetryPolicy(attempts=1),
                                       **self.client_kwargs()) as c:
                    st: dict[str, Any] = await c.call(op)
                    return st
        except STATUS_ERRORS:
            return None

    async def statuses(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return await gather_statuses(ids, self.status)

    async def leader(self) -> str | None:
        """A live member that says it leads and that another member follows in its term."""
        sts = await self.statuses(self.live())
        for nid, st in sts.items():
            if st.get("role") == "leader" and (
                    len(sts) == 1 or any(o != nid and s.get("leader") == nid
                                         and s.get("term") == st.get("term")
                                         for o, s in sts.items())):
                return nid
        return None

    async def wait_converged(self, limit_s: float) -> dict[str, dict[str, Any]]:
        """Every member agrees on one leader and has applied the leader's commit index."""
        last: dict[str, dict[str, Any]] = {}
        with trio.move_on_after(limit_s):
            for _ in range(10_000):
                last = await self.statuses(self.members)
                if len(last) == len(self.members):
                    leaders = {s.get("leader") for s in last.values()}
                    applied = {s.get("applied_index") for s in last.values()}
                    commits = {s.get("commit_index") for s in last.values()}
                    if len(leaders) == 1 and None not in leaders and applied == commits \
                            and len(applied) == 1:
                        return last
                await trio.sleep(0.1)
        brief = {k: {f: v.get(f) for f in ("role", "term", "leader", "commit_index",
                                             "applied_index")} for k, v in last.items()}
        raise ConvergeError(f"not converged within {limit_s:g} s: {brief}")

    async def diagnose(self) -> dict[str, Any]:
        """What a failed convergence leaves behind: every node's NODE_STATS (peer links
        included) and the network's state (every proxy's counters)."""
        out: dict[str, Any] = {"members": self.members, "removed": sorted(self.removed),
                               **self.net.diagnose()}
        for nid, n in self.nodes.items():
            if not n.running or n.paused:
                out[nid] = None if n.proc is None else f"exit {n.proc.returncode}"
                continue
            out[nid] = await self.node_stats(nid, limit_s=3.0) or "no answer"
        return out

    async def node_stats(self, nid: str, limit_s: float = 2.0) -> dict[str, Any] | None:
        """NODE_STATS from `nid` alone; None when it cannot answer."""
        return await self._local_call(nid, "NODE_STATS", limit_s)

    async def admin(self, nursery: trio.Nursery, limit_s: float = 5.0) -> AsyncClient:
        """A client of every node, each call bounded by `limit_s` (retries included). Its
        first connection is retried for up to `limit_s` (every member may be starting up,
        e.g. after a power cut of all of them)."""
        deadline = trio.current_time() + limit_s
        while True:
            try:
                return await AsyncClient.connect(self.endpoints, nursery=nursery,
                                                 timeout=limit_s, **self.client_kwargs())
            except ClientError:
                if trio.current_time() >= deadline:
                    raise
                await trio.sleep(0.5)


class ConvergeError(Exception):
    pass


def _fields(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__dataclass_fields__}


def _open_log(path: Path, banner: str) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, banner.encode())
    return fd


def _signal_group(proc: trio.Process | None, sig: int) -> None:
    """Signal the process group `proc` leads (its own, from start_new_session)."""
    if proc is None or proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
