"""Certificate -> identity mapping (SECURITY-CATALOGUE B3, lesson 1)."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from loom.security.devpki import issue_cert
from loom.security.identity import (
    GUEST_PRINCIPAL,
    IdentityError,
    Role,
    check_peer,
    guest_identity,
    identity_from_der,
    identity_or_guest,
)

from .conftest import PKI, TD


def der(pki: PKI, **kw: object) -> bytes:
    kw.setdefault("role", Role.CLIENT)
    kw.setdefault("name", "alice")
    cert, _ = issue_cert(pki.ca_cert, pki.ca_key, **kw)  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("role", [Role.NODE, Role.CLIENT, Role.GATEWAY])
def test_uri_roles(pki: PKI, role: Role) -> None:
    ident = identity_from_der(der(pki, role=role, name="n-1.x_y"), TD)
    assert ident.role is role and ident.name == "n-1.x_y"
    assert ident.uri == ident.principal == f"spiffe://loom.dev/{role.value}/n-1.x_y"


def test_dev_pki_certs_map_back(pki: PKI) -> None:
    assert identity_from_der(pki.der("n1"), TD).principal == "spiffe://loom.dev/node/n1"
    assert identity_from_der(pki.der("admin"), TD).principal == "spiffe://loom.dev/client/admin"
    assert identity_from_der(pki.der("edge"), TD).role is Role.GATEWAY


def test_uri_wins_over_cn(pki: PKI) -> None:
    # The CN says admin, the URI SAN says reader: the URI SAN is the identity.
    ident = identity_from_der(der(pki, name="reader", cn="admin"), TD)
    assert ident.principal == "spiffe://loom.dev/client/reader"


def test_several_uri_sans_refused(pki: PKI) -> None:
    d = der(pki, name="reader", extra_uris=["spiffe://loom.dev/client/admin"])
    with pytest.raises(IdentityError, match=r"2 URI SANs"):
        identity_from_der(d, TD)


def test_wrong_trust_domain(pki: PKI) -> None:
    with pytest.raises(IdentityError, match=r"trust domain 'evil\.dev'"):
        identity_from_der(der(pki, trust_domain="evil.dev"), TD)
    with pytest.raises(IdentityError, match="trust domain"):
        identity_from_der(der(pki, trust_domain="LOOM.dev"), TD)


@pytest.mark.parametrize("uri", [
    "spiffe://loom.dev/superuser/alice",
    "spiffe://loom.dev/Client/alice",
    "spiffe://loom.dev/client/alice/extra",
    "spiffe://loom.dev/client/",
    "spiffe://loom.dev/client/..",
    "spiffe://loom.dev/client/al%69ce",
    "spiffe://loom.dev/client/alice?x=1",
    "spiffe://loom.dev/client/alice#frag",
    "spiffe://loom.dev:443/client/alice",
    "spiffe://user@loom.dev/client/alice",
    "https://loom.dev/client/alice",
    "SPIFFE://loom.dev/client/alice",
])
def test_malformed_or_unknown_uri(pki: PKI, uri: str) -> None:
    with pytest.raises(IdentityError):
        identity_from_der(der(pki, uri=False, extra_uris=[uri]), TD)


def test_cn_fallback_is_client_only(pki: PKI) -> None:
    ident = identity_from_der(der(pki, role=Role.NODE, name="n9", uri=False), TD)
    assert ident.role is Role.CLIENT and ident.name == "n9" and ident.uri is None
    # A CN that looks like a role path is not a plain name: refused, never a node.
    with pytest.raises(IdentityError):
        identity_from_der(der(pki, uri=False, cn="node/n1"), TD)
    with pytest.raises(IdentityError):
        identity_from_der(der(pki, uri=False, cn="spiffe://loom.dev/node/n1"), TD)


@pytest.mark.parametrize("cn", [
    "\u0430dmin",  # Cyrillic a
    "adm\u0131n",  # dotless i
    "admin\u200b",  # zero-width space
    "\uff41\uff44\uff4d\uff49\uff4e",  # fullwidth
    "admin,O=x",
    "admin\\,x",
    "CN=admin",
    "admin user",
    " admin",
    "admin+OU=x",
    "admin\x00",
    "..",
])
def test_cn_lookalike_and_escapes_refused(pki: PKI, cn: str) -> None:
    with pytest.raises(IdentityError, match="plain name"):
        identity_from_der(der(pki, uri=False, cn=cn), TD)


def test_multiple_cns_refused(pki: PKI) -> None:
    subj = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "reader"),
        x509.NameAttribute(NameOID.COMMON_NAME, "admin"),
    ])
    with pytest.raises(IdentityError, match="2 CNs"):
        identity_from_der(der(pki, uri=False, subject=subj), TD)
    # Multi-valued RDN: still two CNs.
    subj2 = x509.Name([x509.RelativeDistinguishedName([
        x509.NameAttribute(NameOID.COMMON_NAME, "reader"),
        x509.NameAttribute(NameOID.COMMON_NAME, "admin"),
    ])])
    with pytest.raises(IdentityError, match="2 CNs"):
        identity_from_der(der(pki, uri=False, subject=subj2), TD)


def test_cn_with_other_attributes_is_deterministic(pki: PKI) -> None:
    # O=admin and OU=admin do not matter: only the single CN names the client.
    subj = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "admin"),
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "admin"),
        x509.NameAttribute(NameOID.COMMON_NAME, "reader"),
    ])
    ident = identity_from_der(der(pki, uri=False, subject=subj), TD)
    assert ident.principal == "spiffe://loom.dev/client/reader"


def test_no_uri_no_cn(pki: PKI) -> None:
    subj = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")])
    with pytest.raises(IdentityError, match="neither"):
        identity_from_der(der(pki, uri=False, subject=subj), TD)


def test_missing_or_garbage_certificate() -> None:
    with pytest.raises(IdentityError, match="no certificate"):
        identity_from_der(None, TD)
    with pytest.raises(IdentityError, match="no certificate"):
        identity_from_der(b"", TD)
    with pytest.raises(IdentityError, match="cannot be parsed"):
        identity_from_der(b"\x30\x03abc", TD)


def test_guest() -> None:
    g = identity_or_guest(None, TD)
    assert g == guest_identity(TD) and g.is_guest and g.principal == GUEST_PRINCIPAL
    assert not g.principal.startswith("spiffe://")


def test_check_peer(pki: PKI) -> None:
    n1 = identity_from_der(pki.der("n1"), TD)
    check_peer(n1)
    check_peer(n1, expected="n1")
    with pytest.raises(IdentityError, match="expected node 'n2'"):
        check_peer(n1, expected="n2")
    for name in ("admin", "edge"):
        with pytest.raises(IdentityError, match="not a node"):
            check_peer(identity_from_der(pki.der(name), TD))
    cn_only = identity_from_der(der(pki, role=Role.NODE, name="n1", uri=False), TD)
    with pytest.raises(IdentityError, match="not a node"):
        check_peer(cn_only, expected="n1")
