"""A tiny real TLS 1.3 server speaking Loom frames, scripted per test (threads, stdlib ssl)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme

from loom.wire.codec import DEFAULT_MAX_FRAME, FrameDecoder, decode_payload, encode
from loom.wire.errors import Status

Frame = dict[str, Any]
Handler = Callable[["FakeServer", Frame], list[Frame] | None]


@dataclass
class Pki:
    ca: trustme.CA
    dir: Path
    ca_file: Path
    client_cert: Path
    client_key: Path

    def server_context(self, require_client_cert: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        self.ca.configure_trust(ctx)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
        return ctx


def make_pki(tmp: Path) -> Pki:
    ca = trustme.CA()
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    leaf = ca.issue_cert("client.example")
    cert, key = tmp / "client.pem", tmp / "client.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)  # a private key readable by others is refused (security/tls.py)
    return Pki(ca, tmp, ca_file, cert, key)


def ok(req: Frame, result: Any) -> Frame:
    return {"id": req["id"], "s": 0, "r": result}


def err(req: Frame, status: Status, msg: str, **details: Any) -> Frame:
    return {"id": req["id"], "s": int(status), "e": {"code": status.name, "msg": msg, **details}}


HELLO_RESULT = {"version": 1, "node": "n1", "max_frame": 1 << 20, "principal": "client",
                "roles": ["admin"]}


@dataclass
class FakeServer:
    ctx: ssl.SSLContext
    handler: Handler
    requests: list[Frame] = field(default_factory=list)
    hellos: list[Frame] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self.errors: list[BaseException] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            raw.settimeout(None)
            t = threading.Thread(target=self._serve, args=(raw,), daemon=True)
            with self._lock:
                self._threads.append(t)
            t.start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            s = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        with self._lock:
            self._conns.append(s)
        dec = FrameDecoder(DEFAULT_MAX_FRAME)
        try:
            while not self._stop.is_set():
                data = s.recv(65536)
                if not data:
                    return
                dec.feed(data)
                while (payload := dec.next_payload()) is not None:
                    req = decode_payload(payload)
                    if req.get("op") == 1:
                        self.hellos.append(req)
                        s.sendall(encode(ok(req, HELLO_RESULT)))
                        continue
                    with self._lock:
                        self.requests.append(req)
                        out = self.handler(self, req)
                    if out is None:  # drop the connection without answering
                        s.shutdown(socket.SHUT_RDWR)
                        return
                    for frame in out:
                        s.sendall(encode(frame))
        except (OSError, ssl.SSLError):
            return
        except BaseException as e:  # surfaced by close()
            self.errors.append(e)
        finally:
            s.close()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in list(self._threads):
            t.join(timeout=5)
        if self.errors:
            raise self.errors[0]


def kv_handler(server: FakeServer, req: Frame) -> list[Frame] | None:
    """A one-node map: enough of MAP_* for the CLI and client tests."""
    store: dict[tuple[str, str], bytes] = server.state.setdefault("store", {})
    op, b = req["op"], req.get("b", {})
    if op == 0x0101:  # MAP_PUT
        store[(b["name"], b["key"])] = b["value"]
        return [ok(req, None)]
    if op == 0x0102:  # MAP_GET
        return [ok(req, store.get((b["name"], b["key"])))]
    if op == 0x0103:  # MAP_DELETE
        return [ok(req, store.pop((b["name"], b["key"]), None) is not None)]
    if op == 0x0002:  # PING
        return [ok(req, {"pong": True, "node": "n1"})]
    if op == 0x0F04:  # ACL_GET
        return [err(req, Status.FORBIDDEN, "client may not ACL_GET")]
    return [err(req, Status.BAD_REQUEST, f"unhandled op {op}")]
