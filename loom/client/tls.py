"""TLS 1.3 client contexts and the reading of TLS failures into clear messages."""

from __future__ import annotations

import ssl
from pathlib import Path

from loom.client.errors import CLIENT_CERT_REQUIRED, ConfigError


def _readable(path: str | Path, what: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} file not found: {p}")
    return str(p)


def make_context(
    ca: str | Path, cert: str | Path | None = None, key: str | Path | None = None,
    *, check_hostname: bool = True, key_passphrase_file: str | Path | None = None,
) -> ssl.SSLContext:
    """A TLS 1.3-only context trusting `ca`, presenting `cert`/`key` when given (built by
    loom.security.tls; an encrypted key needs `key_passphrase_file`). Missing or unusable
    files raise ConfigError."""
    from loom.security.tls import KeyPassphrase, TLSConfigError, client_context

    if (cert is None) != (key is None):
        raise ConfigError("a client certificate and its key must be given together "
                          "(--cert and --key)")
    ca_p = Path(_readable(ca, "CA certificate"))
    cert_p = Path(_readable(cert, "client certificate")) if cert is not None else None
    key_p = Path(_readable(key, "client key")) if key is not None else None
    try:
        pw = KeyPassphrase(Path(key_passphrase_file)) if key_passphrase_file else None
        return client_context(ca_p, cert_p, key_p, server_name_check=check_hostname,
                              passphrase=pw)
    except TLSConfigError as e:
        raise ConfigError(str(e)) from None


def is_permanent(message: str) -> bool:
    """Whether a TLS failure described by `describe_tls_error` is a certificate problem."""
    return message == CLIENT_CERT_REQUIRED or message.startswith(
        ("the server's certificate was not accepted", "the server rejected the client"))


def describe_tls_error(err: BaseException, *, sent_cert: bool) -> str:
    """A one-line explanation of a TLS failure seen during the handshake or the first read."""
    text = str(err)
    reason = getattr(err, "reason", None) or ""
    upper = f"{reason} {text}".upper()
    if "CERTIFICATE_REQUIRED" in upper:
        return CLIENT_CERT_REQUIRED
    if not sent_cert and isinstance(err, (ConnectionResetError, BrokenPipeError,
                                          ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        # TLS 1.3: a server that requires a client certificate hangs up right after the
        # handshake; depending on timing the client sees EOF, a reset or the alert.
        return CLIENT_CERT_REQUIRED
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"the server's certificate was not accepted: {err.verify_message or text}"
    if sent_cert and any(w in upper for w in ("UNKNOWN_CA", "BAD_CERTIFICATE",
                                              "CERTIFICATE_UNKNOWN", "ACCESS_DENIED")):
        return f"the server rejected the client certificate ({reason or text})"
    if "WRONG_VERSION_NUMBER" in upper or "UNSUPPORTED_PROTOCOL" in upper:
        return f"TLS 1.3 negotiation failed: is this a Loom client port? ({reason or text})"
    return f"TLS failed: {reason or text}"


def closed_during_hello(*, sent_cert: bool) -> str:
    """The message for EOF on the first read (TLS 1.3 reports a refused client cert this way)."""
    if not sent_cert:
        return CLIENT_CERT_REQUIRED
    return "the server closed the connection during HELLO (certificate not accepted?)"
