"""Every failed authentication on a listener is counted (reason, listener) and audited with the
reason and the remote address; a flood is aggregated and never blocks the listener.

Real TLS clients with certificates made here (expired, not yet valid, another CA, revoked
through the CRL the node reads) against real nodes on 127.0.0.1."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from loom.node.config import TLSConfig
from loom.node.handshakes import source_of
from loom.node.server import Node
from loom.security import devpki
from loom.security.handshake import REASONS, FailureWindows, classify
from loom.security.identity import IdentityError
from loom.security.tls import client_context
from loom.wire.routes import METRICS_MEDIA
from tests.conftest import PKI, NodeFactory, connect, tls_client_ctx
from tests.http_door.conftest import http_as, start_http_node
from tests.node.conftest import audit_flushed, records
from tests.obs.test_metrics import samples, value


def _ca(pki: PKI) -> tuple[Any, Any]:
    ca = x509.load_pem_x509_certificate((pki.dir / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((pki.dir / "ca.key").read_bytes(), None)
    return ca, key


@pytest.fixture(scope="module")
def revoked(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A client certificate of our CA, and a CRL of that CA revoking it: (cert, key, crl)."""
    d = tmp_path_factory.mktemp("revoked")
    ca, ca_key = _ca(pki)
    cert, key = devpki.issue_cert(ca, ca_key, role="client", name="revoked")
    devpki.write_cert(d / "revoked.pem", cert)
    devpki.write_key(d / "revoked.key", key)
    devpki.write_crl(d / "crl.pem", devpki.issue_crl(ca, ca_key, [cert.serial_number]))
    return d / "revoked.pem", d / "revoked.key", d / "crl.pem"


def _tls12(pki: PKI) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.ca)
    ctx.check_hostname = False
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


async def _attempt(port: int, ctx: ssl.SSLContext | None) -> None:
    """One real client: TLS handshake (or plaintext), then a read; the server says no."""
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.fail_after(10):
        if ctx is None:
            await tcp.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                await tcp.receive_some(100)
            except trio.BrokenResourceError:
                pass
            await tcp.aclose()
            return
        s = trio.SSLStream(tcp, ctx, server_hostname="localhost")
        try:
            await s.do_handshake()
            await s.send_all(b"\x00\x00\x00\x01")
            assert await s.receive_some(100) == b"", "the server accepted the connection"
        except (trio.BrokenResourceError, ssl.SSLError):
            pass
        finally:
            await trio.aclose_forcefully(s)


async def _failures(node: Node, key: str, n: int = 1) -> None:
    with trio.fail_after(10):
        while node.handshakes.failures[tuple(key.split("/"))] < n:  # type: ignore[index]
            await trio.sleep(0.01)


def _auth_records(node: Node, **match: Any) -> list[dict[str, Any]]:
    return [r for r in records(node) if r.get("event") == "authentication_failed"
            and all(r.get(k) == v for k, v in match.items())]


def test_classify_is_one_pure_rule() -> None:
    def verify_error(code: int) -> ssl.SSLCertVerificationError:
        e = ssl.SSLCertVerificationError(1, "certificate verify failed")
        e.verify_code = code
        return e

    assert classify(verify_error(10)) == "expired"
    assert classify(verify_error(9)) == "not_yet_valid"
    assert classify(verify_error(23)) == "revoked"
    assert classify(verify_error(20)) == "unknown_ca"
    assert classify(verify_error(7)) == "bad_certificate"  # bad signature
    try:  # as the stream raises it: the SSL error as the cause
        raise trio.BrokenResourceError from verify_error(10)
    except trio.BrokenResourceError as e:
        assert classify(e) == "expired"
    assert classify(IdentityError("not a node identity")) == "wrong_role"
    assert classify(trio.TooSlowError()) == "timeout"
    assert classify(ConnectionResetError()) == "closed"
    assert set(REASONS) >= {"no_certificate", "unknown_ca", "expired", "not_yet_valid",
                            "revoked", "wrong_role", "not_a_member"}
    assert source_of("10.0.0.7:5555") == "10.0.0.7"
    assert source_of("127.0.0.1:9#4") == "127.0.0.1"
    assert source_of("[::1]:443") == "::1"


def test_windows_aggregate_per_reason_listener_and_source() -> None:
    w = FailureWindows(window_s=10, max_groups=2)
    first = w.failed("expired", "client", "10.0.0.1", now=0.0, detail="certificate has expired")
    assert [(r["reason"], r["count"], r["remote"]) for r in first] == [
        ("expired", 1, "10.0.0.1")]
    for t in range(1, 100):
        assert w.failed("expired", "client", "10.0.0.1", now=t / 100) == []
    # Another source and another listener are groups of their own; past max_groups, "*".
    assert w.failed("expired", "http", "10.0.0.1", now=1)[0]["listener"] == "http"
    assert w.failed("expired", "client", "10.0.0.2", now=1)[0]["remote"] == "*"
    assert w.failed("expired", "client", "10.0.0.3", now=1) == []  # folded into "*"
    assert w.due(now=9.99) == []
    ended = w.due(now=10)
    assert [(r["remote"], r["count"], r["window_s"]) for r in ended] == [("10.0.0.1", 99, 10)]
    assert [(r["remote"], r["count"]) for r in w.flush()] == [("*", 1)]
    st = w.statistics()
    assert (st.failures, st.records, st.open_groups, st.overflowed) == (103, 5, 0, 2)
    # After its window, the same source is audited at once again.
    assert w.failed("expired", "client", "10.0.0.1", now=20)[0]["count"] == 1
    with pytest.raises(ValueError):
        FailureWindows(window_s=0)


CLIENT_CASES = [
    ("no_certificate", lambda pki: tls_client_ctx(pki, None)),
    ("unknown_ca", lambda pki: tls_client_ctx(pki, "admin", certdir=pki.other)),
    ("expired", lambda pki: tls_client_ctx(pki, "expired")),
    ("not_yet_valid", lambda pki: tls_client_ctx(pki, "future")),
    ("protocol", _tls12),
    ("protocol", lambda pki: None),  # plaintext
]


async def test_each_reason_on_the_client_listener(pki: PKI, start_node: NodeFactory,
                                                  revoked: tuple[Path, Path, Path]) -> None:
    cert, key, crl = revoked
    node = await start_http_node(start_node, tls=TLSConfig(
        ca=pki.ca, cert=pki.dir / "n1.pem", key=pki.dir / "n1.key", crl=crl))
    expected: dict[str, int] = {}
    cases = [*CLIENT_CASES, ("revoked", lambda _: client_context(pki.ca, cert, key))]
    for reason, make in cases:
        await _attempt(node.port, make(pki))
        expected[reason] = expected.get(reason, 0) + 1
        await _failures(node, f"{reason}/client", expected[reason])
    # The listener still serves: a good client connects, and it counts as a handshake passed.
    good = await connect(node, pki, "admin")
    assert (await good.request("PING"))["s"] == 0
    await good.aclose()
    assert node.handshakes.ok["client"] >= 1
    # Counted by (reason, listener), exported, and audited with the reason and the address.
    assert dict(node.handshakes.failures) == {(r, "client"): n for r, n in expected.items()}
    async with http_as(pki, node, "admin") as admin:
        r = await admin.call("GET", "/metrics")
        assert r.status == 200
    s = samples(r.body.decode())
    for reason, n in expected.items():
        assert value(s, "loom_tls_handshake_failures_total", reason=reason,
                     listener="client") == n
    assert (value(s, "loom_tls_handshakes_total", listener="client") or 0) >= 1
    assert (value(s, "loom_tls_handshakes_total", listener="http") or 0) >= 1
    assert METRICS_MEDIA.startswith("text/plain")
    await audit_flushed(node)
    for reason in expected:
        recs = _auth_records(node, reason=reason, listener="client")
        assert recs and recs[0]["remote"] == "127.0.0.1" and recs[0]["count"] == 1, reason
        assert recs[0]["result"] == "unauthenticated" and recs[0]["node"] == "n1"
    assert "expired" in _auth_records(node, reason="expired")[0]["detail"]


async def test_the_http_listener_counts_and_audits_too(pki: PKI,
                                                       start_node: NodeFactory) -> None:
    node = await start_http_node(start_node)
    assert node.http is not None
    port = node.http.port
    await _attempt(port, tls_client_ctx(pki, "expired"))
    await _attempt(port, tls_client_ctx(pki, "admin", certdir=pki.other))
    await _failures(node, "expired/http")
    await _failures(node, "unknown_ca/http")
    # No certificate passes the handshake (the probes need none) but no request is served.
    async with http_as(pki, node, None) as anon:
        assert (await anon.call("GET", "/v1/maps/m/k")).status == 401
    await _failures(node, "no_certificate/http")
    await audit_flushed(node)
    for reason in ("expired", "unknown_ca", "no_certificate"):
        assert _auth_records(node, reason=reason, listener="http", remote="127.0.0.1")


async def test_the_peer_listener_wrong_role_and_not_a_member(pki: PKI, start_node: NodeFactory,
                                                             tmp_path: Path) -> None:
    node = await start_node(peer_listen="127.0.0.1:0", peers={
        "n1": "127.0.0.1:1", "n2": "127.0.0.1:1", "n3": "127.0.0.1:1"})
    port = node.log.transport.statistics().port
    ca, ca_key = _ca(pki)
    n9, n9_key = devpki.issue_cert(ca, ca_key, role="node", name="n9")
    devpki.write_cert(tmp_path / "n9.pem", n9)
    devpki.write_key(tmp_path / "n9.key", n9_key)

    def ctx(cert: Path, key: Path) -> ssl.SSLContext:
        c = client_context(pki.ca, cert, key)
        c.check_hostname = False
        return c

    await _attempt(port, ctx(*pki.pair("admin")))  # a client certificate on the peer port
    await _attempt(port, ctx(tmp_path / "n9.pem", tmp_path / "n9.key"))
    await _attempt(port, tls_client_ctx(pki, "expired"))
    await _failures(node, "wrong_role/peer")
    await _failures(node, "not_a_member/peer")
    await _failures(node, "expired/peer")
    await audit_flushed(node)
    for reason in ("wrong_role", "not_a_member", "expired"):
        assert _auth_records(node, reason=reason, listener="peer", remote="127.0.0.1")


async def test_the_deny_list_is_revoked_on_the_client_and_http_listeners(
        pki: PKI, start_node: NodeFactory) -> None:
    """A certificate on the node's deny list passes TLS and is refused right after it: the
    reason is still "revoked", on both listeners, with the deny list's words as the detail."""
    serial = x509.load_pem_x509_certificate(pki.pair("reader")[0].read_bytes()).serial_number
    node = await start_http_node(start_node, tls=TLSConfig(
        ca=pki.ca, cert=pki.dir / "n1.pem", key=pki.dir / "n1.key",
        denied_serials=(f"{serial:x}",)))
    assert node.http is not None
    await _attempt(node.port, tls_client_ctx(pki, "reader"))
    await _failures(node, "revoked/client")
    async with http_as(pki, node, "reader") as reader:
        assert (await reader.call("GET", "/v1/maps/m/k")).status == 401
    await _failures(node, "revoked/http")
    await audit_flushed(node)
    for listener in ("client", "http"):
        rec = _auth_records(node, reason="revoked", listener=listener)[0]
        assert "deny list" in rec["detail"] and rec["remote"] == "127.0.0.1"


async def test_a_flood_is_aggregated_and_never_blocks_the_listener(
        pki: PKI, start_node: NodeFactory) -> None:
    from loom.node.config import AuditConfig

    node = await start_node(audit=AuditConfig(sink="off", auth_failure_window_s=1.0))
    flood = 60
    async with trio.open_nursery() as n:
        for _ in range(flood):
            n.start_soon(_attempt, node.port, tls_client_ctx(pki, "expired"))
        good = await connect(node, pki, "admin")  # served while the flood runs
        assert (await good.request("PING"))["s"] == 0
        await good.aclose()
    await _failures(node, "expired/client", flood)
    with trio.fail_after(10):  # the window ends: one record with the rest of the count
        while sum(r["count"] for r in _auth_records(node, reason="expired")) < flood:
            await trio.sleep(0.05)
            await audit_flushed(node)
    recs = _auth_records(node, reason="expired", listener="client")
    assert [r["count"] for r in recs] == [1, flood - 1], recs
    assert recs[1]["remote"] == "127.0.0.1" and 1.0 <= recs[1]["window_s"] < 3
