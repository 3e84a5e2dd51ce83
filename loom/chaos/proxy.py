"""A fault-injecting TCP forwarder for one directed peer link (src -> dst).

Each node reaches each other node through its own `FaultProxy`, so the harness can cut any pair
of nodes (both directions, by cutting two proxies), delay the bytes of a link, or make it lossy.
TCP carries the peer protocol, so loss cannot drop bytes from a stream without corrupting it:
"loss" resets a connection (each forwarded chunk with probability `loss`), which is what a lossy
path looks like to a peer link (it reconnects, messages in flight are gone).

Bounds: at most `max_conns` forwarded connections (more are refused), one 64 KiB read at a time
per direction, a delay of at most `MAX_DELAY_S` per chunk.

`ProxyNetwork` is the partition network made of these proxies (one per directed link): the
fallback when network namespaces are not available (loom/chaos/netns.py); it needs no
privileges and runs in the harness's own nursery.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

MAX_DELAY_S = 1.0
CHUNK = 65536


@dataclass(frozen=True, slots=True)
class ProxyStatistics:
    accepted: int  # connections forwarded
    refused: int  # connections refused while cut (or over max_conns)
    reset: int  # connections reset by injected loss or by a cut


@dataclass
class FaultProxy:
    src: str
    dst: str
    target_port: int
    rng: random.Random
    max_conns: int = 16
    port: int = 0
    is_cut: bool = False
    delay_s: float = 0.0
    loss: float = 0.0  # probability that a forwarded chunk resets its connection
    _accepted: int = 0
    _refused: int = 0
    _reset: int = 0
    _scopes: set[trio.CancelScope] = field(default_factory=set)

    def statistics(self) -> ProxyStatistics:
        return ProxyStatistics(self._accepted, self._refused, self._reset)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with listeners[0], trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await listeners[0].accept()
                if self.is_cut or len(self._scopes) >= self.max_conns:
                    self._refused += 1
                    await trio.aclose_forcefully(stream)
                    continue
                self._accepted += 1
                scope = trio.CancelScope()
                self._scopes.add(scope)  # registered before the task starts: a cut reaches it
                nursery.start_soon(self._pipe, stream, scope)

    async def _pipe(self, down: trio.SocketStream, scope: trio.CancelScope) -> None:
        try:
            with scope:
                try:
                    up = await trio.open_tcp_stream("127.0.0.1", self.target_port)
                except OSError:
                    return
                try:
                    async with trio.open_nursery() as n:
                        n.start_soon(self._pump, down, up, n.cancel_scope)
                        n.start_soon(self._pump, up, down, n.cancel_scope)
                finally:
                    await trio.aclose_forcefully(up)
        finally:
            self._scopes.discard(scope)
            await trio.aclose_forcefully(down)

    async def _pump(self, a: trio.SocketStream, b: trio.SocketStream,
                    done: trio.CancelScope) -> None:
        try:
            while True:
                data = await a.receive_some(CHUNK)
                if not data:
                    break
                if self.loss and self.rng.random() < self.loss:
                    self._reset += 1
                    break
                if self.delay_s:
                    await trio.sleep(min(self.delay_s, MAX_DELAY_S))
                await b.send_all(data)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()

    def cut(self) -> None:
        """Drop every open connection and refuse new ones until `heal`."""
        self.is_cut = True
        self._reset += len(self._scopes)
        for cs in list(self._scopes):
            cs.cancel()

    def heal(self) -> None:
        self.is_cut = False
        self.delay_s = 0.0
        self.loss = 0.0


@dataclass
class ProxyNetwork:
    """Every node on 127.0.0.1; `src` reaches `dst` through the proxy of that directed link."""

    ids: Sequence[str]
    rng: random.Random
    kind: str = "proxy"
    shapes: frozenset[str] = frozenset({"cut", "delay", "loss"})
    proxies: dict[tuple[str, str], FaultProxy] = field(default_factory=dict)
    _scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def host(self, nid: str) -> str:
        return "127.0.0.1"

    def peer_addr(self, src: str, dst: str, port: int) -> str:
        del port  # the proxy knows its target
        return f"127.0.0.1:{self.proxies[(src, dst)].port}"

    def wrap(self, nid: str, argv: Sequence[str]) -> list[str]:
        return list(argv)

    async def run(self, ports: dict[str, int], *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve a proxy per directed link to `ports[dst]` (the peer ports) until close()."""
        with self._scope:
            async with trio.open_nursery() as n:
                for src in self.ids:
                    for dst in self.ids:
                        if src != dst:
                            p = FaultProxy(src, dst, ports[dst], random.Random(self.rng.random()))
                            self.proxies[(src, dst)] = p
                            await n.start(p.run)
                task_status.started()

    def close(self) -> None:
        self._scope.cancel()

    def cut(self, a: str, b: str) -> None:
        self.proxies[(a, b)].cut()
        self.proxies[(b, a)].cut()

    def set_delay(self, delay_s: float) -> None:
        for p in self.proxies.values():
            p.delay_s = delay_s

    def set_loss(self, loss: float) -> None:
        for p in self.proxies.values():
            p.loss = loss

    def heal(self) -> None:
        for p in self.proxies.values():
            p.heal()

    def describe(self) -> str:
        return "proxy (a fault proxy per directed peer link on 127.0.0.1)"

    def diagnose(self) -> dict[str, Any]:
        return {"network": self.describe(),
                "proxies": {f"{a}->{b}": {"cut": p.is_cut, **asdict(p.statistics())}
                            for (a, b), p in self.proxies.items()}}
