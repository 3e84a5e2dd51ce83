"""Who is on the other end of a TLS connection: certificate -> `Identity` -> principal.

The server side of the ssl module never checks a client certificate's name, so this module is
where that check lives. Rules (SECURITY-CATALOGUE B3, lesson 1):

- The identity comes from exactly one URI SAN `spiffe://<trust domain>/<role>/<name>` with role
  node, client or gateway and name `[A-Za-z0-9._-]{1,64}` (not "." or ".."). Nothing else in
  the URI is allowed: no port, user info, query, fragment, percent-escapes or extra segments.
- Several URI SANs, a foreign trust domain or an unknown role are errors, never a choice.
- With no URI SAN at all, the subject CN is used, and it can only ever yield a CLIENT identity:
  exactly one CN attribute in the whole subject, and the CN must itself be a plain name (ASCII
  letters, digits, '.', '_', '-'). Look-alike unicode, commas, escapes, spaces are refused, so
  the mapping is deterministic and cannot yield "admin" unless the certificate says exactly that.
- A connection without a certificate is the guest, principal "guest", which no certificate can
  produce (every certificate principal starts with "spiffe://").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum

from cryptography import x509
from cryptography.x509.oid import NameOID

__all__ = [
    "GUEST_PRINCIPAL",
    "Identity",
    "IdentityError",
    "Role",
    "check_peer",
    "guest_identity",
    "identity_from_der",
    "identity_or_guest",
    "spiffe_uri",
]

NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
TRUST_DOMAIN_RE = re.compile(r"[a-z0-9]([a-z0-9.-]{0,253}[a-z0-9])?")
_URI_RE = re.compile(r"spiffe://([^/?#]*)/([^/?#]*)/([^/?#]*)")
GUEST_PRINCIPAL = "guest"


class IdentityError(ValueError):
    """The certificate does not name an acceptable identity; the message says why."""


class Role(Enum):
    NODE = "node"
    CLIENT = "client"
    GATEWAY = "gateway"
    GUEST = "guest"  # no certificate; never produced from a certificate


@dataclass(frozen=True, slots=True)
class Identity:
    role: Role
    name: str
    uri: str | None  # the URI SAN it came from; None for CN-derived and guest identities
    trust_domain: str
    # Single-valued subject fields a policy condition may name (`cert.O`, ...): see _subject.
    subject: tuple[tuple[str, str], ...] = field(default=(), compare=False)
    # Derived from the fields above once, not per request (every request reads it).
    principal: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        principal = GUEST_PRINCIPAL if self.role is Role.GUEST else spiffe_uri(
            self.trust_domain, self.role, self.name)
        object.__setattr__(self, "principal", principal)

    @property
    def is_guest(self) -> bool:
        return self.role is Role.GUEST

    @property
    def spiffe_path(self) -> str | None:
        """`<role>/<name>` of a URI-SAN identity, for `spiffe.path` conditions."""
        return None if self.uri is None else f"{self.role.value}/{self.name}"


_SUBJECT_OIDS = {"CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME,
                 "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "C": NameOID.COUNTRY_NAME,
                 "ST": NameOID.STATE_OR_PROVINCE_NAME, "L": NameOID.LOCALITY_NAME}


def _subject(cert: x509.Certificate) -> tuple[tuple[str, str], ...]:
    """The subject fields conditions may use. A field given more than once, or whose value is
    not a printable string of at most 128 characters, is left out: a condition on it then
    fails (it never picks one of several values)."""
    out = []
    for short, oid in _SUBJECT_OIDS.items():
        vals = cert.subject.get_attributes_for_oid(oid)
        if len(vals) == 1:
            v = vals[0].value
            if isinstance(v, str) and 0 < len(v) <= 128 and v.isprintable():
                out.append((short, v))
    return tuple(out)


def _check_name(name: str, what: str) -> None:
    if not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise IdentityError(f"{what} {name!r} is not a plain name [A-Za-z0-9._-]{{1,64}}")


def _check_trust_domain(td: str) -> None:
    if not TRUST_DOMAIN_RE.fullmatch(td):
        raise IdentityError(f"trust domain {td!r} is not a lowercase DNS-style name")


def spiffe_uri(trust_domain: str, role: Role | str, name: str) -> str:
    r = role.value if isinstance(role, Role) else role
    return f"spiffe://{trust_domain}/{r}/{name}"


def guest_identity(trust_domain: str = "") -> Identity:
    return Identity(Role.GUEST, GUEST_PRINCIPAL, None, trust_domain)


def _from_uri(uri: str, trust_domain: str,
              subject: tuple[tuple[str, str], ...] = ()) -> Identity:
    m = _URI_RE.fullmatch(uri)
    if m is None:
        raise IdentityError(
            f"URI SAN {uri!r} is not of the form spiffe://<trust domain>/<role>/<name>"
        )
    td, role_s, name = m.groups()
    if td != trust_domain:
        raise IdentityError(f"URI SAN {uri!r} is for trust domain {td!r}, not {trust_domain!r}")
    roles = {Role.NODE.value: Role.NODE, Role.CLIENT.value: Role.CLIENT,
             Role.GATEWAY.value: Role.GATEWAY}
    role = roles.get(role_s)
    if role is None:
        raise IdentityError(f"URI SAN {uri!r} names unknown role {role_s!r}")
    _check_name(name, f"URI SAN {uri!r}: name")
    return Identity(role, name, uri, trust_domain, subject)


def _from_cn(cert: x509.Certificate, trust_domain: str) -> Identity:
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns:
        raise IdentityError("certificate has neither a URI SAN nor a subject CN")
    if len(cns) > 1:
        raise IdentityError(f"certificate subject has {len(cns)} CNs; exactly one is required")
    cn = cns[0].value
    if not isinstance(cn, str):
        raise IdentityError("certificate subject CN is not a string")
    _check_name(cn, "subject CN")
    # A CN never yields a node or gateway identity, whatever it says.
    return Identity(Role.CLIENT, cn, None, trust_domain, _subject(cert))


def identity_from_der(der: bytes | None, trust_domain: str) -> Identity:
    """The identity named by a verified peer certificate (DER, from getpeercert(True)).

    The certificate must already have been verified by the TLS handshake; this function maps
    names, it does not check signatures or validity.
    """
    _check_trust_domain(trust_domain)
    if not der:
        raise IdentityError("no certificate was presented")
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as e:
        raise IdentityError(f"certificate cannot be parsed: {e}") from e
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    except ValueError as e:  # malformed SAN extension
        raise IdentityError(f"certificate SAN cannot be parsed: {e}") from e
    if len(uris) > 1:
        raise IdentityError(f"certificate has {len(uris)} URI SANs; exactly one is allowed")
    if uris:
        return _from_uri(uris[0], trust_domain, _subject(cert))
    return _from_cn(cert, trust_domain)


def identity_or_guest(der: bytes | None, trust_domain: str) -> Identity:
    """For CERT_OPTIONAL listeners: no certificate (None or b"") is the guest.

    Only call this after a successful handshake: a certificate that failed verification never
    reaches here (the handshake failed), so it is never downgraded to guest.
    """
    if not der:
        _check_trust_domain(trust_domain)
        return guest_identity(trust_domain)
    return identity_from_der(der, trust_domain)


def check_peer(identity: Identity, expected: str | None = None) -> None:
    """A peer-plane connection must be a NODE; when dialling, the node we meant to reach."""
    if identity.role is not Role.NODE:
        raise IdentityError(f"{identity.principal} is not a node identity")
    if expected is not None and identity.name != expected:
        raise IdentityError(f"expected node {expected!r}, certificate names {identity.name!r}")
