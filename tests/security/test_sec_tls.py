"""Real loopback handshakes against the contexts of loom.security.tls (B1, B2, A1-A3, A5)."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

import pytest

from loom.security.devpki import issue_cert, issue_crl, new_ca, write_cert, write_crl, write_key
from loom.security.identity import IdentityError, Role, check_peer, identity_from_der
from loom.security.tls import (
    TLSConfigError,
    client_context,
    peer_client_context,
    peer_server_context,
    server_context,
)

from .conftest import PKI, TD

Result = bytes | None | Exception


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, host: str | None = "localhost",
    seen_by_client: list[bytes | None] | None = None,
) -> tuple[Result, Result]:
    """(server side: peer DER or exception, client side: bytes read or exception)."""
    a, b = socket.socketpair()
    a.settimeout(20)  # a safety net against a hung test, not an assertion
    b.settimeout(20)
    out: dict[str, Result] = {}

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                der = s.getpeercert(binary_form=True)
                s.sendall(b"ok")
                out["server"] = der
        except (ssl.SSLError, OSError) as e:
            out["server"] = e

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=host) as c:
            if seen_by_client is not None:
                seen_by_client.append(c.getpeercert(binary_form=True))
            out["client"] = c.recv(2)
    except (ssl.SSLError, OSError) as e:
        out["client"] = e
    finally:
        t.join()
        a.close()
        b.close()
    return out["server"], out["client"]


def ok(server: Result, client: Result) -> bool:
    return not isinstance(server, Exception) and client == b"ok"


def srv(pki: PKI, *, require: bool, crl: Path | None = None) -> ssl.SSLContext:
    return server_context(pki.ca, *pki.pair("n1"), require_client_auth=require, crl=crl)


def cli(pki: PKI, name: str | None = "admin") -> ssl.SSLContext:
    if name is None:
        return client_context(pki.ca)
    return client_context(pki.ca, *pki.pair(name))


def test_versions_and_flags(pki: PKI) -> None:
    ctxs = [
        srv(pki, require=True), srv(pki, require=False), cli(pki), cli(pki, None),
        peer_server_context(pki.ca, *pki.pair("n1")),
        peer_client_context(pki.ca, *pki.pair("n2")),
    ]
    for c in ctxs:
        assert c.minimum_version is ssl.TLSVersion.TLSv1_3
        assert c.maximum_version is ssl.TLSVersion.TLSv1_3
        assert c.verify_flags & ssl.VERIFY_X509_STRICT
        assert c.verify_mode in (ssl.CERT_REQUIRED, ssl.CERT_OPTIONAL)
    assert ctxs[0].verify_mode is ssl.CERT_REQUIRED
    assert ctxs[1].verify_mode is ssl.CERT_OPTIONAL
    assert ctxs[4].verify_mode is ssl.CERT_REQUIRED


def test_mutual_tls_ok_and_identity(pki: PKI) -> None:
    server, client = handshake(srv(pki, require=True), cli(pki, "writer"))
    assert ok(server, client)
    assert isinstance(server, bytes)
    assert identity_from_der(server, TD).principal == "spiffe://loom.dev/client/writer"


@pytest.mark.parametrize("require", [True, False])
def test_tls12_client_refused(pki: PKI, require: bool) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    old.load_verify_locations(pki.ca)
    old.load_cert_chain(*pki.pair("admin"))
    server, client = handshake(srv(pki, require=require), old)
    assert isinstance(server, ssl.SSLError)
    assert isinstance(client, ssl.SSLError)
    # Sanity: the same client allowed TLS 1.3 gets through, so the failure is the version.
    old.maximum_version = ssl.TLSVersion.TLSv1_3
    assert ok(*handshake(srv(pki, require=require), old))


def test_client_cannot_be_configured_below_13(pki: PKI) -> None:
    ctx = cli(pki)
    server, client = handshake(srv(pki, require=True), ctx)
    assert ok(server, client)
    server_old = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_old.maximum_version = ssl.TLSVersion.TLSv1_2
    server_old.load_cert_chain(*pki.pair("n1"))
    _server2, client2 = handshake(server_old, ctx)
    assert isinstance(client2, ssl.SSLError)


def _bad_client(pki: PKI, tmp: Path, kind: str) -> ssl.SSLContext:
    now = dt.datetime.now(dt.UTC)
    if kind == "expired":
        kw = {"not_before": now - dt.timedelta(days=10), "not_after": now - dt.timedelta(days=1)}
        c, k = pki.issue(tmp, kind, name="admin", **kw)
    elif kind == "not-yet-valid":
        kw = {"not_before": now + dt.timedelta(days=1), "not_after": now + dt.timedelta(days=9)}
        c, k = pki.issue(tmp, kind, name="admin", **kw)
    else:  # other CA, same names
        oca, okey = new_ca(common_name="Loom development CA (loom.dev)")
        cert, key = issue_cert(oca, okey, role=Role.CLIENT, name="admin")
        c, k = tmp / "other.pem", tmp / "other.key"
        write_cert(c, cert)
        write_key(k, key)
    return client_context(pki.ca, c, k)


@pytest.mark.parametrize("require", [True, False])
@pytest.mark.parametrize("kind", ["expired", "not-yet-valid", "other-ca"])
def test_bad_client_cert_rejected(pki: PKI, tmp_path: Path, kind: str, require: bool) -> None:
    # require=False is B2: an untrusted cert in optional mode fails; it is not a guest.
    server, client = handshake(srv(pki, require=require), _bad_client(pki, tmp_path, kind))
    assert isinstance(server, ssl.SSLError)
    assert client != b"ok"


def test_optional_mode_without_cert_is_guest(pki: PKI) -> None:
    server, client = handshake(srv(pki, require=False), cli(pki, None))
    assert client == b"ok"
    assert server is None  # the node maps this to the guest identity


def test_required_mode_without_cert_fails(pki: PKI) -> None:
    server, client = handshake(srv(pki, require=True), cli(pki, None))
    assert isinstance(server, ssl.SSLError)
    assert client != b"ok"


def test_server_cert_from_other_ca_or_wrong_name(pki: PKI, tmp_path: Path) -> None:
    oca, okey = new_ca()
    cert, key = issue_cert(oca, okey, role=Role.NODE, name="n1", dns=["localhost"])
    write_cert(tmp_path / "o.pem", cert)
    write_key(tmp_path / "o.key", key)
    other = server_context(pki.ca, tmp_path / "o.pem", tmp_path / "o.key",
                           require_client_auth=False)
    _server, client = handshake(other, cli(pki))
    assert isinstance(client, ssl.SSLCertVerificationError)
    # Right CA, wrong host name.
    _server, client = handshake(srv(pki, require=False), cli(pki), host="db.example")
    assert isinstance(client, ssl.SSLCertVerificationError)


def test_client_only_cert_cannot_serve(pki: PKI) -> None:
    # admin has only the clientAuth EKU: as a server certificate it fails verification.
    s = server_context(pki.ca, *pki.pair("admin"), require_client_auth=False)
    _server, client = handshake(s, client_context(pki.ca, server_name_check=False))
    assert isinstance(client, ssl.SSLCertVerificationError)


def test_peer_plane(pki: PKI) -> None:
    ps = peer_server_context(pki.ca, *pki.pair("n1"))
    # A client cert from the same CA completes TLS, but is not a node identity (A2).
    server, _client = handshake(ps, peer_client_context(pki.ca, *pki.pair("admin")), None)
    assert isinstance(server, bytes)
    with pytest.raises(IdentityError):
        check_peer(identity_from_der(server, TD))
    # Dialling n2 and reaching n1 (a valid node cert): the dialler must refuse (A5).
    seen: list[bytes | None] = []
    server, _client = handshake(ps, peer_client_context(pki.ca, *pki.pair("n3")), None, seen)
    assert isinstance(server, bytes) and seen[0] is not None
    check_peer(identity_from_der(server, TD), expected="n3")  # the server's view of n3
    check_peer(identity_from_der(seen[0], TD), expected="n1")
    with pytest.raises(IdentityError, match="expected node 'n2'"):
        check_peer(identity_from_der(seen[0], TD), expected="n2")
    # No client certificate on the peer plane: refused (A1).
    server, _client = handshake(ps, client_context(pki.ca, server_name_check=False), None)
    assert isinstance(server, ssl.SSLError)


def test_crl_revokes_leaf(pki: PKI, tmp_path: Path) -> None:
    revoked_c, revoked_k = pki.issue(tmp_path, "revoked", name="reader")
    from cryptography import x509

    serial = x509.load_pem_x509_certificate(revoked_c.read_bytes()).serial_number
    write_crl(tmp_path / "crl.pem", issue_crl(pki.ca_cert, pki.ca_key, [serial]))
    s = srv(pki, require=True, crl=tmp_path / "crl.pem")
    assert s.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    server, _client = handshake(s, client_context(pki.ca, revoked_c, revoked_k))
    assert isinstance(server, ssl.SSLError)
    assert ok(*handshake(s, cli(pki, "writer")))


def test_config_errors_name_the_file(pki: PKI, tmp_path: Path) -> None:
    c, k = pki.pair("n1")
    missing = tmp_path / "nope.pem"
    with pytest.raises(TLSConfigError, match=r"nope\.pem"):
        server_context(missing, c, k, require_client_auth=True)
    with pytest.raises(TLSConfigError, match=r"nope\.pem"):
        server_context(pki.ca, missing, k, require_client_auth=True)
    with pytest.raises(TLSConfigError, match=r"n2\.key does not match"):
        server_context(pki.ca, c, pki.dir / "n2.key", require_client_auth=True)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(TLSConfigError, match=r"garbage\.pem"):
        server_context(garbage, c, k, require_client_auth=True)
    with pytest.raises(TLSConfigError, match="not a CA"):
        server_context(c, c, k, require_client_auth=True)
    with pytest.raises(TLSConfigError, match=r"nope\.pem"):
        server_context(pki.ca, c, k, require_client_auth=True, crl=missing)
    with pytest.raises(TLSConfigError, match="no PEM CRL"):
        server_context(pki.ca, c, k, require_client_auth=True, crl=pki.ca)
    with pytest.raises(TLSConfigError, match="together"):
        client_context(pki.ca, c)


def test_encrypted_key_without_passphrase_refused_without_prompt(pki: PKI,
                                                                   tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key((pki.dir / "n1.key").read_bytes(), None)
    enc = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.BestAvailableEncryption(b"pw"))
    (tmp_path / "enc.key").write_bytes(enc)
    (tmp_path / "enc.key").chmod(0o600)
    with pytest.raises(TLSConfigError, match=r"enc\.key is encrypted: give its passphrase"):
        server_context(pki.ca, pki.dir / "n1.pem", tmp_path / "enc.key",
                       require_client_auth=True)


def test_reload_picks_up_rotated_files(pki: PKI, tmp_path: Path) -> None:
    # Contexts are pure functions of the files: rebuilding after a rotation uses the new cert.
    c, k = tmp_path / "srv.pem", tmp_path / "srv.key"
    now = dt.datetime.now(dt.UTC)
    cert, key = issue_cert(pki.ca_cert, pki.ca_key, role=Role.NODE, name="n1", dns=["localhost"],
                           not_before=now - dt.timedelta(days=2),
                           not_after=now - dt.timedelta(days=1))
    write_cert(c, cert)
    write_key(k, key)
    _server, client = handshake(server_context(pki.ca, c, k, require_client_auth=True), cli(pki))
    assert isinstance(client, ssl.SSLCertVerificationError)
    cert, key = issue_cert(pki.ca_cert, pki.ca_key, role=Role.NODE, name="n1", dns=["localhost"])
    write_cert(c, cert)
    write_key(k, key)
    assert ok(*handshake(server_context(pki.ca, c, k, require_client_auth=True), cli(pki)))
