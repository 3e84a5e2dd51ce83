"""Revocation reaches open client connections (issue #14, day-2 bullet), with a real loomd: a
certificate revoked through the CRL or the deny list (then SIGHUP), or expiring, loses the
connections it holds within a bounded time, not only new ones; other clients are untouched."""

from __future__ import annotations

import datetime as dt
import signal
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from loom.node.config import TLSConfig
from loom.security import devpki
from tests.conftest import PKI, RawConn, tls_client_ctx
from tests.node.conftest import OK, frame
from tests.node.test_lifecycle import Daemon, free_port, loomd, write_config

pytestmark = pytest.mark.slow

BOUND_S = 10.0  # a revoked connection is closed within this (in practice: at once)


def serial_of(pki: PKI, name: str) -> int:
    return x509.load_pem_x509_certificate((pki.dir / f"{name}.pem").read_bytes()).serial_number


def write_crl(pki: PKI, path: Path, *serials: int) -> None:
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    key = serialization.load_pem_private_key((pki.dir / "ca.key").read_bytes(), None)
    devpki.write_crl(path, devpki.issue_crl(ca, key, serials))  # type: ignore[arg-type]


def tls(pki: PKI, **kw: object) -> TLSConfig:
    return TLSConfig(ca=pki.ca, cert=pki.dir / "n1.pem", key=pki.dir / "n1.key", **kw)  # type: ignore[arg-type]


async def closed_within(conn: RawConn, seconds: float) -> float:
    """Seconds until the server closed `conn` (PINGs in between must succeed)."""
    t0 = trio.current_time()
    with trio.fail_after(seconds):
        while True:
            try:
                await conn.send_raw(frame("PING", rid=conn.next_id))
                conn.next_id += 1
                r = await conn.recv()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return trio.current_time() - t0
            if r is None:
                return trio.current_time() - t0
            assert r["s"] == OK, r
            await trio.sleep(0.05)


async def refused(d: Daemon, name: str) -> bool:
    """A new connection with `name`'s certificate never gets an answer to HELLO."""
    tcp = await trio.open_tcp_stream("127.0.0.1", d.port)
    c = RawConn(trio.SSLStream(tcp, tls_client_ctx(d.pki, name), server_hostname="localhost"))
    try:
        with trio.fail_after(10):
            await c.send_raw(frame("HELLO", {"client_name": "t", "min_version": 1,
                                             "max_version": 1}))
            return await c.recv() is None
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return True
    finally:
        await c.aclose()


async def test_crl_and_deny_list_close_open_connections(pki: PKI, tmp_path: Path) -> None:
    crl = tmp_path / "crl.pem"
    write_crl(pki, crl)
    port = free_port()
    config = write_config(pki, tmp_path, port, tls=tls(pki, crl=crl))
    async with loomd(pki, config, port) as d:
        admin, writer, reader = (await d.connect("admin"), await d.connect("writer"),
                                 await d.connect("reader"))
        # The CRL now revokes the writer's certificate: SIGHUP.
        write_crl(pki, crl, serial_of(pki, "writer"))
        d.proc.send_signal(signal.SIGHUP)
        took = await closed_within(writer, BOUND_S)
        assert await refused(d, "writer")
        # The deny list now names the reader's certificate: SIGHUP.
        write_config(pki, tmp_path, port, tls=tls(
            pki, crl=crl, denied_serials=(f"{serial_of(pki, 'reader'):x}",)))
        d.proc.send_signal(signal.SIGHUP)
        took = max(took, await closed_within(reader, BOUND_S))
        assert await refused(d, "reader")
        r = await admin.request("NODE_STATS")  # the admin's connection was never touched
        assert r["s"] == OK and r["r"]["revoked_connections"] == 2, r
        print(f"revoked connections closed {took:.2f} s after SIGHUP at most")
        for c in (admin, writer, reader):
            await c.aclose()


async def test_an_expiring_certificate_loses_its_open_connection(pki: PKI,
                                                                 tmp_path: Path) -> None:
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    key = serialization.load_pem_private_key((pki.dir / "ca.key").read_bytes(), None)
    now = dt.datetime.now(dt.UTC)
    lifetime = 6
    cert, k = devpki.issue_cert(ca, key, role="client", name="brief",  # type: ignore[arg-type]
                                not_before=now - dt.timedelta(minutes=1),
                                not_after=now + dt.timedelta(seconds=lifetime))
    devpki.write_cert(tmp_path / "brief.pem", cert)
    devpki.write_key(tmp_path / "brief.key", k)
    port = free_port()
    config = write_config(pki, tmp_path, port)
    async with loomd(pki, config, port) as d:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        c = RawConn(trio.SSLStream(tcp, tls_client_ctx(pki, "brief", certdir=tmp_path),
                                   server_hostname="localhost"))
        assert (await c.hello())["s"] == OK
        admin = await d.connect()
        await closed_within(c, lifetime + BOUND_S)
        expired_at = cert.not_valid_after_utc
        late = (dt.datetime.now(dt.UTC) - expired_at).total_seconds()
        assert -1.0 <= late < BOUND_S, late  # closed at expiry (second precision), not before
        assert (await admin.request("PING"))["s"] == OK
        await c.aclose()
        await admin.aclose()
