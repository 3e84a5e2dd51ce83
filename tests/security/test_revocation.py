"""security/revocation.py: which certificates may no longer hold a connection."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from loom.node.config import ConfigError, TLSConfig, validate
from loom.security import devpki
from loom.security.revocation import Revocation, RevocationError, parse_serial, seconds_left
from tests.conftest import PKI, make_config


def der_of(path: Path) -> bytes:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


def test_crl_deny_list_expiry_and_guests(pki: PKI) -> None:
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    key = serialization.load_pem_private_key((pki.dir / "ca.key").read_bytes(), None)
    writer, reader, admin = (der_of(pki.dir / f"{n}.pem") for n in ("writer", "reader", "admin"))
    w_serial = x509.load_der_x509_certificate(writer).serial_number
    r_serial = x509.load_der_x509_certificate(reader).serial_number
    crl = devpki.issue_crl(ca, key, [w_serial])  # type: ignore[arg-type]
    rev = Revocation(crl_pem=crl.public_bytes(serialization.Encoding.PEM),
                     denied_serials=[f"0x{r_serial:X}"])
    assert "revoked by the CRL" in (rev.reason(writer) or "")
    assert "deny list" in (rev.reason(reader) or "")
    assert rev.reason(admin) is None
    assert rev.reason(b"") is None  # a guest holds no certificate to revoke
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds_left(admin) + 1)
    assert rev.reason(admin, now=later) == "certificate expired"
    # A CRL of another CA does not revoke this CA's serials.
    other = devpki.new_ca(common_name="Other CA")
    foreign = devpki.issue_crl(other[0], other[1], [w_serial])
    assert Revocation(crl_pem=foreign.public_bytes(serialization.Encoding.PEM)).reason(
        writer) is None


def test_serials_and_config_errors(pki: PKI, tmp_path: Path) -> None:
    assert parse_serial("1a:2B") == parse_serial("0x1a2b") == parse_serial("serial=1A2B") \
        == 0x1A2B
    for bad in ("", "xyz", "0x"):
        with pytest.raises(RevocationError):
            parse_serial(bad)
    cfg = make_config(pki, tmp_path)
    with pytest.raises(ConfigError, match=r"tls\.denied_serials"):
        validate(replace(cfg, tls=replace(cfg.tls, denied_serials=("nope",))))
    assert validate(replace(cfg, tls=TLSConfig(ca=pki.ca, denied_serials=("abc",))))
