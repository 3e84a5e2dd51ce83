"""Which certificates may no longer hold a connection, open ones included (pure: bytes in).

OpenSSL checks the CRL and the validity period once, during the handshake. A connection
outlives that moment, so the node asks this module again (node/clientport.py, node/peer.py):

- when the CRL file or the deny list changes (SIGHUP): every open client and peer connection
  whose certificate is now revoked is closed;
- at the certificate's `notAfter`: the connection's cancel scope has that deadline, so an
  expired certificate holds nothing past its expiry, without polling.

The deny list (`[tls] denied_serials`) names certificates by serial number (hex), for when a
CRL cannot be issued in time (the CA key is offline) or a node was replaced; it is checked at
every handshake too, which the CRL needs no help for.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from cryptography import x509


class RevocationError(ValueError):
    """A deny-list entry or CRL that cannot be read (names it)."""


def parse_serial(s: str) -> int:
    """A serial number written in hex, with or without colons ("1a:2b", "0x1A2B"), or as
    `openssl x509 -noout -serial` prints it ("serial=1A2B")."""
    t = s.strip().lower().removeprefix("serial=").removeprefix("0x").replace(":", "")
    try:
        if not t:
            raise ValueError
        return int(t, 16)
    except ValueError:
        raise RevocationError(f"not a hex serial number: {s!r}") from None


MAX_CACHED = 1024  # parsed certificates kept (a per-request check parses each one once)


class Revocation:
    def __init__(self, *, crl_pem: bytes | None = None, denied_serials: Iterable[str] = ()
                 ) -> None:
        self._crl: x509.CertificateRevocationList | None = None
        if crl_pem:
            try:
                self._crl = x509.load_pem_x509_crl(crl_pem)
            except ValueError as e:
                raise RevocationError(f"cannot read the CRL: {e}") from None
        self.denied = frozenset(parse_serial(s) for s in denied_serials)
        self._parsed: dict[bytes, x509.Certificate] = {}

    def reason(self, der: bytes, now: dt.datetime | None = None) -> str | None:
        """Why the certificate `der` may no longer hold a connection, or None. An empty `der`
        (a guest: no certificate) is never revoked."""
        if not der:
            return None
        cert = self._parsed.get(der)
        if cert is None:
            if len(self._parsed) >= MAX_CACHED:
                self._parsed.clear()
            cert = self._parsed[der] = x509.load_der_x509_certificate(der)
        serial = cert.serial_number
        if serial in self.denied:
            return f"certificate serial {serial:x} is on the deny list"
        crl = self._crl
        if crl is not None and crl.issuer == cert.issuer and \
                crl.get_revoked_certificate_by_serial_number(serial) is not None:
            return f"certificate serial {serial:x} is revoked by the CRL"
        if (now or dt.datetime.now(dt.UTC)) >= cert.not_valid_after_utc:
            return "certificate expired"
        return None


def not_after(der: bytes) -> dt.datetime:
    """The certificate's expiry (aware, UTC)."""
    return x509.load_der_x509_certificate(der).not_valid_after_utc


def seconds_left(der: bytes, now: dt.datetime | None = None) -> float:
    """Seconds until the certificate `der` expires (negative once it has)."""
    return (not_after(der) - (now or dt.datetime.now(dt.UTC))).total_seconds()
