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
from loom.client.breaker import BreakerPolicy
from loom.client.errors import ConnectError, IndeterminateError, ProtocolError
from loom.client.ops import Ops
from loom.client.protocol import Addr, ConnectionLost
from loom.client.tls import closed_during_hello, describe_tls_error, make_context
from loom.wire.catalog import MessageType
from loom.wire.errors import LoomError, Timeout, TooLarge
from loom.wire.session import RemoteProtocolError, Session


class _Conn:
    def __init__(self, sock: ssl.SSLSocket, addr: Addr, session: Session) -> None:
        self.sock = sock
        self.addr = addr
        self.session = session
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
        payload = self.read_payload(deadline)
        try:
            return p.parse_response(payload)
        except ProtocolError as e:
            raise ConnectionLost(f"protocol error: {e}") from None

    def read_payload(self, deadline: float | None) -> bytes:
        """The next frame's payload. A stream that breaks the framing, like one that breaks the
        protocol (`read`), ends as a lost connection: nothing after it can be trusted."""
        while True:
            try:
                payload = self.session.next_payload()
            except RemoteProtocolError as e:
                raise ConnectionLost(f"protocol error: {e}") from None
            if payload is not None:
                return payload
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
            self.session.receive_data(data)
            if not data:
                raise ConnectionLost("the server closed the connection")

    def read_for(self, wanted: set[int], deadline: float | None) -> p.Response:
        """The next answer to one of `wanted` (pushes and stale answers are skipped)."""
        while True:
            r = self.read(deadline)
            if not r.push and r.request_id in wanted:
                return r
            if r.request_id == 0 and r.error is not None:
                # The server's last word before it closes a stream it cannot read on.
                raise ConnectionLost(f"the server closed the connection: {r.error}")

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
    move it to the leader. The keyword arguments are `protocol.Options`' fields.
    """

    def __init__(
        self, endpoints: str | Sequence[str], *, ca: str | Path,
        cert: str | Path | None = None, key: str | Path | None = None,
        key_passphrase_file: str | Path | None = None, client_name: str | None = None,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None, retry: p.RetryPolicy | None = None,
        server_hostname: str | None = None, check_hostname: bool | None = None,
        client_id: str | None = None, resend_unknown_writes: bool | None = None,
        max_writes_in_flight: int | None = None, connect_timeout: float | None = None,
        breaker: BreakerPolicy | None = None,
    ) -> None:
        self.options = o = p.Options.build(
            endpoints, ca=ca, cert=cert, key=key, key_passphrase_file=key_passphrase_file,
            client_name=client_name, timeout=timeout,
            headers=headers, retry=retry, server_hostname=server_hostname,
            check_hostname=check_hostname, client_id=client_id,
            resend_unknown_writes=resend_unknown_writes,
            max_writes_in_flight=max_writes_in_flight, connect_timeout=connect_timeout,
            breaker=breaker)
        self._ctx = make_context(o.ca, o.cert, o.key, check_hostname=o.check_hostname,
                                 key_passphrase_file=o.key_passphrase_file)
        self._window = p.WriteWindow(o.max_writes_in_flight)
        self._router = p.Router(o.endpoints, o.breaker)
        self._conn: _Conn | None = None

    @property
    def timeout(self) -> float:
        return self.options.timeout

    @property
    def client_id(self) -> str:
        return self.options.client_id

    @property
    def endpoints(self) -> list[Addr]:
        return list(self.options.endpoints)

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

    def statistics(self) -> p.ClientStatistics:
        """Each endpoint's circuit breaker, and the dials it spared."""
        return self._router.statistics(time.monotonic())

    @property
    def address(self) -> str | None:
        return None if self._conn is None else p.format_endpoint(self._conn.addr)

    # -- connections ----------------------------------------------------------------------------
    def _open(self, addr: Addr, deadline: float | None) -> _Conn:
        where = p.format_endpoint(addr)
        sent_cert = self.options.sent_cert
        try:
            left = _remaining(deadline)
            wait = (self.options.connect_timeout if left is None
                    else min(left, self.options.connect_timeout))
            raw = socket.create_connection(addr, timeout=wait)
        except TimeoutError:
            raise ConnectError(f"{where}: connect timed out") from None
        except OSError as e:
            raise ConnectError(f"{where}: {e.strerror or e}") from None
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock = self._ctx.wrap_socket(
                raw, server_hostname=self.options.server_hostname or addr[0])
        except TimeoutError:
            raw.close()
            raise ConnectError(f"{where}: TLS handshake timed out") from None
        except OSError as e:  # ssl.SSLError included
            raw.close()
            raise ConnectError(f"{where}: {describe_tls_error(e, sent_cert=sent_cert)}"
                               ) from None
        conn = _Conn(sock, addr, p.new_session(self.options, now=time.monotonic()))
        try:
            conn.send(p.hello_frame(self.options), deadline)
            conn.hello = p.accept_hello(conn.read_payload(deadline))
        except TimeoutError:
            conn.close()
            raise ConnectError(f"{where}: no answer to HELLO") from None
        except ConnectionLost as e:
            conn.close()
            cause = e.__cause__
            msg = (describe_tls_error(cause, sent_cert=sent_cert)
                   if isinstance(cause, OSError) else closed_during_hello(sent_cert=sent_cert))
            raise ConnectError(f"{where}: {msg}") from None
        except BaseException:
            conn.close()
            raise
        conn.next_id()  # HELLO used the first id
        conn.session.hello_accepted(p.answer_limit(conn.hello))
        return conn

    def ensure_connected(self, deadline: float | None = None) -> None:
        if deadline is None:
            deadline = time.monotonic() + self.options.timeout
        self._connection(deadline)

    def _connection(self, deadline: float | None) -> _Conn:
        if self._conn is not None:
            return self._conn
        errors: list[str] = []
        for addr in self._router.candidates(time.monotonic()):
            try:
                self._router.dialing(addr, time.monotonic())
                self._conn = self._open(addr, deadline)
                self._router.connected(addr)
                return self._conn
            except ConnectError as e:
                errors.append(str(e))
                self._router.dial_failed(addr, time.monotonic())
            except TimeoutError:
                errors.append(f"{p.format_endpoint(addr)}: deadline passed")
                self._router.abandoned(addr)
                break
        raise p.connect_failure(errors)

    # -- requests -------------------------------------------------------------------------------
    def call(self, op: str | int, /, *, timeout: float | None = None,
             headers: Mapping[str, str] | None = None, stale: bool = False,
             **body: Any) -> Any:
        """Send one request; answer its result or raise the matching error. `timeout` (seconds,
        default the client's) bounds the call, retries included. `stale=True` (reads only) lets
        whichever node is asked answer from its own replica."""
        return self.call_body(op, body, timeout=timeout, headers=headers, stale=stale)

    def call_body(self, op: str | int, body: Mapping[str, Any], *,
                  timeout: float | None = None,
                  headers: Mapping[str, str] | None = None, stale: bool = False) -> Any:
        mt, clean = p.prepare(op, body)
        limit = self.options.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        hdrs = {**self.options.headers, **(headers or {})}
        seq = self._window.issue() if mt.is_write else 0
        attempts = p.Attempts(mt, self.options.retry, resend=self.options.resend_unknown_writes)
        try:
            while (pause := attempts.pause()) is not None:
                if pause:
                    if time.monotonic() + pause >= deadline:
                        break  # the deadline would pass while waiting: report the last failure
                    time.sleep(pause)
                try:
                    result = self._attempt(mt, clean, seq, deadline, hdrs, attempts, stale)
                except ConnectError as e:
                    attempts.connect_failed(e)
                    continue
                except ConnectionLost as e:
                    attempts.lost(str(e))
                    continue
                except TimeoutError:
                    if self._conn is not None:
                        self._router.timed_out(self._conn.addr, time.monotonic())
                    self.close()
                    raise attempts.timed_out(limit) from None
                if result is not p.RETRY:
                    return result
            raise attempts.exhausted()
        finally:
            if seq:
                self._window.finish(seq)

    def _attempt(self, mt: MessageType, body: dict[str, Any], seq: int, deadline: float,
                 headers: dict[str, str], attempts: p.Attempts, stale: bool) -> Any:
        conn = self._connection(deadline)
        rid = conn.next_id()
        frame = p.request_frame(rid, mt.opcode, body, seq=seq, headers=headers, stale=stale)
        assert conn.hello is not None
        p.check_frame_size(mt, frame, conn.hello.max_frame)
        try:
            attempts.sending()
            conn.send(frame, deadline)
            r = conn.read_for({rid}, deadline)
        except ConnectionLost:
            self._lost(conn)
            raise
        if r.error is not None:
            self._after_error(conn, r.error)
        return attempts.answered(r)

    def _lost(self, conn: _Conn) -> None:
        """The connection broke: the next attempt starts with the endpoint after it."""
        self._router.lost(conn.addr)
        self.close()

    def _after_error(self, conn: _Conn, err: LoomError) -> None:
        if self._router.refused(conn.addr, err):
            self.close()

    def pipeline(self, calls: Sequence[tuple[str | int, Mapping[str, Any]]], *,
                 timeout: float | None = None) -> list[Any]:
        """Write every request, then read every answer. Returns one entry per call, in order:
        the result, or the LoomError instance the server answered with. Requests refused with
        NOT_LEADER/BUSY/UNAVAILABLE, or lost with the connection, are sent again (writes with
        the same seq). At most `max_writes_in_flight` writes are outstanding: longer pipelines
        are sent in consecutive chunks. Raises IndeterminateError when a write is left without
        an answer."""
        prepared = [p.prepare(op, body) for op, body in calls]
        limit = self.options.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        results: list[Any] = [None] * len(prepared)
        start = 0
        while start < len(prepared):
            end, writes = start, 0
            while end < len(prepared) and (writes < self._window.size
                                           or not prepared[end][0].is_write):
                writes += prepared[end][0].is_write
                end += 1
            chunk = list(range(start, end))
            seqs = {i: self._window.issue() for i in chunk if prepared[i][0].is_write}
            try:
                self._pipeline_chunk(prepared, seqs, chunk, results, deadline, limit)
            finally:
                for s in seqs.values():
                    self._window.finish(s)
            start = end
        return results

    def _pipeline_chunk(self, prepared: list[tuple[MessageType, dict[str, Any]]],
                        seqs: dict[int, int], chunk: list[int], results: list[Any],
                        deadline: float, limit: float) -> None:
        """Send the chunk's requests in rounds until each one is settled. Each request keeps
        its own `Attempts`, so a pipeline decides what an answer, a refusal or a lost
        connection means exactly as `call` does; only the pacing of rounds is shared."""
        policy = self.options.retry
        tries = {i: p.Attempts(prepared[i][0], policy,
                               resend=self.options.resend_unknown_writes) for i in chunk}
        todo = list(chunk)  # not settled yet: never answered, or refused with a retryable error
        refused: set[int] = set()  # of `todo`, those last answered with a retryable refusal
        last: BaseException | None = None
        for n in range(max(1, policy.attempts)):
            if n:
                pause = policy.delay_for(last, n - 1)
                if time.monotonic() + pause >= deadline:
                    break
                time.sleep(pause)
            try:
                conn = self._connection(deadline)
            except ConnectError as e:
                for i in todo:
                    tries[i].connect_failed(e)
                last = e
                continue
            assert conn.hello is not None
            ids: dict[int, int] = {}
            out = bytearray()
            for i in list(todo):
                rid = conn.next_id()
                mt, body = prepared[i]
                frame = p.request_frame(rid, mt.opcode, body, seq=seqs.get(i, 0),
                                        headers=self.options.headers)
                try:
                    p.check_frame_size(mt, frame, conn.hello.max_frame)
                except TooLarge as e:  # refused here, never sent: a definite answer
                    results[i] = e
                    todo.remove(i)
                    continue
                tries[i].sending()
                ids[rid] = i
                out += frame
            retry: list[int] = []
            try:
                conn.send(bytes(out), deadline)
                while ids:
                    r = conn.read_for(set(ids), deadline)
                    i = ids.pop(r.request_id)
                    try:
                        value = tries[i].answered(r)
                    except LoomError as e:  # definite (or a write's TIMEOUT): its result
                        value = e
                    if value is p.RETRY:
                        retry.append(i)
                        value = r.error
                    results[i] = value
            except TimeoutError:
                self.close()
                errors = [tries[i].timed_out(limit) for i in ids.values()]
                raise next((e for e in errors if isinstance(e, IndeterminateError)),
                           Timeout(f"pipeline: no answer within {limit:g}s")) from None
            except ConnectionLost as e:
                self._lost(conn)
                for i in ids.values():
                    tries[i].lost(str(e))  # raises for a sent write without resending
                last = ConnectError(str(e))
                todo, refused = sorted(set(ids.values()) | set(retry)), set(retry)
                continue
            if not retry:
                return
            last = results[retry[0]]
            assert isinstance(last, LoomError)
            self._after_error(conn, last)
            todo, refused = retry, set(retry)
        # Out of attempts or time. A request never answered fails the pipeline (indeterminate
        # for a write that may have arrived); one last refused keeps its refusal as its result,
        # unless an earlier attempt of it was lost (then it is indeterminate).
        unanswered = [tries[i].exhausted() for i in todo if i not in refused]
        if unanswered:
            raise next((e for e in unanswered if isinstance(e, IndeterminateError)),
                       unanswered[0])
        for i in todo:
            results[i] = tries[i].exhausted()

    def subscribe(self, topic: str, from_seq: int | None = None, *,
                  timeout: float | None = None) -> Iterator[Any]:
        """Yield the topic's pushed payloads on a dedicated connection until closed.

        `timeout` bounds the wait for each message (None: wait forever)."""
        mt, body = p.prepare("TOPIC_SUBSCRIBE", {"name": topic, "from_seq": from_seq})
        deadline = time.monotonic() + self.options.timeout
        conn = self._dedicated(deadline)
        try:
            rid = conn.next_id()
            conn.send(p.request_frame(rid, mt.opcode, body, headers=self.options.headers), deadline)
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
