"""Mutual TLS: the identity of a client certificate that the listener's handshake verified.

The HTTP server hands over only a certificate TLS verified (a presented certificate that
fails verification fails the handshake), so here a certificate is either verified or absent.
The identity is `mtls:<common name>` (the RFC 4514 subject when it has none), and the
subject, issuer, serial and SHA-256 fingerprint go to plain HTTP upstreams in the listener's
`client_cert_headers`.
"""

from __future__ import annotations

import hashlib

from cryptography import x509

from loom.gateway.auth.base import AuthFailure, AuthRequest, Identity
from loom.gateway.config import ClientCertHeaders, MtlsConfig

__all__ = ["MtlsAuthenticator", "certificate_fields"]

_DEFAULT_HEADERS = ClientCertHeaders()


def certificate_fields(der: bytes) -> dict[str, str]:
    cert = x509.load_der_x509_certificate(der)
    cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    cn = cns[0].value if cns else ""
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(),
            "common_name": cn if isinstance(cn, str) else "",
            "serial": format(cert.serial_number, "X"),
            "fingerprint": hashlib.sha256(der).hexdigest()}


class MtlsAuthenticator:
    def __init__(self, config: MtlsConfig, headers: ClientCertHeaders = _DEFAULT_HEADERS,
                 *, name: str = "mtls") -> None:
        self.name = name
        self.config = config
        self.header_names = headers
        self.challenge: str | None = None

    async def authenticate(self, request: AuthRequest) -> Identity | AuthFailure | None:
        if request.peer_certificate is None:
            return None
        try:
            f = certificate_fields(request.peer_certificate)
        except ValueError:
            return AuthFailure(401, "unreadable client certificate")
        h = self.header_names
        headers = ((h.subject, f["subject"]), (h.issuer, f["issuer"]), (h.serial, f["serial"]),
                   (h.fingerprint, f["fingerprint"]))
        name = f"mtls:{f['common_name'] or f['subject']}"
        return Identity(name, self.config.roles, self.name, f, headers)
