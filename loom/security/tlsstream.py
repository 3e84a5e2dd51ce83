"""A TLS stream for trio over a non-blocking `ssl.SSLSocket`: OpenSSL reads and writes the socket.

Why not `trio.SSLStream`: it runs TLS over memory BIOs, so every record crosses Python several
times (socket -> bytes -> incoming BIO -> SSLObject -> bytes, and back for writes, each step
behind trio's conflict detectors and a handshake lock). Here one `SSLSocket.recv` or `.send` does
the socket I/O and the crypto in C; Python only waits for readiness. On this machine that cuts
the CPU of a small mutual-TLS round trip by about 40% (bench/tls_bench.py), which is most of what
a one-client request costs.

Contract (the same as `trio.SSLStream`'s, so callers treat both alike):
- Creating one never fails on account of the connection: a socket already reset fails the
  handshake instead.
- `do_handshake()` must be awaited first; a failed handshake raises `trio.BrokenResourceError`
  whose `__cause__` is the `ssl.SSLError` (or `OSError`) that OpenSSL reported.
- `receive_some` returns b"" only after the peer's close_notify; a TCP EOF without one, a reset,
  or a TLS alert raise `trio.BrokenResourceError` (cause attached).
- One task may send while another receives. Two concurrent senders (or receivers) raise
  `trio.BusyResourceError`.
- A cancelled `send_all` may have written part of a record: the stream is then broken and must be
  closed, never reused (as with `SSLStream`, trio issue 198).
- `aclose()` sends close_notify without waiting for the peer's, then closes the socket; a task
  still blocked in a send or receive gets `trio.ClosedResourceError`.

Invariant: every wait is on readiness of the socket, and only after OpenSSL said it needs it
(SSLWantRead/WriteError). Decrypted bytes OpenSSL already holds are returned without waiting,
because `recv` is always tried before any wait.
"""

from __future__ import annotations

import socket
import ssl
from collections import deque
from typing import Literal

import trio

__all__ = ["TLSStream"]

_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


class TLSStream(trio.abc.Stream):
    """A TLS connection on a TCP socket taken over from a `trio.SocketStream` (which is left
    empty)."""

    __slots__ = ("_cause", "_fd", "_receiving", "_sending", "_sock", "_state", "_unsent")

    def __init__(self, tcp: trio.SocketStream, context: ssl.SSLContext, *,
                 server_side: bool = False, server_hostname: str | None = None) -> None:
        self._sock: ssl.SSLSocket | None = None
        self._fd = -1
        self._state = "new"  # new -> open -> (broken) -> closed
        self._cause: BaseException | None = None  # why it broke, if it did
        self._sending = False
        self._receiving = False
        self._unsent: deque[memoryview] = deque()  # written in order; see _write_ready
        # Take the file descriptor from trio's stream (TCP_NODELAY and the connection stay).
        raw = socket.socket(fileno=tcp.socket.detach())
        try:
            # A socket reset before we got to it is refused here, by the handshake that
            # follows. `wrap_socket` would find out itself, but (3.11) raises SSLError "Closed
            # before TLS handshake with data", or raises without closing the socket it made.
            raw.getpeername()
            raw.setblocking(False)
            self._sock = context.wrap_socket(
                raw, server_side=server_side, server_hostname=server_hostname,
                do_handshake_on_connect=False, suppress_ragged_eofs=False)
        except OSError as e:
            raw.close()
            self._state, self._cause = "broken", e
            return
        except BaseException:
            raw.close()
            raise
        self._fd = self._sock.fileno()

    # -- the TLS session -----------------------------------------------------------------------

    async def do_handshake(self) -> None:
        """Run the handshake (bounded by the caller's deadline). Idempotent once it succeeded."""
        if self._state == "open":
            await trio.lowlevel.checkpoint()
            return
        sock = self._check_usable()
        try:
            while True:
                try:
                    sock.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await trio.lowlevel.wait_readable(self._fd)
                except ssl.SSLWantWriteError:
                    await trio.lowlevel.wait_writable(self._fd)
        except (ssl.SSLError, OSError) as e:
            self._state, self._cause = "broken", e
            raise trio.BrokenResourceError(str(e)) from e
        self._state = "open"
        await trio.lowlevel.checkpoint()

    def getpeercert(self, binary_form: Literal[True] = True) -> bytes | None:
        """The peer's certificate in DER (callers map identities themselves); None before the
        handshake or when none was sent."""
        if self._sock is None:
            return None
        try:
            return self._sock.getpeercert(binary_form=True)
        except (ValueError, OSError):
            return None

    # -- trio.abc.Stream -----------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            sock = self._check_open()
            n = 65536 if max_bytes is None else max_bytes
            if n < 1:
                raise ValueError("max_bytes must be >= 1")
            waited = False
            while True:
                try:
                    data = sock.recv(n)
                    break
                except ssl.SSLWantReadError:
                    await trio.lowlevel.wait_readable(self._fd)
                except ssl.SSLWantWriteError:  # a TLS 1.3 KeyUpdate answer waits for room
                    await trio.lowlevel.wait_writable(self._fd)
                except (ssl.SSLError, OSError) as e:
                    self._broken_by(e)
                waited = True
            if not waited:  # a checkpoint either way, but never two scheduler trips
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        finally:
            self._receiving = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        await trio.lowlevel.checkpoint_if_cancelled()
        sock = self._check_open()
        if data:
            self._unsent.append(memoryview(data))
        await self._flush(sock, checkpoint=True)

    def send_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        """Write `data` now if the socket takes it without waiting: True when all of it was
        written. Otherwise (the socket is full, or a send is in progress) the rest is kept,
        in order, and False says that `flush()` (or the send in progress) must deliver it.
        Never waits; raises like `send_all` when the stream is broken or closed."""
        sock = self._check_open()
        if data:
            self._unsent.append(memoryview(data))
        if self._sending:  # the send in progress takes it
            return False
        self._write_ready(sock)
        return not self._unsent

    async def flush(self) -> None:
        """Wait until everything `send_nowait` kept is written (bounded by the caller's
        deadline; a cancelled flush breaks the stream, as a cancelled `send_all` does)."""
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this stream")
        await trio.lowlevel.checkpoint_if_cancelled()
        await self._flush(self._check_open(), checkpoint=False)

    @property
    def unsent(self) -> int:
        """Bytes kept by `send_nowait` and not yet written."""
        return sum(map(len, self._unsent))

    def _write_ready(self, sock: ssl.SSLSocket) -> bool:
        """Write queued bytes until done or the socket is full; True when it is full.

        OpenSSL writes a whole buffer or nothing (no partial-write mode): after a want-write it
        must be called again with the same bytes, and the head of `_unsent` is exactly that."""
        q = self._unsent
        while q:
            try:
                k = sock.send(q[0])
            except _WANT:
                return True
            except (ssl.SSLError, OSError) as e:
                q.clear()
                self._broken_by(e)
            if k == len(q[0]):
                q.popleft()
            else:
                q[0] = q[0][k:]
        return False

    async def _flush(self, sock: ssl.SSLSocket, *, checkpoint: bool) -> None:
        self._sending = True
        try:
            while self._write_ready(sock):
                checkpoint = False
                try:
                    await trio.lowlevel.wait_writable(self._fd)
                except BaseException:
                    # Cancelled or closed mid-write: OpenSSL may hold half a record whose rest
                    # is lost with `_unsent`. The stream cannot be framed any more.
                    self._unsent.clear()
                    if self._state == "open":
                        self._state = "broken"
                    raise
        finally:
            self._sending = False
        if checkpoint:  # every send_all is a checkpoint, even when it never had to wait
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        self._check_open()
        await trio.lowlevel.wait_writable(self._fd)

    async def aclose(self) -> None:
        if self._state == "closed":
            await trio.lowlevel.checkpoint()
            return
        sock = self._sock
        if sock is not None and self._state == "open" and not self._sending:
            # One SSL_shutdown sends our close_notify; we do not wait for the peer's (a peer
            # that is not reading would hold us). Failing to send it is harmless here.
            try:
                sock.unwrap()
            except (ssl.SSLError, OSError, ValueError):
                pass
        self._state = "closed"
        if sock is not None:
            trio.lowlevel.notify_closing(self._fd)  # wakes a blocked sender/receiver: Closed
            sock.close()
        await trio.lowlevel.checkpoint()

    # -- internals -----------------------------------------------------------------------------

    def _check_usable(self) -> ssl.SSLSocket:
        if self._state == "closed":
            raise trio.ClosedResourceError("this TLS stream was closed")
        if self._state == "broken" or self._sock is None:
            cause = self._cause
            raise trio.BrokenResourceError(
                f"this TLS stream is broken: {cause}" if cause else "this TLS stream is broken"
            ) from cause
        return self._sock

    def _check_open(self) -> ssl.SSLSocket:
        sock = self._check_usable()
        if self._state != "open":
            raise trio.BrokenResourceError("the TLS handshake has not completed")
        return sock

    def _broken_by(self, e: BaseException) -> None:
        if self._state == "closed":
            raise trio.ClosedResourceError("this TLS stream was closed") from None
        self._state, self._cause = "broken", e
        raise trio.BrokenResourceError(str(e)) from e
