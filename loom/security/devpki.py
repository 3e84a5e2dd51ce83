"""A development PKI: one cluster CA, node, client and gateway certificates.

Certificates follow what VERIFY_X509_STRICT demands (CA: critical basicConstraints, keyUsage,
SKI; leaves: AKI, SKI, CA:FALSE, keyUsage, EKU) and carry exactly one SPIFFE-style URI SAN, so
`identity.identity_from_der` maps them back. ECDSA P-256 throughout (FIELD-NOTES).

Private keys are created with mode 0600 from the start (os.open with O_EXCL on a temporary
name, then an atomic rename): there is no moment at which a key is readable by others.
Lower-level helpers (`new_ca`, `issue_cert`, `issue_crl`) let tests build expired, not yet
valid, foreign-CA, CN-only and multi-URI certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from loom.security.identity import IdentityError, Role, identity_from_der, spiffe_uri

__all__ = [
    "PKIExistsError",
    "create_dev_pki",
    "issue_cert",
    "issue_crl",
    "new_ca",
    "new_key",
    "write_cert",
    "write_crl",
    "write_key",
]

CA_DAYS = 3650
LEAF_DAYS = 825
_UTC = dt.UTC


class PKIExistsError(Exception):
    """The output directory already holds (some of) a PKI; pass force=True to replace it."""


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> dt.datetime:
    return dt.datetime.now(_UTC).replace(microsecond=0)


def _serial() -> int:
    return secrets.randbits(159) | 1  # positive, at most 20 octets (RFC 5280)


def new_ca(
    *,
    common_name: str = "Loom development CA",
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = key or new_key()
    nb = not_before or _now() - dt.timedelta(minutes=5)
    na = not_after or nb + dt.timedelta(days=CA_DAYS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    pub = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(pub)
        .serial_number(_serial()).not_valid_before(nb).not_valid_after(na)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    role: Role | str,
    name: str,
    trust_domain: str = "loom.dev",
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    cn: str | None = None,
    uri: bool = True,
    extra_uris: Sequence[str] = (),
    subject: x509.Name | None = None,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    server: bool | None = None,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Issue a leaf certificate.

    uri=True adds spiffe://<trust_domain>/<role>/<name>; `extra_uris` are added after it
    (multi-URI tests); `subject` overrides the subject (default CN=`cn` or `name`).
    `server` adds the serverAuth EKU (default: for nodes); clientAuth is always present.
    """
    key = key or new_key()
    role_s = role.value if isinstance(role, Role) else role
    nb = not_before or _now() - dt.timedelta(minutes=5)
    na = not_after or nb + dt.timedelta(days=LEAF_DAYS)
    subj = subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or name)])
    sans: list[x509.GeneralName] = []
    if uri:
        sans.append(x509.UniformResourceIdentifier(spiffe_uri(trust_domain, role_s, name)))
    sans += [x509.UniformResourceIdentifier(u) for u in extra_uris]
    sans += [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if server is None:
        server = role_s == Role.NODE.value
    ekus = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        ekus.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    pub = key.public_key()
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    b = (
        x509.CertificateBuilder()
        .subject_name(subj).issuer_name(ca_cert.subject).public_key(pub)
        .serial_number(_serial()).not_valid_before(nb).not_valid_after(na)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(ca_key, hashes.SHA256()), key


def issue_crl(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    revoked_serials: Iterable[int] = (),
    *,
    days: int = 30,
) -> x509.CertificateRevocationList:
    now = _now()
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    for s in revoked_serials:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(s).revocation_date(now).build()
        )
    return b.sign(ca_key, hashes.SHA256())


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    # The file is created with its final mode (never chmod-ed later) under a unique temporary
    # name, then renamed over the target: readers never see a partial or over-permissive file.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_atomic(Path(path), data, 0o600)


def write_cert(path: Path, *certs: x509.Certificate) -> None:
    data = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    _write_atomic(Path(path), data, 0o644)


def write_crl(path: Path, crl: x509.CertificateRevocationList) -> None:
    _write_atomic(Path(path), crl.public_bytes(serialization.Encoding.PEM), 0o644)


def _plan(
    nodes: Sequence[str], clients: Sequence[str], gateways: Sequence[str]
) -> list[tuple[Role, str]]:
    plan = [(Role.NODE, n) for n in nodes] + [(Role.CLIENT, c) for c in clients]
    plan += [(Role.GATEWAY, g) for g in gateways]
    names = [n for _, n in plan]
    if len(set(names)) != len(names) or "ca" in names:
        raise ValueError("certificate names must be distinct and not 'ca' (one file per name)")
    return plan


def _problem(out: Path, plan: list[tuple[Role, str]], trust_domain: str) -> str | None:
    """Why the PKI in `out` is not complete and valid, or None if it is."""
    try:
        ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
        ca_key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), None)
    except (OSError, ValueError) as e:
        return f"CA: {e}"
    now = dt.datetime.now(_UTC)
    if ca_key.public_key() != ca.public_key() or ca.not_valid_after_utc <= now:
        return "CA key does not match or the CA expired"
    for role, name in plan:
        try:
            cert = x509.load_pem_x509_certificate((out / f"{name}.pem").read_bytes())
            key = serialization.load_pem_private_key((out / f"{name}.key").read_bytes(), None)
            cert.verify_directly_issued_by(ca)
            ident = identity_from_der(
                cert.public_bytes(serialization.Encoding.DER), trust_domain
            )
        except (OSError, ValueError, TypeError, IdentityError) as e:
            return f"{name}: {e}"
        if key.public_key() != cert.public_key():
            return f"{name}: key does not match certificate"
        if (ident.role, ident.name) != (role, name) or cert.not_valid_after_utc <= now:
            return f"{name}: wrong identity or expired"
        if (out / f"{name}.key").stat().st_mode & 0o077:
            return f"{name}.key is readable by group or others"
    return None


def create_dev_pki(
    out: Path,
    *,
    force: bool = False,
    trust_domain: str = "loom.dev",
    nodes: Sequence[str] = ("n1", "n2", "n3"),
    clients: Sequence[str] = ("admin", "writer", "reader"),
    gateways: Sequence[str] = ("edge",),
) -> list[Path]:
    """Create (or confirm) a development PKI in `out`; returns every file path.

    Idempotent: a complete, valid PKI for the same names is left untouched. Any other existing
    PKI file makes this raise PKIExistsError unless force=True, which replaces everything.
    """
    out = Path(out)
    plan = _plan(nodes, clients, gateways)
    paths = [out / "ca.pem", out / "ca.key"]
    for _, name in plan:
        paths += [out / f"{name}.pem", out / f"{name}.key"]
    existing = [p for p in paths if p.exists()]
    if existing and not force:
        problem = _problem(out, plan, trust_domain)
        if problem is None:
            return paths
        raise PKIExistsError(
            f"{out} already holds PKI files ({existing[0].name}, ...) that are not a complete, "
            f"valid set ({problem}); use force to replace them"
        )
    out.mkdir(parents=True, exist_ok=True)
    ca, ca_key = new_ca(common_name=f"Loom development CA ({trust_domain})")
    write_key(out / "ca.key", ca_key)
    write_cert(out / "ca.pem", ca)
    for role, name in plan:
        # Nodes and gateways serve TLS on loopback (a gateway's listeners use its one
        # certificate, which also authenticates it to loomd): serverAuth and localhost SANs.
        serves = role in (Role.NODE, Role.GATEWAY)
        cert, key = issue_cert(
            ca, ca_key, role=role, name=name, trust_domain=trust_domain,
            dns=("localhost",) if serves else (), ips=("127.0.0.1", "::1") if serves else (),
            server=serves,
        )
        write_key(out / f"{name}.key", key)
        write_cert(out / f"{name}.pem", cert)
    return paths
