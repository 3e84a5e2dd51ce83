"""What the async client needs of its async library: a TLS stream and a few primitives.

The async client (aio.py) is written on anyio, so it runs under trio and asyncio. Two things are
taken from the running library directly instead:

- The stream. Under trio it is Loom's `TLSStream` (OpenSSL reads and writes the socket itself,
  security/tlsstream.py: about 40% less CPU per round trip than TLS through memory BIOs);
  under asyncio it is anyio's TLS stream.
- The primitives every request touches (`Backend`): under trio, trio's own. anyio's wrappers
  look up the running library on every use; on the per-request path that was about 180 more
  Python calls per request (412 -> 590, measured with cProfile against a real node).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import anyio.abc
import sniffio

from loom.client import protocol as p
from loom.client.errors import ConnectError
from loom.client.protocol import Addr
from loom.client.tls import describe_tls_error

READ_CHUNK = 65536


class Stream(Protocol):
    """Under trio, Loom's TLSStream itself (its receive_some reads up to 64 KiB). Closed with
    `close_forcefully`."""

    async def send_all(self, data: bytes) -> None: ...
    async def receive_some(self) -> bytes: ...  # b"" after the peer closed
    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Backend:
    """The running library's primitives for the per-request path, and its exception types."""

    name: str
    event: Callable[[], Any]
    semaphore: Callable[[int], Any]
    channel: Callable[[int], tuple[Any, Any]]  # (send, receive) ends of a bounded queue
    cancel_scope: Callable[..., Any]
    fail_after: Callable[[float], AbstractContextManager[Any]]
    current_time: Callable[[], float]
    timed_out: tuple[type[BaseException], ...]  # what `fail_after` raises
    would_block: tuple[type[BaseException], ...]  # receive_nowait on an empty queue
    queue_closed: tuple[type[BaseException], ...]  # send on a closed queue
    broken: tuple[type[BaseException], ...]  # how a stream ends


def _anyio_backend(name: str) -> Backend:
    return Backend(
        name=name, event=anyio.Event, semaphore=anyio.Semaphore,
        channel=anyio.create_memory_object_stream[Any],
        cancel_scope=anyio.CancelScope, fail_after=anyio.fail_after,
        current_time=anyio.current_time, timed_out=(TimeoutError,),
        would_block=(anyio.WouldBlock,),
        queue_closed=(anyio.ClosedResourceError, anyio.BrokenResourceError),
        broken=(anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream,
                OSError))


def _trio_backend() -> Backend:
    import trio

    return Backend(
        name="trio", event=trio.Event, semaphore=trio.Semaphore,
        channel=trio.open_memory_channel[Any],
        cancel_scope=trio.CancelScope, fail_after=trio.fail_after,
        current_time=trio.current_time, timed_out=(trio.TooSlowError, TimeoutError),
        would_block=(trio.WouldBlock,),
        queue_closed=(trio.ClosedResourceError, trio.BrokenResourceError),
        broken=(trio.BrokenResourceError, trio.ClosedResourceError, anyio.BrokenResourceError,
                anyio.ClosedResourceError, anyio.EndOfStream, OSError))


_BACKENDS: dict[str, Backend] = {}


def current_backend() -> Backend:
    """The primitives of the library running this task (trio, or anyio's for any other)."""
    name = sniffio.current_async_library()
    b = _BACKENDS.get(name)
    if b is None:
        b = _BACKENDS[name] = _trio_backend() if name == "trio" else _anyio_backend(name)
    return b


async def close_forcefully(stream: Stream) -> None:
    """Close without waiting for the peer (anyio.aclose_forcefully for a `Stream`)."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        await stream.aclose()


def cause(e: BaseException) -> BaseException:
    """The underlying error (trio and anyio wrap ssl errors in BrokenResourceError)."""
    return e.__cause__ if e.__cause__ is not None else e


class _AnyioTLS:
    """asyncio (or any anyio backend): anyio's TLS stream over a TCP stream."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._s = stream

    async def send_all(self, data: bytes) -> None:
        await self._s.send(data)

    async def receive_some(self) -> bytes:
        try:
            return await self._s.receive(READ_CHUNK)
        except anyio.EndOfStream:
            return b""

    async def aclose(self) -> None:
        await self._s.aclose()


async def dial(addr: Addr, ctx: ssl.SSLContext, hostname: str, sent_cert: bool) -> Stream:
    """TCP and the TLS handshake; ConnectError names what failed."""
    where = p.format_endpoint(addr)
    host, port = addr
    if sniffio.current_async_library() == "trio":
        import trio

        from loom.security.tlsstream import TLSStream

        try:
            tcp = await trio.open_tcp_stream(host, port)
        except OSError as e:
            raise ConnectError(f"{where}: {e.strerror or e}") from None
        tls = TLSStream(tcp, ctx, server_hostname=hostname)
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, OSError) as e:
            await trio.aclose_forcefully(tls)
            raise ConnectError(f"{where}: "
                               f"{describe_tls_error(cause(e), sent_cert=sent_cert)}") from None
        except BaseException:  # connect_timeout or the caller's cancellation: never leak it
            await trio.aclose_forcefully(tls)
            raise
        return tls
    try:
        tcp_s = await anyio.connect_tcp(host, port)
    except OSError as e:
        raise ConnectError(f"{where}: {e.strerror or e}") from None
    from anyio.streams.tls import TLSStream as AnyioTLSStream

    try:
        stream = await AnyioTLSStream.wrap(tcp_s, hostname=hostname, ssl_context=ctx)
    except (anyio.BrokenResourceError, anyio.EndOfStream, OSError) as e:
        await anyio.aclose_forcefully(tcp_s)
        raise ConnectError(f"{where}: "
                           f"{describe_tls_error(cause(e), sent_cert=sent_cert)}") from None
    except BaseException:  # connect_timeout or the caller's cancellation: never leak it
        await anyio.aclose_forcefully(tcp_s)
        raise
    return _AnyioTLS(stream)
