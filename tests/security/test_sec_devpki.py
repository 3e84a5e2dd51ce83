"""The development PKI: files, key modes, idempotence, refusal, identities."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from loom.security.devpki import PKIExistsError, create_dev_pki
from loom.security.identity import Role, identity_from_der

NAMES = {"n1": Role.NODE, "n2": Role.NODE, "n3": Role.NODE, "admin": Role.CLIENT,
         "writer": Role.CLIENT, "reader": Role.CLIENT, "edge": Role.GATEWAY}


def load(p: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(p.read_bytes())


def test_files_modes_and_identities(tmp_path: Path) -> None:
    out = tmp_path / "certs"
    paths = create_dev_pki(out)
    expected = {"ca.pem", "ca.key"} | {f"{n}.{e}" for n in NAMES for e in ("pem", "key")}
    assert {p.name for p in paths} == expected
    assert {p.name for p in out.iterdir()} == expected  # no temporary files left behind
    ca = load(out / "ca.pem")
    for p in paths:
        mode = stat.S_IMODE(p.stat().st_mode)
        if p.suffix == ".key":
            assert mode == 0o600, p
            key = serialization.load_pem_private_key(p.read_bytes(), None)
            assert key.key_size == 256  # type: ignore[union-attr]
        else:
            assert mode & 0o077 != 0o077
    for name, role in NAMES.items():
        cert = load(out / f"{name}.pem")
        cert.verify_directly_issued_by(ca)
        ident = identity_from_der(cert.public_bytes(serialization.Encoding.DER), "loom.dev")
        assert (ident.role, ident.name) == (role, name)
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
        # Nodes and gateways serve TLS; clients never do.
        assert (ExtendedKeyUsageOID.SERVER_AUTH in eku) == (role in (Role.NODE, Role.GATEWAY))
        if role is Role.NODE:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert san.get_values_for_type(x509.DNSName) == ["localhost"]
            assert set(san.get_values_for_type(x509.IPAddress)) == {
                ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}


def test_idempotent(tmp_path: Path) -> None:
    first = create_dev_pki(tmp_path)
    before = {p: p.read_bytes() for p in first}
    assert create_dev_pki(tmp_path) == first
    assert {p: p.read_bytes() for p in first} == before


def test_refuses_partial_or_invalid_without_force(tmp_path: Path) -> None:
    paths = create_dev_pki(tmp_path)
    (tmp_path / "writer.key").unlink()
    with pytest.raises(PKIExistsError, match="force"):
        create_dev_pki(tmp_path)
    assert not (tmp_path / "writer.key").exists()  # nothing was touched
    old_ca = (tmp_path / "ca.pem").read_bytes()
    assert create_dev_pki(tmp_path, force=True) == paths
    assert (tmp_path / "ca.pem").read_bytes() != old_ca
    assert stat.S_IMODE((tmp_path / "writer.key").stat().st_mode) == 0o600


def test_refuses_mismatched_key(tmp_path: Path) -> None:
    create_dev_pki(tmp_path)
    (tmp_path / "n1.key").write_bytes((tmp_path / "n2.key").read_bytes())
    with pytest.raises(PKIExistsError, match="n1"):
        create_dev_pki(tmp_path)


def test_refuses_a_different_name_set(tmp_path: Path) -> None:
    create_dev_pki(tmp_path, clients=("admin",))
    with pytest.raises(PKIExistsError):
        create_dev_pki(tmp_path)  # writer/reader missing: not the same PKI


def test_other_trust_domain(tmp_path: Path) -> None:
    create_dev_pki(tmp_path, trust_domain="prod.example", nodes=("a",), clients=(), gateways=())
    der = load(tmp_path / "a.pem").public_bytes(serialization.Encoding.DER)
    assert identity_from_der(der, "prod.example").principal == "spiffe://prod.example/node/a"


def test_rejects_clashing_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="distinct"):
        create_dev_pki(tmp_path, nodes=("n1",), clients=("n1",))
