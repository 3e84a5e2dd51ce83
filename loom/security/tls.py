"""TLS contexts for the client and peer listeners (the one module here that touches `ssl`).

Invariants every context built here holds (tests/security/test_tls.py checks them in real
handshakes):
- TLS 1.3 only: minimum AND maximum version are 1.3, so no configuration yields TLS <= 1.2.
- Certificate chains are verified with VERIFY_X509_STRICT (Python 3.11 does not set it).
- Server contexts issue no session tickets: every connection does a full handshake, so a
  reloaded CA, CRL or certificate (SIGHUP) is in force for every new connection.
- The server side never checks the client's name (the ssl module cannot): the caller reads the
  peer certificate after the handshake and maps it with `loom.security.identity`.

Every function is a pure function of the files it is given, so a reload is "build new contexts,
swap them in"; a bad file raises `TLSConfigError` naming it and the old contexts stay in force.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509

__all__ = [
    "TLSConfigError",
    "client_context",
    "peer_client_context",
    "peer_server_context",
    "server_context",
]


class TLSConfigError(Exception):
    """A certificate, key, CA or CRL file is missing, unreadable, malformed or mismatched."""


def _no_password(*_args: object) -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise TLSConfigError("encrypted private keys are not supported")


def _read(path: Path, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TLSConfigError(f"cannot read {what} file {path}: {e.strerror or e}") from e
    if not data.strip():
        raise TLSConfigError(f"{what} file {path} is empty")
    return data


def _base(purpose: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def _load_ca(ctx: ssl.SSLContext, ca: Path) -> None:
    data = _read(ca, "CA")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TLSConfigError(f"CA file {ca} holds no valid PEM certificate: {e}") from e
    for c in certs:
        try:
            bc = c.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise TLSConfigError(f"CA file {ca} contains a certificate that is not a CA")
    try:
        ctx.load_verify_locations(cadata=data.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError) as e:
        raise TLSConfigError(f"cannot load CA file {ca}: {e}") from e


def _load_crl(ctx: ssl.SSLContext, crl: Path) -> None:
    data = _read(crl, "CRL")
    if b"-----BEGIN X509 CRL-----" not in data:
        raise TLSConfigError(f"CRL file {crl} holds no PEM CRL")
    try:
        x509.load_pem_x509_crl(data)
        ctx.load_verify_locations(cafile=str(crl))  # cadata= accepts certificates only
    except (ValueError, ssl.SSLError, OSError) as e:
        raise TLSConfigError(f"cannot load CRL file {crl}: {e}") from e
    # Leaf only: our chains are one CA deep, and the CA itself is the trust anchor.
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    _read(cert, "certificate")
    _read(key, "private key")
    try:
        ctx.load_cert_chain(str(cert), str(key), password=_no_password)
    except TLSConfigError as e:
        raise TLSConfigError(f"private key file {key}: {e}") from e
    except ssl.SSLError as e:
        reason = getattr(e, "reason", None) or str(e)
        if reason == "KEY_VALUES_MISMATCH":
            raise TLSConfigError(
                f"private key {key} does not match certificate {cert}"
            ) from e
        raise TLSConfigError(f"cannot load certificate {cert} / key {key}: {reason}") from e
    except OSError as e:  # pragma: no cover - raced with the read above
        raise TLSConfigError(f"cannot read {cert} / {key}: {e}") from e


def server_context(
    ca: Path, cert: Path, key: Path, *, require_client_auth: bool, crl: Path | None = None
) -> ssl.SSLContext:
    """Context for the client listener.

    require_client_auth=True: a verified client certificate is mandatory (CERT_REQUIRED).
    False: CERT_OPTIONAL. A client that sends no certificate is a guest, but a client that sends
    one that does not verify fails the handshake; it is never downgraded to guest.
    """
    ctx = _base(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_auth else ssl.CERT_OPTIONAL
    ctx.num_tickets = 0  # no resumption: see the module docstring
    _load_ca(ctx, ca)
    if crl is not None:
        _load_crl(ctx, crl)
    _load_chain(ctx, cert, key)
    return ctx


def client_context(
    ca: Path,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    server_name_check: bool = True,
    crl: Path | None = None,
) -> ssl.SSLContext:
    """Context for dialling a Loom client listener (SDK, loomctl, tests).

    The server certificate is always verified against `ca`. With server_name_check, its DNS/IP
    SANs must also match the server_hostname given to wrap_socket / SSLStream.
    """
    if (cert is None) != (key is None):
        raise TLSConfigError("a client certificate and its key must be given together")
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = server_name_check
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_ca(ctx, ca)
    if crl is not None:
        _load_crl(ctx, crl)
    if cert is not None and key is not None:
        _load_chain(ctx, cert, key)
    return ctx


def peer_server_context(
    ca: Path, cert: Path, key: Path, *, crl: Path | None = None
) -> ssl.SSLContext:
    """Context for the peer listener: mutual TLS always.

    The caller must then require a NODE identity that is a current member
    (`identity.check_peer`): a client or gateway cert from the same CA is not a peer.
    """
    return server_context(ca, cert, key, require_client_auth=True, crl=crl)


def peer_client_context(
    ca: Path, cert: Path, key: Path, *, crl: Path | None = None
) -> ssl.SSLContext:
    """Context for dialling a peer: mutual TLS always.

    Peers are named by their URI SAN, not a hostname, so hostname checking is off here; the
    caller MUST check the server's identity against the node id it dialled
    (`identity.check_peer(identity, expected=node_id)`) before sending anything.
    """
    return client_context(ca, cert, key, server_name_check=False, crl=crl)
