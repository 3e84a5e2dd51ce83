"""The cluster PKI: a CA, node, client and gateway certificates, for development and for an
operator's own CA (`loomctl certs ca` / `certs issue`), built by one builder (`issue_leaf`).

Certificates follow what VERIFY_X509_STRICT demands (CA: critical basicConstraints, keyUsage,
SKI; leaves: AKI, SKI, CA:FALSE, keyUsage, EKU) and carry exactly one SPIFFE-style URI SAN, so
`identity.identity_from_der` maps them back. ECDSA P-256 throughout (FIELD-NOTES).

Private keys are created with mode 0600 from the start (os.open with O_EXCL on a temporary
name, then an atomic rename): there is no moment at which a key is readable by others.
Lower-level helpers (`new_ca`, `issue_cert`, `issue_crl`) let tests build expired, not yet
valid, foreign-CA, CN-only and multi-URI certificates.

`create_dev_pki` and `issue_leaf` write through the same code: a leaf for a role gets the same
extensions whether it is part of the development set or issued later by an operator's CA
(nodes and gateways: serverAuth plus the DNS/IP names they are reached by). `issue_leaf` and
`write_ca` never replace an existing file: a key written by mistake over a live one would lock a
node out.
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

from loom.security.identity import (
    NAME_RE,
    IdentityError,
    Role,
    identity_from_der,
    spiffe_uri,
)

__all__ = [
    "PKIExistsError",
    "create_dev_pki",
    "issue_cert",
    "issue_crl",
    "issue_leaf",
    "load_ca",
    "new_ca",
    "new_key",
    "write_ca",
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


def _write_atomic(path: Path, data: bytes, mode: int, *, exclusive: bool = False) -> None:
    # The file is created with its final mode (never chmod-ed later) under a unique temporary
    # name, then renamed over the target: readers never see a partial or over-permissive file.
    # exclusive: linked into place instead, which fails if the target exists (no overwrite,
    # even against a concurrent writer).
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise PKIExistsError(f"{path} already exists; not overwritten") from None
            tmp.unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_key(path: Path, key: ec.EllipticCurvePrivateKey, *, exclusive: bool = False,
              passphrase: bytes | None = None) -> None:
    """PKCS#8 PEM, mode 0600; encrypted under `passphrase` when given (AES-256-CBC, the key
    derived with PBKDF2: cryptography's best available PKCS#8 encryption)."""
    enc: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase
        else serialization.NoEncryption())
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    _write_atomic(Path(path), data, 0o600, exclusive=exclusive)


def write_cert(path: Path, *certs: x509.Certificate, exclusive: bool = False) -> None:
    data = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
    _write_atomic(Path(path), data, 0o644, exclusive=exclusive)


def write_crl(path: Path, crl: x509.CertificateRevocationList) -> None:
    _write_atomic(Path(path), crl.public_bytes(serialization.Encoding.PEM), 0o644)


def load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA kept in `ca_dir` (ca.pem, ca.key), checked to be a usable signing CA."""
    ca_dir = Path(ca_dir)
    try:
        ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
        key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    except OSError as e:
        raise ValueError(f"cannot read the CA in {ca_dir}: {e.strerror or e} "
                         f"({e.filename})") from None
    except (ValueError, TypeError) as e:
        raise ValueError(f"{ca_dir}: ca.pem / ca.key are not a PEM certificate and an "
                         f"unencrypted private key: {e}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != ca.public_key():
        raise ValueError(f"{ca_dir}: ca.key is not the key of ca.pem")
    try:
        bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise ValueError(f"{ca_dir}/ca.pem is not a CA certificate")
    if ca.not_valid_after_utc <= dt.datetime.now(_UTC):
        raise ValueError(f"{ca_dir}/ca.pem expired on {ca.not_valid_after_utc:%Y-%m-%d}")
    return ca, key


def write_ca(out: Path, *, common_name: str) -> tuple[Path, Path]:
    """A new CA in `out` (ca.pem, ca.key 0600); refuses to replace an existing one."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for p in (out / "ca.pem", out / "ca.key"):
        if p.exists():
            raise PKIExistsError(f"{p} already exists; not overwritten")
    ca, key = new_ca(common_name=common_name)
    write_key(out / "ca.key", key, exclusive=True)
    write_cert(out / "ca.pem", ca, exclusive=True)
    return out / "ca.pem", out / "ca.key"


def issue_leaf(
    ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, out: Path, role: Role, name: str,
    *, trust_domain: str = "loom.dev", dns: Sequence[str] = (), ips: Sequence[str] = (),
    days: int = LEAF_DAYS, exclusive: bool = True, passphrase: bytes | None = None,
) -> tuple[Path, Path]:
    """Issue `name`'s certificate for `role` and write out/<name>.pem and out/<name>.key (0600,
    encrypted under `passphrase` when given).

    Nodes and gateways get serverAuth and the DNS/IP SANs they are dialled by (default
    localhost, 127.0.0.1, ::1). exclusive=True (the default) refuses to replace either file;
    nothing is written then.
    """
    out = Path(out)
    if not NAME_RE.fullmatch(name) or name in (".", ".."):  # also keeps the files inside out
        raise IdentityError(f"name {name!r} is not a plain name [A-Za-z0-9._-]{{1,64}}")
    if name == "ca":
        raise ValueError("'ca' names the CA's own files; choose another name")
    pem, keyp = out / f"{name}.pem", out / f"{name}.key"
    if exclusive:
        for p in (pem, keyp):
            if p.exists():
                raise PKIExistsError(f"{p} already exists; not overwritten")
    # Nodes and gateways serve TLS (a gateway's listeners use its one certificate, which also
    # authenticates it to loomd): serverAuth, and the names they are dialled by.
    serves = role in (Role.NODE, Role.GATEWAY)
    if serves and not dns and not ips:
        dns, ips = ("localhost",), ("127.0.0.1", "::1")
    nb = _now() - dt.timedelta(minutes=5)
    na = min(nb + dt.timedelta(days=days), ca.not_valid_after_utc)
    cert, key = issue_cert(ca, ca_key, role=role, name=name, trust_domain=trust_domain,
                           not_before=nb, not_after=na, dns=dns, ips=ips, server=serves)
    out.mkdir(parents=True, exist_ok=True)
    write_key(keyp, key, exclusive=exclusive, passphrase=passphrase)
    try:
        write_cert(pem, cert, exclusive=exclusive)
    except BaseException:
        keyp.unlink(missing_ok=True)  # never leave a key without its certificate
        raise
    return pem, keyp


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
        issue_leaf(ca, ca_key, out, role, name, trust_domain=trust_domain, exclusive=False)
    return paths
