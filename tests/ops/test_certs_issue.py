"""`loomctl certs ca` and `certs issue`: an operator's CA, leaves written 0600, never replaced,
mapped back to the identity they name, and accepted by a real node's TLS contexts."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from loom.cli.loomctl import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from loom.security.identity import Role, identity_from_der
from loom.security.tls import client_context, server_context

Cap = pytest.CaptureFixture[str]


def run(capsys: Cap, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, errs = capsys.readouterr()
    return code, out, errs


def _identity(pem: Path) -> tuple[Role, str]:
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    ident = identity_from_der(cert.public_bytes(serialization.Encoding.DER), "loom.dev")
    return ident.role, ident.name


def test_ca_then_node_client_gateway(tmp_path: Path, capsys: Cap) -> None:
    ca = tmp_path / "ca"
    assert run(capsys, "certs", "ca", "--out", str(ca), "--name", "Ops CA 1")[0] == EXIT_OK
    assert (ca / "ca.key").stat().st_mode & 0o777 == 0o600
    code, out, _ = run(capsys, "certs", "ca", "--out", str(ca))
    assert code == EXIT_FAILED, out  # an existing CA is never replaced
    before = (ca / "ca.key").read_bytes()

    leaves = tmp_path / "leaves"
    code, out, errs = run(capsys, "certs", "issue", "--ca-dir", str(ca), "--out", str(leaves),
                          "node", "n4")
    assert code == EXIT_OK, errs
    assert "spiffe://loom.dev/node/n4" in out
    code, out, errs = run(capsys, "-o", "json", "certs", "issue", "--ca-dir", str(ca),
                          "--out", str(leaves), "client", "ops", "--role", "admin")
    assert code == EXIT_OK, errs
    doc = json.loads(out)["result"]
    assert doc["acl_principals"] == {"spiffe://loom.dev/client/ops": ["admin"]}
    assert run(capsys, "certs", "issue", "--ca-dir", str(ca), "--out", str(leaves),
               "gateway", "edge2")[0] == EXIT_OK
    assert (ca / "ca.key").read_bytes() == before

    for kind, name in (("node", "n4"), ("client", "ops"), ("gateway", "edge2")):
        assert (leaves / f"{name}.key").stat().st_mode & 0o777 == 0o600
        assert _identity(leaves / f"{name}.pem") == (Role(kind), name)
        cert = x509.load_pem_x509_certificate((leaves / f"{name}.pem").read_bytes())
        cert.verify_directly_issued_by(
            x509.load_pem_x509_certificate((ca / "ca.pem").read_bytes()))

    # The node certificate serves TLS and the client one is accepted, under VERIFY_X509_STRICT.
    srv = server_context(ca / "ca.pem", leaves / "n4.pem", leaves / "n4.key",
                         require_client_auth=True)
    cli = client_context(ca / "ca.pem", leaves / "ops.pem", leaves / "ops.key")
    _handshake(srv, cli)


def _handshake(srv: ssl.SSLContext, cli: ssl.SSLContext) -> None:
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = srv.wrap_bio(s_in, s_out, server_side=True)
    client = cli.wrap_bio(c_in, c_out, server_hostname="localhost")
    done = {"s": False, "c": False}
    for _ in range(10):
        for k, obj, out, peer_in in (("c", client, c_out, s_in), ("s", server, s_out, c_in)):
            if not done[k]:
                try:
                    obj.do_handshake()
                    done[k] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done.values()):
            break
    assert all(done.values())
    assert server.getpeercert(binary_form=True)


def test_refuses_to_overwrite_and_bad_input(tmp_path: Path, capsys: Cap) -> None:
    ca = tmp_path / "ca"
    assert run(capsys, "certs", "ca", "--out", str(ca))[0] == EXIT_OK
    assert run(capsys, "certs", "issue", "--ca-dir", str(ca), "node", "n4")[0] == EXIT_OK
    key = (ca / "n4.key").read_bytes()
    code, _, errs = run(capsys, "certs", "issue", "--ca-dir", str(ca), "node", "n4")
    assert code == EXIT_FAILED and "already exists" in errs
    assert (ca / "n4.key").read_bytes() == key
    assert run(capsys, "certs", "issue", "--ca-dir", str(ca), "robot", "x")[0] == EXIT_USAGE
    assert run(capsys, "certs", "issue", "--ca-dir", str(ca), "node", "../evil")[0] == EXIT_USAGE
    assert not (tmp_path / "evil.key").exists()
    assert run(capsys, "certs", "issue", "--ca-dir", str(ca), "gateway", "g",
               "--role", "admin")[0] == EXIT_USAGE
    code, _, errs = run(capsys, "certs", "issue", "--ca-dir", str(tmp_path / "none"),
                        "node", "n5")
    assert code == EXIT_FAILED and "cannot read the CA" in errs


def test_dev_pki_and_issued_leaves_share_one_builder(tmp_path: Path, capsys: Cap) -> None:
    """A node certificate from `certs dev` and one from `certs issue` carry the same
    extensions (names and serial numbers aside)."""
    dev = tmp_path / "dev"
    assert run(capsys, "certs", "dev", "--out", str(dev))[0] == EXIT_OK
    assert run(capsys, "certs", "issue", "--ca-dir", str(dev), "node", "n9")[0] == EXIT_OK
    a = x509.load_pem_x509_certificate((dev / "n1.pem").read_bytes())
    b = x509.load_pem_x509_certificate((dev / "n9.pem").read_bytes())
    assert [e.oid for e in a.extensions] == [e.oid for e in b.extensions]
    assert a.extensions.get_extension_for_class(x509.ExtendedKeyUsage) == \
        b.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
