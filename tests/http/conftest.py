"""Helpers for the HTTP server and client tests: a real server on 127.0.0.1 (port 0) with the
development PKI's node certificate, the real client, and a raw TLS connection for sending bytes
no well-behaved client would send."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from loom.http import HTTPClient, HTTPServer, Request, Response, ServerLimits, StreamingResponse
from loom.security.tls import client_context, server_context
from loom.security.tlsstream import TLSStream
from tests.conftest import PKI

Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]


def server_ctx(pki: PKI, *, require_client_auth: bool = False) -> ssl.SSLContext:
    return server_context(pki.ca, *pki.pair("n1"), require_client_auth=require_client_auth)


def client_ctx(pki: PKI, name: str | None = "admin") -> ssl.SSLContext:
    if name is None:
        return client_context(pki.ca)
    return client_context(pki.ca, *pki.pair(name))


async def echo(request: Request) -> Response:
    return Response(200, [("content-type", "text/plain")],
                    b"%s %s %d" % (request.method.encode(), request.target.encode(),
                                   len(request.body)))


@dataclass
class Running:
    server: HTTPServer
    port: int

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@asynccontextmanager
async def running(pki: PKI, handler: Handler = echo, *, require_client_auth: bool = False,
                  **limits: float) -> AsyncIterator[Running]:
    """A server for the body of the `async with`; shut down gracefully at its end."""
    limits.setdefault("linger_s", 0.05)  # the tests' clients read to EOF instead of closing
    server = HTTPServer(handler, server_ctx(pki, require_client_auth=require_client_auth),
                        limits=ServerLimits(**limits))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        try:
            yield Running(server, listeners[0].socket.getsockname()[1])
        finally:
            server.shutdown()


@asynccontextmanager
async def client(pki: PKI, name: str | None = "admin", **kw: object
                 ) -> AsyncIterator[HTTPClient]:
    async with HTTPClient(client_ctx(pki, name), **kw) as c:  # type: ignore[arg-type]
        yield c


async def raw_tls(pki: PKI, port: int, name: str | None = "admin") -> TLSStream:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = TLSStream(tcp, client_ctx(pki, name), server_hostname="127.0.0.1")
    await stream.do_handshake()
    return stream


async def read_to_eof(stream: trio.abc.Stream, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes; fails if it keeps the connection open."""
    out = bytearray()
    with trio.fail_after(timeout):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break  # closed without close_notify counts as closed
            if not data:
                break
            out += data
    return bytes(out)


async def exchange_raw(pki: PKI, port: int, data: bytes) -> bytes:
    """Send raw bytes on a new TLS connection and return all the server says before closing."""
    stream = await raw_tls(pki, port)
    try:
        await stream.send_all(data)
        return await read_to_eof(stream)
    finally:
        await stream.aclose()
