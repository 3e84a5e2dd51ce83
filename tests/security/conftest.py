"""Shared fixtures: one development PKI per test session, plus raw CA objects for issue_cert."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from loom.security.devpki import create_dev_pki, issue_cert, write_cert, write_key
from loom.security.identity import Role

TD = "loom.dev"


@dataclass
class PKI:
    dir: Path
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    def pair(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.pem", self.dir / f"{name}.key"

    def der(self, name: str) -> bytes:
        c = x509.load_pem_x509_certificate((self.dir / f"{name}.pem").read_bytes())
        return c.public_bytes(serialization.Encoding.DER)

    def issue(self, out: Path, fname: str, *, role: Role | str = Role.CLIENT,
              name: str = "x", **kw: object) -> tuple[Path, Path]:
        cert, key = issue_cert(self.ca_cert, self.ca_key, role=role, name=name, **kw)  # type: ignore[arg-type]
        write_cert(out / f"{fname}.pem", cert)
        write_key(out / f"{fname}.key", key)
        return out / f"{fname}.pem", out / f"{fname}.key"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("pki")
    create_dev_pki(d)
    ca_cert = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    return PKI(d, ca_cert, ca_key)
