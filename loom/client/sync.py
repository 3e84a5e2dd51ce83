"""The blocking client: standard `socket` + `ssl`, the same sans-IO codec, no trio.

One request at a time on one long-lived connection, plus `pipeline()` (write many, read many).
Not thread-safe: give each thread its own `Client`.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from loom.client import protocol as p
from loom.client.errors import ConnectError, IndeterminateError, ProtocolError
from loom.client.ops import Ops
from loom.client.tls import (
    closed_during_hello,
    describe_tls_error,
    is_permanent,
    make_context,
)
from loom.wire.catalog import MessageType
from loom.wire.codec import DEFAULT_MAX_FRAME, FrameDecoder, FrameError
from loom.wire.errors import Busy, LoomError, NotLeader, Timeout, Unavailable

Addr = tuple[str, int]


class ConnectionLost(Exception):
    """The connection broke while a request was outstanding (internal)."""


class _Conn:
    def __init__(self, sock: ssl.SSLSocket, addr: Addr) -> None:
        self.sock = sock
        self.addr = addr
        self.decoder = FrameDecoder(DEFAULT_MAX_FRAME)
        self._next_id = 0
        self.hello: p.HelloInfo | None = None

    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def send(self, data: bytes, deadline: float | None) -> None:
        self.sock.settimeout(_remaining(deadline))
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise
        except (OSError, ssl.SSLError) as e:
            raise ConnectionLost(f"send failed: {e}") from None

    def read(self, deadline: float | None) -> p.Response:
        while True:
            try:
                payload = self.decoder.next_payload()
            except FrameError as e:
                raise ProtocolError(f"bad frame from the server: {e}") from None
            if payload is not None:
                return p.parse_response(payload)
            self.sock.settimeout(_remaining(deadline))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                raise ConnectionLost("the server closed the connection") from None
            except ssl.SSLError as e:
                raise ConnectionLost(describe_tls_error(e, sent_cert=True)) from e
            except OSError as e:
                raise ConnectionLost(f"connection lost: {e}") from e
            if not data:
                raise ConnectionLost("the server closed the connection")
            self.decoder.feed(data)

    def read_for(self, wanted: set[int], deadline: float | None) -> p.Response:
        """The next answer to one of `wanted` (pushes and stale answers are skipped)."""
        while True:
            r = self.read(deadline)
            if not r.push and r.request_id in wanted:
                return r

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


class Client(Ops[Any]):
    """Blocking Loom client. `Client.connect(...)` or `with Client(...) as c:`.

    `endpoints` are "host:port" strings (or one comma-separated string). The first call (or
    `connect`) opens a TLS 1.3 connection to the first endpoint that answers; NOT_LEADER answers
    move it to the leader.
    """

    def __init__(
        self, endpoints: str | Sequence[str], *, ca: str | Path,
        cert: str | Path | None = None, key: str | Path | None = None,
        client_name: str = "loom-py", timeout: float = 10.0,
        headers: Mapping[str, str] | None = None, retry: p.RetryPolicy | None = None,
        server_hostname: str | None = None, check_hostname: bool = True,
        client_id: str | None = None, resend_unknown_writes: bool = True,
    ) -> None:
        self.endpoints = p.parse_endpoints(
            endpoints if isinstance(endpoints, str) else list(endpoints))
        self.timeout = timeout
        self.client_name = client_name
        self.client_id = client_id or p.new_client_id()
        self.headers = dict(headers or {})
        self.retry = retry or p.RetryPolicy()
        self.resend_unknown_writes = resend_unknown_writes
        self._ctx = make_context(ca, cert, key, check_hostname=check_hostname)
        self._sent_cert = cert is not None
        self._server_hostname = server_hostname
        self._seq = p.Sequencer()
        self._conn: _Conn | None = None
        self._preferred: Addr | None = None
        self._rotate = 0

    @classmethod
    def connect(cls, endpoints: str | Sequence[str], **kwargs: Any) -> Client:
        c = cls(endpoints, **kwargs)
        try:
            c.ensure_connected()
        except BaseException:
            c.close()
            raise
        return c

    def __enter__(self) -> Client:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def hello(self) -> p.HelloInfo | None:
        return None if self._conn is None else self._conn.hello

    @property
    def address(self) -> str | None:
        return None if self._conn is None else p.format_endpoint(self._conn.addr)

    # -- connections ----------------------------------------------------------------------------
    def _open(self, addr: Addr, deadline: float | None) -> _Conn:
        host, port = addr
        try:
            raw = socket.create_connection(addr, timeout=_remaining(deadline))
        except TimeoutError:
            raise ConnectError(f"{host}:{port}: connect timed out") from None
        except OSError as e:
            raise ConnectError(f"{host}:{port}: {e.strerror or e}") from None
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = self._ctx.wrap_socket(raw, server_hostname=self._server_hostname or host)
        except TimeoutError:
            raw.close()
            raise ConnectError(f"{host}:{port}: TLS handshake timed out") from None
        except ssl.SSLError as e:
            raw.close()
            msg = describe_tls_error(e, sent_cert=self._sent_cert)
            raise ConnectError(f"{host}:{port}: {msg}") from None
        except OSError as e:
            raw.close()
            msg = describe_tls_error(e, sent_cert=self._sent_cert)
            raise ConnectError(f"{host}:{port}: {msg}") from None
        conn = _Conn(sock, addr)
        try:
            conn.hello = self._hello(conn, deadline)
        except BaseException:
            conn.close()
            raise
        conn.decoder.max_frame = max(conn.hello.max_frame, DEFAULT_MAX_FRAME)
        return conn

    def _hello(self, conn: _Conn, deadline: float | None) -> p.HelloInfo:
        host, port = conn.addr
        rid = conn.next_id()
        frame = p.request_frame(rid, p.HELLO.opcode,
                                p.hello_body(self.client_name, self.client_id))
        try:
            conn.send(frame, deadline)
            r = conn.read_for({rid}, deadline)
        except TimeoutError:
            raise ConnectError(f"{host}:{port}: no answer to HELLO") from None
        except ConnectionLost as e:
            cause = e.__cause__
            if isinstance(cause, (ssl.SSLError, OSError)):
                msg = describe_tls_error(cause, sent_cert=self._sent_cert)
            else:
                msg = closed_during_hello(sent_cert=self._sent_cert)
            raise ConnectError(f"{host}:{port}: {msg}") from None
        return p.parse_hello(r.value())

    def ensure_connected(self, deadline: float | None = None) -> None:
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        self._connection(deadline)

    def _connection(self, deadline: float | None) -> _Conn:
        if self._conn is not None:
            return self._conn
        candidates: list[Addr] = []
        if self._preferred is not None:
            candidates.append(self._preferred)
        n = len(self.endpoints)
        candidates += [self.endpoints[(self._rotate + i) % n] for i in range(n)]
        errors: list[str] = []
        for addr in dict.fromkeys(candidates):
            try:
                self._conn = self._open(addr, deadline)
                return self._conn
            except ConnectError as e:
                errors.append(str(e))
                if addr == self._preferred:
                    self._preferred = None
            except TimeoutError:
                errors.append(f"{p.format_endpoint(addr)}: deadline passed")
                break
        raise ConnectError("could not connect: " + "; ".join(errors),
                           permanent=bool(errors) and all(
                               is_permanent(e.split(": ", 1)[-1]) for e in errors))

    def _drop(self, *, rotate: bool = False) -> None:
        self.close()
        if rotate:
            self._rotate += 1

    # -- requests -------------------------------------------------------------------------------
    def call(self, op: str | int, /, *, timeout: float | None = None,
             headers: Mapping[str, str] | None = None, **body: Any) -> Any:
        """Send one request; answer its result or raise the matching error. `timeout` (seconds,
        default the client's) bounds the call, retries included."""
        return self.call_body(op, body, timeout=timeout, headers=headers)

    def call_body(self, op: str | int, body: Mapping[str, Any], *,
                  timeout: float | None = None,
                  headers: Mapping[str, str] | None = None) -> Any:
        mt, clean = p.prepare(op, body)
        seq = self._seq.next_seq() if mt.is_write else 0
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        hdrs = {**self.headers, **(headers or {})}
        last: BaseException | None = None
        unknown = False  # a write of ours may have reached a server
        for attempt in range(max(1, self.retry.attempts)):
            if attempt:
                pause = self.retry.delay_for(last, attempt - 1)
                if time.monotonic() + pause >= deadline:
                    break
                time.sleep(pause)
            try:
                return self._attempt(mt, clean, seq, deadline, hdrs)
            except ConnectError as e:
                if e.permanent:
                    raise
                last = e
            except ConnectionLost as e:
                if mt.is_write:
                    unknown = True
                    if not self.resend_unknown_writes:
                        raise IndeterminateError(f"{mt.name}: {e}") from None
                last = e
            except TimeoutError:
                self._drop()
                raise p.timeout_error(mt, True, limit) from None
            except (NotLeader, Unavailable, Busy) as e:
                last = e
        if unknown:
            raise IndeterminateError(f"{mt.name}: {last}")
        if isinstance(last, (LoomError, ConnectError)):
            raise last
        raise p.timeout_error(mt, unknown, limit)

    def _attempt(self, mt: MessageType, body: dict[str, Any], seq: int,
                 deadline: float, headers: dict[str, str]) -> Any:
        conn = self._connection(deadline)
        rid = conn.next_id()
        frame = p.request_frame(rid, mt.opcode, body, seq=seq, headers=headers)
        try:
            conn.send(frame, deadline)
            r = conn.read_for({rid}, deadline)
        except (ConnectionLost, ProtocolError):
            self._drop(rotate=True)
            raise
        if r.error is not None:
            self._after_error(r.error)
            if isinstance(r.error, Timeout) and mt.is_write:
                raise IndeterminateError(f"{mt.name}: {r.error.message}") from r.error
        return r.value()

    def _after_error(self, err: LoomError) -> None:
        if isinstance(err, NotLeader):
            hint = p.leader_hint(err)
            self._preferred = hint
            self._drop(rotate=hint is None)
        elif isinstance(err, Unavailable):
            self._drop(rotate=True)

    def pipeline(self, calls: Sequence[tuple[str | int, Mapping[str, Any]]], *,
                 timeout: float | None = None) -> list[Any]:
        """Write every request, then read every answer. Returns one entry per call, in order:
        the result, or the LoomError instance the server answered with. Requests refused with
        NOT_LEADER/BUSY/UNAVAILABLE are sent again (writes with the same seq)."""
        prepared = [p.prepare(op, body) for op, body in calls]
        seqs = [self._seq.next_seq() if mt.is_write else 0 for mt, _ in prepared]
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        results: list[Any] = [None] * len(prepared)
        todo = list(range(len(prepared)))
        last: LoomError | None = None
        for attempt in range(max(1, self.retry.attempts)):
            if attempt:
                time.sleep(min(self.retry.delay_for(last, attempt - 1),
                               max(0.0, deadline - time.monotonic())))
            conn = self._connection(deadline)
            ids: dict[int, int] = {}
            out = bytearray()
            for i in todo:
                rid = conn.next_id()
                ids[rid] = i
                mt, body = prepared[i]
                out += p.request_frame(rid, mt.opcode, body, seq=seqs[i], headers=self.headers)
            try:
                conn.send(bytes(out), deadline)
                waiting = set(ids)
                while waiting:
                    r = conn.read_for(waiting, deadline)
                    waiting.discard(r.request_id)
                    results[ids[r.request_id]] = r.error if r.error is not None else r.result
            except TimeoutError:
                self._drop()
                raise p.timeout_error(prepared[todo[0]][0], True, limit) from None
            except ConnectionLost as e:
                self._drop(rotate=True)
                raise IndeterminateError(f"pipeline: {e}") from None
            retry = [i for i in todo if isinstance(results[i], (NotLeader, Busy, Unavailable))]
            if not retry:
                return results
            last = results[retry[0]]
            assert isinstance(last, LoomError)
            self._after_error(last)
            todo = retry
        return results

    def subscribe(self, topic: str, from_seq: int | None = None, *,
                  timeout: float | None = None) -> Iterator[Any]:
        """Yield the topic's pushed payloads on a dedicated connection until closed.

        `timeout` bounds the wait for each message (None: wait forever)."""
        mt, body = p.prepare("TOPIC_SUBSCRIBE", {"name": topic, "from_seq": from_seq})
        deadline = time.monotonic() + self.timeout
        conn = self._dedicated(deadline)
        try:
            rid = conn.next_id()
            conn.send(p.request_frame(rid, mt.opcode, body, headers=self.headers), deadline)
            conn.read_for({rid}, deadline).value()
            while True:
                d = None if timeout is None else time.monotonic() + timeout
                try:
                    r = conn.read(d)
                except TimeoutError:
                    raise Timeout(f"no message on topic {topic!r} within {timeout:g}s") from None
                except ConnectionLost as e:
                    raise ConnectError(f"subscription to {topic!r} ended: {e}") from None
                if r.request_id != rid:
                    continue
                if r.error is not None:
                    raise r.error
                if r.push:
                    yield r.payload
        finally:
            conn.close()

    def _dedicated(self, deadline: float) -> _Conn:
        addr = self._conn.addr if self._conn is not None else None
        if addr is None:
            self._connection(deadline)
            assert self._conn is not None
            addr = self._conn.addr
        return self._open(addr, deadline)
