"""The HTTP/1.1 listener shell: accept, bound connections, TLS 1.3 handshake, hand the stream to
`ServerConnection`, shut down gracefully. Every refusal is counted (`statistics()`).

The TLS context decides whether client certificates are requested and how they are verified
(`loom.security.tls.server_context`): with CERT_OPTIONAL or CERT_REQUIRED a certificate that
fails verification fails the handshake, so a handler sees either a verified certificate or
None, never an unverified one taken for absent.

Shutdown as hypercorn does it: `shutdown()` stops accepting, idle keep-alive connections close
at once, requests in flight get `ServerLimits.shutdown_grace_s` to finish (their answers say
`Connection: close`), then whatever still runs is cancelled and `serve()` returns.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import trio

from loom.http.connection import Handler, ServerConnection, ServerState
from loom.http.limits import ServerLimits
from loom.http.message import RefusedRequest
from loom.security.tlsstream import TLSStream

__all__ = ["HTTPServer", "ServerStatistics"]

log = logging.getLogger("loom.http")

ACCEPT_BACKOFF_S = 0.1  # after an accept error such as EMFILE: pause, never spin


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    connections_open: int  # accepted and not yet closed (handshaking included)
    handshaking: int  # of those, still in the TLS handshake
    requests_served: int  # requests a handler answered (500s for handler errors included)
    handler_errors: int  # handler exceptions and invalid answers (each answered 500 if it could)
    # Refusals by reason: max_connections, handshake_timeout, handshake_failed, idle_timeout,
    # request_timeout, write_timeout, bad_request, header_too_large, too_many_headers,
    # body_too_large.
    refused: Mapping[str, int]


class HTTPServer:
    """Serve `handler` over HTTP/1.1 on TLS. `ssl_context` may be replaced at any time (a
    reload): new connections use the new one. `on_refusal`, when given, is called (in the
    connection's task, without awaiting) for every request refused before the handler."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext, *,
                 limits: ServerLimits | None = None, name: str = "http",
                 on_refusal: Callable[[RefusedRequest], None] | None = None,
                 on_handshake: Callable[[str, BaseException | None], None] | None = None
                 ) -> None:
        self.ssl_context = ssl_context
        # Called (without awaiting) after each TLS handshake: (remote, None) when it passed,
        # (remote, what it raised) when it failed or timed out.
        self._on_handshake = on_handshake
        self.limits = limits or ServerLimits()
        self.name = name
        self._handler = handler
        self._state = ServerState(on_refusal)
        self._stop = trio.Event()
        self._slots = self.limits.max_connections
        self._handshaking = 0
        self._conns: set[ServerConnection] = set()

    def statistics(self) -> ServerStatistics:
        s = self._state
        return ServerStatistics(
            connections_open=self.limits.max_connections - self._slots,
            handshaking=self._handshaking, requests_served=s.requests_served,
            handler_errors=s.handler_errors, refused=MappingProxyType(dict(s.refused)))

    def shutdown(self) -> None:
        """Begin the graceful shutdown; `serve()` returns when it is complete."""
        self._stop.set()

    async def serve_tcp(self, host: str, port: int, *,
                        task_status: trio.TaskStatus[list[trio.SocketListener]]
                        = trio.TASK_STATUS_IGNORED) -> None:
        """Listen on host:port (0: a free port) and serve; `nursery.start` returns the
        listeners, so the caller can read the bound port."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        await self.serve(listeners, task_status=task_status)

    async def serve(self, listeners: Sequence[trio.SocketListener], *,
                    task_status: trio.TaskStatus[list[trio.SocketListener]]
                    = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as conns:
                async with trio.open_nursery() as accepting:
                    for listener in listeners:
                        accepting.start_soon(self._accept_loop, listener, conns)
                    task_status.started(list(listeners))
                    await self._stop.wait()
                    accepting.cancel_scope.cancel()
                for listener in listeners:
                    await listener.aclose()
                self._state.draining = True
                for c in list(self._conns):
                    c.cancel_if_idle()
                conns.cancel_scope.deadline = trio.current_time() + self.limits.shutdown_grace_s
        finally:
            for listener in listeners:  # also when cancelled from outside
                listener.socket.close()

    async def _accept_loop(self, listener: trio.SocketListener, conns: trio.Nursery) -> None:
        while True:
            try:
                tcp = await listener.accept()
            except OSError as e:
                log.warning("%s: accept failed: %s", self.name, e)
                await trio.sleep(ACCEPT_BACKOFF_S)
                continue
            if self._slots == 0:
                self._state.refused["max_connections"] += 1
                await trio.aclose_forcefully(tcp)
                continue
            self._slots -= 1
            conns.start_soon(self._connection, tcp)

    async def _connection(self, tcp: trio.SocketStream) -> None:
        try:
            host, port = tcp.socket.getpeername()[:2]
            remote = f"{host}:{port}"
        except OSError:
            remote = "?"
        stream = TLSStream(tcp, self.ssl_context, server_side=True)
        try:
            if not await self._handshake(stream, remote):
                return
            conn = ServerConnection(stream, self._handler, self.limits, self._state,
                                    remote=remote, peer_certificate=stream.getpeercert())
            self._conns.add(conn)
            try:
                await conn.run()
            except Exception:  # a fault in one connection must not end the listener
                log.exception("%s: connection from %s failed", self.name, remote)
            finally:
                self._conns.discard(conn)
        finally:
            self._slots += 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _handshake(self, stream: TLSStream, remote: str) -> bool:
        self._handshaking += 1
        try:
            with trio.move_on_after(self.limits.handshake_timeout_s):
                await stream.do_handshake()
                if self._on_handshake is not None:
                    self._on_handshake(remote, None)
                return True
            self._state.refused["handshake_timeout"] += 1
            if self._on_handshake is not None:
                self._on_handshake(remote, TimeoutError("TLS handshake timed out"))
            return False
        except trio.BrokenResourceError as e:
            # A client certificate that fails verification lands here, never as "no cert".
            self._state.refused["handshake_failed"] += 1
            log.info("%s: TLS handshake with %s failed: %s", self.name, remote, e.__cause__)
            if self._on_handshake is not None:
                self._on_handshake(remote, e)
            return False
        finally:
            self._handshaking -= 1
