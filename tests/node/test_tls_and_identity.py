"""Listeners and client identity on a real node (SECURITY-CATALOGUE B1, B2, B4, B5)."""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from loom.node.config import ConfigError, NodeConfig, load
from loom.node.server import Node
from loom.wire.codec import encode
from tests.conftest import PKI, NodeFactory, RawConn, make_config, tls_client_ctx
from tests.node.conftest import (
    EDGE_GW_P,
    FORBIDDEN,
    OK,
    UNAUTHENTICATED,
    Dial,
    audit_flushed,
    frame,
    records,
)

HELLO = encode({"v": 1, "id": 1, "op": 1,
                "b": {"client_name": "t", "min_version": 1, "max_version": 1}})


async def _refused(node: Node, ctx: ssl.SSLContext) -> None:
    """A TLS client with `ctx` gets no reply frame: the handshake fails or the server closes."""
    tcp = await trio.open_tcp_stream("127.0.0.1", node.port)
    conn = RawConn(trio.SSLStream(tcp, ctx, server_hostname="localhost"))
    try:
        with trio.fail_after(10):
            await conn.stream.do_handshake()
            await conn.send_raw(HELLO)
            got = await conn.recv()
    except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
        got = None
    finally:
        await conn.aclose()
    assert got is None, f"the server answered: {got}"


async def _still_serves(dial: Dial, node: Node) -> None:
    c = await dial(node, "admin")
    assert (await c.request("PING"))["s"] == OK


async def test_plaintext_on_client_port_gets_no_frame(node: Node, dial: Dial) -> None:
    tcp = await trio.open_tcp_stream("127.0.0.1", node.port)
    received = b""
    try:
        await tcp.send_all(HELLO + frame("PING", rid=2))
        with trio.fail_after(10):
            for _ in range(100):
                try:
                    data = await tcp.receive_some(65536)
                except trio.BrokenResourceError:
                    break
                if not data:
                    break
                received += data
            else:
                raise AssertionError("the server kept sending")
    finally:
        await tcp.aclose()
    # Nothing but (at most) a TLS alert record (content type 21): never a reply frame.
    assert received == b"" or received[0] == 0x15, received[:32]
    await _still_serves(dial, node)


async def test_connections_reset_at_once_leave_the_listener_serving(node: Node,
                                                                    dial: Dial) -> None:
    # Each connection is reset (SO_LINGER 0) right after connect, mid-ClientHello or before it:
    # the node must drop each one alone and keep its slots.
    for i in range(30):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await trio.to_thread.run_sync(s.connect, ("127.0.0.1", node.port))
        if i % 2:
            s.send(b"\x16\x03\x01\x02\x00")  # the start of a TLS record, then nothing
        s.close()
    await _still_serves(dial, node)
    with trio.fail_after(10):  # every reset connection gave its slot back (one is still open)
        while node.clients.statistics().connections > 1:
            await trio.sleep(0.01)


async def test_tls12_client_refused(node: Node, pki: PKI, dial: Dial) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(pki.ca))
    ctx.load_cert_chain(str(pki.dir / "admin.pem"), str(pki.dir / "admin.key"))
    tcp = await trio.open_tcp_stream("127.0.0.1", node.port)
    stream = trio.SSLStream(tcp, ctx, server_hostname="localhost")
    with pytest.raises(trio.BrokenResourceError), trio.fail_after(10):
        await stream.do_handshake()
    await trio.aclose_forcefully(stream)
    await _still_serves(dial, node)


async def test_no_client_certificate_when_required(node: Node, pki: PKI, dial: Dial) -> None:
    await _refused(node, tls_client_ctx(pki, None))
    await _still_serves(dial, node)


@pytest.mark.parametrize("require", [True, False])
@pytest.mark.parametrize("cert", ["other-ca-admin", "expired", "future"])
async def test_untrusted_or_invalid_cert_refused(cert: str, require: bool,
                                                 start_node: NodeFactory, pki: PKI,
                                                 dial: Dial) -> None:
    """Refused in both modes: an optional-auth node never downgrades a bad cert to guest."""
    node = await start_node(require_client_auth=require)
    if cert == "other-ca-admin":
        ctx = tls_client_ctx(pki, "admin", certdir=pki.other)
    else:
        ctx = tls_client_ctx(pki, cert)
    await _refused(node, ctx)
    await _still_serves(dial, node)


async def test_guest_mode(start_node: NodeFactory, dial: Dial) -> None:
    node = await start_node(require_client_auth=False)
    g = await dial(node, None)
    r = await g.request("WHOAMI")
    assert r["s"] == OK and r["r"]["principal"] == "guest", r
    assert r["r"]["roles"] == ["guest"]
    assert (await g.request("PING"))["s"] == OK
    before = node.state.snapshot()
    for op, body in [("MAP_PUT", {"name": "m", "key": "k", "value": b"v"}),
                     ("MAP_GET", {"name": "m", "key": "k"}), ("ACL_GET", {})]:
        r = await g.request(op, **body)
        assert r["s"] == FORBIDDEN, (op, r)
    assert node.state.snapshot() == before
    # A guest asserting an identity is refused, not trusted.
    r = await g.request("WHOAMI", headers={"X-Auth-User": "alice", "X-Auth-Roles": "admin"})
    assert r["s"] == UNAUTHENTICATED, r
    # Certificate holders on the same node keep their own identity.
    a = await dial(node, "admin")
    r = await a.request("WHOAMI")
    assert r["r"]["principal"] == "spiffe://loom.dev/client/admin"


async def test_client_cert_named_like_gateway_is_not_a_gateway(node: Node, dial: Dial) -> None:
    c = await dial(node, "client-edge")
    r = await c.request("WHOAMI")
    assert r["r"]["principal"] == "spiffe://loom.dev/client/edge"
    assert r["r"]["principal"] != EDGE_GW_P
    before = node.state.snapshot()
    r = await c.request("MAP_PUT", headers={"X-Auth-User": "alice", "X-Auth-Roles": "reader"},
                        name="m", key="k", value=b"v")
    assert r["s"] == UNAUTHENTICATED, r
    r = await c.request("WHOAMI", headers={"X-Auth-User": "alice"})
    assert r["s"] == UNAUTHENTICATED, r
    assert node.state.snapshot() == before
    await audit_flushed(node)
    refused = [x for x in records(node) if x.get("event") == "identity_assertion_refused"]
    assert [x["command"] for x in refused] == ["MAP_PUT", "WHOAMI"], refused
    for x in refused:
        assert x["principal"] == "spiffe://loom.dev/client/edge", x
        assert x["result"] in ("denied", "unauthenticated"), x


def test_guest_mode_refuses_non_loopback_bind() -> None:
    for host in ("0.0.0.0:0", "[::]:0", "192.0.2.1:6001", "example.com:6001"):
        with pytest.raises(ConfigError, match="require_client_auth"):
            load(None, {"require_client_auth": False, "client_listen": host})
        cfg = load(None, {"require_client_auth": False, "client_listen": host,
                          "allow_insecure_guest_bind": True})
        assert cfg.allow_insecure_guest_bind
    for host in ("127.0.0.1:0", "[::1]:0", "localhost:0"):
        assert not load(None, {"require_client_auth": False, "client_listen": host}
                        ).require_client_auth
    assert load(None, {"client_listen": "0.0.0.0:0"}).require_client_auth


def test_bad_tls_material_fails_before_any_port(pki: PKI, tmp_path: Path) -> None:
    """B4: the node refuses to be built (so never listens) with unusable certificates."""
    cfg: NodeConfig = make_config(pki, tmp_path)
    bad = [
        replace(cfg.tls, ca=tmp_path / "missing.pem"),
        replace(cfg.tls, key=pki.dir / "n2.key"),  # does not match n1.pem
        replace(cfg.tls, ca=pki.dir / "admin.pem"),  # not a CA
    ]
    for t in bad:
        with pytest.raises(ConfigError):
            Node(replace(cfg, tls=t))
    with pytest.raises(ConfigError):
        Node(replace(cfg, acl={"roles": {"r": {"grants": [{"types": ["RAFT_HEARTBEAT"]}]}}}))
