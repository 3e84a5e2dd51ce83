"""Helpers for peer-plane tests: real transports on 127.0.0.1 port 0 with real mTLS, raw TLS
peers speaking frames directly, and a recording `on_message`."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from loom.node.peer import PeerLimits, PeerTransport
from loom.raft.messages import Message
from loom.security import devpki
from loom.security.tls import peer_client_context, peer_server_context
from loom.wire.codec import FrameDecoder, encode
from tests.conftest import PKI

TD = "loom.dev"
CLUSTER = "test-cluster"
MEMBERS = ("n1", "n2", "n3")


def node_cert(pki: PKI, d: Path, name: str) -> Path:
    """`d` holding NAME.pem / NAME.key: a valid node certificate of the test CA for `name`."""
    ca = x509.load_pem_x509_certificate((pki.dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((pki.dir / "ca.key").read_bytes(), None)
    cert, key = devpki.issue_cert(ca, ca_key, role="node", name=name)  # type: ignore[arg-type]
    devpki.write_cert(d / f"{name}.pem", cert)
    devpki.write_key(d / f"{name}.key", key)
    return d


@pytest.fixture(scope="session")
def n9(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding n9.pem / n9.key: a valid node certificate of a non-member."""
    return node_cert(pki, tmp_path_factory.mktemp("n9"), "n9")


@dataclass
class Inbox:
    msgs: list[Message] = field(default_factory=list)

    def __call__(self, m: Message) -> None:
        self.msgs.append(m)

    async def wait(self, pred: Callable[[list[Message]], bool], timeout: float = 10) -> None:
        with trio.fail_after(timeout):
            while not pred(self.msgs):
                await trio.sleep(0.01)


@dataclass
class Peer:
    """One transport under test, cancellable on its own."""

    t: PeerTransport
    inbox: Inbox
    members: set[str]
    scope: trio.CancelScope

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.t.port}"

    def stat(self, peer: str) -> dict[str, Any]:
        st: dict[str, Any] = self.t.statistics().peers.get(peer, {})
        return st


async def _scoped(t: PeerTransport, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    with trio.CancelScope() as cs:
        async with trio.open_nursery() as n:
            await n.start(t.run)
            task_status.started(cs)


async def start_peer(nursery: trio.Nursery, pki: PKI, node_id: str, *,
                     peers: dict[str, str] | None = None, members: set[str] | None = None,
                     limits: PeerLimits | None = None) -> Peer:
    pem, key = pki.pair(node_id)
    inbox = Inbox()
    mem = set(MEMBERS) if members is None else members
    t = PeerTransport(
        node_id=node_id, cluster=CLUSTER, listen="127.0.0.1:0", peers=peers or {},
        client_addr=f"client-of-{node_id}:7000",
        server_ctx=peer_server_context(pki.ca, pem, key),
        client_ctx=peer_client_context(pki.ca, pem, key), trust_domain=TD,
        is_member=mem.__contains__, on_message=inbox, limits=limits or PeerLimits(),
    )
    scope = await nursery.start(_scoped, t)
    return Peer(t, inbox, mem, scope)


async def wait_until(pred: Callable[[], bool], timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.01)


def client_ctx(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A TLS 1.3 client context that verifies the server but checks no name (like a peer)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(ca))
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


class RawPeer:
    """A hand-driven TLS connection to a peer listener, for adversarial tests."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.next_id = 1

    @classmethod
    async def connect(cls, port: int, ctx: ssl.SSLContext) -> RawPeer:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        return cls(trio.SSLStream(tcp, ctx, server_hostname=None))

    async def send_frame(self, op: int, body: dict[str, Any]) -> None:
        frame = {"v": 1, "id": self.next_id, "op": op, "b": body}
        self.next_id += 1
        await self.stream.send_all(encode(frame))

    async def try_send(self, data: bytes) -> bool:
        """Send, reporting whether the stream took it (a refused peer may break it)."""
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError, OSError):
            return False
        return True

    async def wait_closed(self, timeout: float = 10) -> None:
        """Read until the server closes (EOF or a TLS alert); anything else is a failure."""
        dec = FrameDecoder(1 << 20)
        with trio.fail_after(timeout):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, ssl.SSLError, OSError):
                    return
                if not data:
                    return
                dec.feed(data)
                assert dec.next_payload() is None, "the peer listener must never answer"

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)
