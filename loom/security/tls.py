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

Private keys (`load_chain`, the one function that loads a key, for loomd, loom-gateway and
loomctl alike):
- the key file must not be accessible by group or others (like the keyring: chmod 600);
- an encrypted key (PKCS#8 `ENCRYPTED PRIVATE KEY`, or a legacy `Proc-Type: 4,ENCRYPTED` PEM)
  needs a `KeyPassphrase`: a file, or a systemd credential (`LoadCredential=NAME:...` in the
  unit, read from `$CREDENTIALS_DIRECTORY/NAME`). Never the passphrase itself from a flag or an
  environment value: those show up in `ps`, in /proc/PID/environ and in shell histories. The
  passphrase file is held to the same mode rule, and is read again at every (re)load, so a
  SIGHUP picks up a new key and its new passphrase together.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from loom.secretfile import SecretFileError, read_secret

__all__ = [
    "KeyPassphrase",
    "TLSConfigError",
    "client_context",
    "load_chain",
    "peer_client_context",
    "peer_server_context",
    "server_context",
]


class TLSConfigError(Exception):
    """A certificate, key, CA or CRL file is missing, unreadable, malformed or mismatched."""


# OpenSSL's PEM password buffer is 1024 bytes (PEM_BUFSIZE), terminator included.
MAX_PASSPHRASE = 1023
_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@-]{0,254}")


def read_private(path: Path, what: str) -> bytes:
    """A secret file's bytes, refused when group or others may access it (loom/secretfile.py
    owns the rule) or when it is empty."""
    try:
        data = read_secret(path, f"{what} file")
    except SecretFileError as e:
        raise TLSConfigError(str(e)) from None
    if not data.strip():
        raise TLSConfigError(f"{what} file {path} is empty")
    return data


@dataclass(frozen=True, slots=True)
class KeyPassphrase:
    """Where a secret that unlocks a key comes from (an encrypted key's passphrase, an HSM's
    PIN): exactly one of a file or a systemd credential name. `what` names it in messages."""

    file: Path | None = None
    credential: str | None = None
    what: str = "key passphrase"

    def __post_init__(self) -> None:
        if (self.file is None) == (self.credential is None):
            raise TLSConfigError(f"a {self.what} comes from a file or a systemd credential: "
                                 "give exactly one")
        if self.credential is not None and not _CREDENTIAL_NAME.fullmatch(self.credential):
            raise TLSConfigError(f"{self.what} credential {self.credential!r} is not a "
                                 "credential name (letters, digits, '._@-', no '/')")

    def path(self, environ: Mapping[str, str] | None = None) -> Path:
        """The file the secret is read from."""
        if self.file is not None:
            return self.file
        env = os.environ if environ is None else environ
        directory = env.get("CREDENTIALS_DIRECTORY", "")
        if not directory:
            raise TLSConfigError(
                f"{self.what} credential {self.credential!r} is configured but "
                f"$CREDENTIALS_DIRECTORY is not set: start the service with "
                f"LoadCredential={self.credential}:FILE")
        return Path(directory) / str(self.credential)

    def read(self, environ: Mapping[str, str] | None = None) -> bytes:
        """The secret: the file's content without its trailing line break."""
        path = self.path(environ)
        what = self.what if self.file is not None else f"{self.what} credential"
        data = read_private(path, what)
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
        if not data:
            raise TLSConfigError(f"{what} file {path} is empty")
        if len(data) > MAX_PASSPHRASE:
            raise TLSConfigError(f"{what} in {path} is longer than {MAX_PASSPHRASE} bytes")
        return data


def is_encrypted_pem(data: bytes) -> bool:
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data


def _check_key(key: Path, data: bytes, passphrase: KeyPassphrase | None) -> bytes | None:
    """The password to give OpenSSL for `key` (None for a plain key), checked here first so
    that a wrong passphrase is one clear line rather than an OpenSSL reason code."""
    if not is_encrypted_pem(data):
        return None
    if passphrase is None:
        raise TLSConfigError(
            f"private key file {key} is encrypted: give its passphrase with "
            "key_passphrase_file or key_passphrase_credential")
    pw = passphrase.read()
    try:
        serialization.load_pem_private_key(data, pw)
    except (ValueError, TypeError) as e:
        src = passphrase.file or f"credential {passphrase.credential}"
        if "password" in str(e).lower() or "decrypt" in str(e).lower():
            raise TLSConfigError(
                f"wrong passphrase for private key {key} (passphrase from {src})") from None
        raise TLSConfigError(f"private key file {key} cannot be read: {e}") from None
    return pw


def _refuse_prompt(*_args: object) -> bytes:
    # Never reached for a key `_check_key` passed; without a callback OpenSSL would prompt
    # on the terminal if the file changed in between.
    raise TLSConfigError("the private key changed while it was being loaded")


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


def load_chain(ctx: ssl.SSLContext, cert: Path, key: Path,
               passphrase: KeyPassphrase | None = None) -> None:
    """Load a certificate chain and its private key into `ctx`: the one place a key is read
    (mode check, encrypted keys and their passphrase: see the module docstring)."""
    _read(cert, "certificate")
    pw = _check_key(key, read_private(key, "private key"), passphrase)
    try:
        ctx.load_cert_chain(str(cert), str(key), password=pw if pw is not None else _refuse_prompt)
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
    ca: Path, cert: Path, key: Path, *, require_client_auth: bool, crl: Path | None = None,
    passphrase: KeyPassphrase | None = None,
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
    load_chain(ctx, cert, key, passphrase)
    return ctx


def client_context(
    ca: Path,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    server_name_check: bool = True,
    crl: Path | None = None,
    passphrase: KeyPassphrase | None = None,
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
        load_chain(ctx, cert, key, passphrase)
    return ctx


def peer_server_context(
    ca: Path, cert: Path, key: Path, *, crl: Path | None = None,
    passphrase: KeyPassphrase | None = None,
) -> ssl.SSLContext:
    """Context for the peer listener: mutual TLS always.

    The caller must then require a NODE identity that is a current member
    (`identity.check_peer`): a client or gateway cert from the same CA is not a peer.
    """
    return server_context(ca, cert, key, require_client_auth=True, crl=crl,
                          passphrase=passphrase)


def peer_client_context(
    ca: Path, cert: Path, key: Path, *, crl: Path | None = None,
    passphrase: KeyPassphrase | None = None,
) -> ssl.SSLContext:
    """Context for dialling a peer: mutual TLS always.

    Peers are named by their URI SAN, not a hostname, so hostname checking is off here; the
    caller MUST check the server's identity against the node id it dialled
    (`identity.check_peer(identity, expected=node_id)`) before sending anything.
    """
    return client_context(ca, cert, key, server_name_check=False, crl=crl,
                          passphrase=passphrase)
