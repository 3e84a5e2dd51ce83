"""Shared fixtures: a real development PKI, real in-process nodes on loopback, raw TLS clients.

Nodes started here listen on 127.0.0.1 port 0 (a free port), use real certificates and real TLS,
and stop with the test's nursery.
"""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, settings

from loom.cli.loomd import EXAMPLE_ACL
from loom.client.protocol import hello_body
from loom.node.config import AuditConfig, NodeConfig, TLSConfig
from loom.node.server import Node
from loom.security import devpki
from loom.security.tls import client_context
from loom.wire import catalog
from loom.wire.codec import FrameDecoder, decode_payload, encode

# The suite shares 2 cores with whatever else runs: no property test may fail because the
# machine was slow (per-example deadlines, slow input generation). What each test checks is
# unchanged; a test that needs a different budget sets its own @settings.
settings.register_profile("loom", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("loom")

# The HTTP-door cluster fixtures (`hcluster`, `audited_hcluster`), shared by several directories.
pytest_plugins = ["tests.doorcluster"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--soak", action="store_true", help="run soak/chaos tests (long)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip = pytest.mark.skip(reason="soak test: run with --soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@dataclass(frozen=True)
class PKI:
    dir: Path
    other: Path  # a second, unrelated CA with its own "admin" client certificate

    def pair(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.pem", self.dir / f"{name}.key"

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"


def _write_pair(out: Path, name: str, cert: Any, key: Any) -> None:
    devpki.write_cert(out / f"{name}.pem", cert)
    devpki.write_key(out / f"{name}.key", key)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    devpki.create_dev_pki(d)
    ca = devpki.x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    ca_key = devpki.serialization.load_pem_private_key((d / "ca.key").read_bytes(), None)
    now = dt.datetime.now(dt.UTC)
    cert, key = devpki.issue_cert(ca, ca_key, role="client", name="expired",
                                  not_before=now - dt.timedelta(days=10),
                                  not_after=now - dt.timedelta(days=1))
    _write_pair(d, "expired", cert, key)
    cert, key = devpki.issue_cert(ca, ca_key, role="client", name="future",
                                  not_before=now + dt.timedelta(days=1),
                                  not_after=now + dt.timedelta(days=10))
    _write_pair(d, "future", cert, key)
    # the gateway's name with the client role: must never be trusted as the gateway
    cert, key = devpki.issue_cert(ca, ca_key, role="client", name="edge")
    _write_pair(d, "client-edge", cert, key)
    other = tmp_path_factory.mktemp("other-pki")
    oca, oca_key = devpki.new_ca(common_name="Some other CA")
    devpki.write_cert(other / "ca.pem", oca)
    cert, key = devpki.issue_cert(oca, oca_key, role="client", name="admin")
    _write_pair(other, "admin", cert, key)
    return PKI(d, other)


TEST_ACL: dict[str, Any] = {
    **EXAMPLE_ACL,
    "principals": {
        **EXAMPLE_ACL["principals"],
        "spiffe://loom.dev/client/edge": ["admin"],  # a client named like the gateway: no trust
    },
    "users": {"alice": ["reader"]},
}


class MemorySink:
    """Audit sink keeping JSON lines in memory (the pipeline in front of it is the real one)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write_lines(self, lines: list[str]) -> None:
        self.lines.extend(lines)

    def close(self) -> None:
        pass

    def records(self) -> list[dict[str, Any]]:
        import json

        return [json.loads(x) for x in self.lines]


def make_config(pki: PKI, tmp_path: Path, **kw: Any) -> NodeConfig:
    cfg = NodeConfig(
        node_id="n1", data_dir=tmp_path / "data", client_listen="127.0.0.1:0",
        tls=TLSConfig(ca=pki.ca, cert=pki.dir / "n1.pem", key=pki.dir / "n1.key"),
        audit=AuditConfig(sink="off"),
        gateway_identities=("spiffe://loom.dev/gateway/edge",),
        acl=TEST_ACL,
    )
    return replace(cfg, **kw)


NodeFactory = Callable[..., Any]


@pytest.fixture
async def start_node(nursery: trio.Nursery, pki: PKI, tmp_path: Path) -> NodeFactory:
    """`node = await start_node(**config overrides)`; the node's audit sink is `node.sink`."""

    async def start(**kw: Any) -> Node:
        sink = kw.pop("sink", None) or MemorySink()
        node = Node(make_config(pki, tmp_path, **kw), audit_sink=sink)
        node.sink = sink  # type: ignore[attr-defined]
        await nursery.start(node.run)
        return node

    return start


@pytest.fixture
async def node(start_node: NodeFactory) -> Node:
    n: Node = await start_node()
    return n


class RawConn:
    """A minimal real TLS client speaking frames directly, for protocol and security tests."""

    def __init__(self, stream: trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        self.decoder = FrameDecoder(1 << 24)
        self.next_id = 1

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def recv(self, timeout: float = 10) -> dict[str, Any] | None:
        """The next frame, or None at EOF."""
        with trio.fail_after(timeout):
            while True:
                p = self.decoder.next_payload()
                if p is not None:
                    obj = decode_payload(p)
                    assert isinstance(obj, dict)
                    return obj
                data = await self.stream.receive_some(65536)
                if not data:
                    return None
                self.decoder.feed(data)

    async def request(self, op: str, headers: dict[str, str] | None = None, seq: int = 0,
                      **body: Any) -> dict[str, Any]:
        rid = self.next_id
        self.next_id += 1
        frame: dict[str, Any] = {"v": 1, "id": rid, "op": catalog.BY_NAME[op].opcode, "b": body}
        if headers:
            frame["h"] = headers
        if seq:
            frame["q"] = seq
        await self.stream.send_all(encode(frame))
        resp = await self.recv()
        assert resp is not None, f"connection closed while waiting for {op}"
        assert resp["id"] == rid, resp
        return resp

    async def hello(self, client_id: str = "test") -> dict[str, Any]:
        return await self.request("HELLO", **hello_body("tests", client_id))

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


def tls_client_ctx(pki: PKI, name: str | None, *, ca: Path | None = None,
                   certdir: Path | None = None) -> ssl.SSLContext:
    if name is None:
        return client_context(ca or pki.ca)
    d = certdir or pki.dir
    return client_context(ca or pki.ca, d / f"{name}.pem", d / f"{name}.key")


async def connect(node: Node, pki: PKI, name: str | None = "admin", *, hello: bool = True,
                  ctx: ssl.SSLContext | None = None) -> RawConn:
    tcp = await trio.open_tcp_stream("127.0.0.1", node.port)
    stream = trio.SSLStream(tcp, ctx or tls_client_ctx(pki, name), server_hostname="localhost")
    conn = RawConn(stream)
    if hello:
        resp = await conn.hello()
        assert resp["s"] == 0, resp
    return conn


@pytest.fixture
async def admin(node: Node, pki: PKI) -> AsyncIterator[RawConn]:
    c = await connect(node, pki, "admin")
    yield c
    await c.aclose()
