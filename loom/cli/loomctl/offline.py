"""Offline tools (no connection): the development PKI, the write-ahead log, keyrings, the
audit log verifier.

The storage and PKI code is imported by the command that needs it, so a network command never
loads it."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from loom.cli.loomctl.base import Ctx, Declined, OfflineError, UsageError

LOG_SUBDIR = "raft"  # where loomd keeps its log inside data_dir (node/server.py)
LOG_PARTS = ("wal", "snap")  # what a log directory holds (storage/recovery.py)


def certs_dev(c: Ctx, a: argparse.Namespace) -> Any:
    from loom.security.devpki import PKIExistsError, create_dev_pki

    try:
        r = create_dev_pki(Path(a.out), force=a.force)
    except PKIExistsError as e:
        raise UsageError(f"{e} (pass --force to overwrite)") from None
    return r if r is not None else f"development PKI written to {a.out}"


CERT_KINDS = ("node", "client", "gateway")


def certs_ca(c: Ctx, a: argparse.Namespace) -> Any:
    import datetime as dt

    from loom.security.devpki import PKIExistsError, write_ca

    name = a.name or f"Loom CA {dt.date.today():%Y-%m-%d}"
    try:
        pem, key = write_ca(Path(a.out), common_name=name)
    except PKIExistsError as e:
        raise OfflineError("EXISTS", str(e)) from None
    if a.output == "json":
        return {"ca": str(pem), "key": str(key), "common_name": name}
    return f"CA {name!r} written to {pem} (key {key}, mode 0600)"


def certs_issue(c: Ctx, a: argparse.Namespace) -> Any:
    from loom.security.devpki import PKIExistsError, issue_leaf, load_ca
    from loom.security.identity import IdentityError, Role, spiffe_uri

    if a.kind not in CERT_KINDS:
        raise UsageError(f"KIND must be one of {', '.join(CERT_KINDS)}, not {a.kind!r}")
    role = Role(a.kind)
    if a.role and role is not Role.CLIENT:
        raise UsageError("--role applies to client certificates only")
    if (a.dns or a.ip) and role is Role.CLIENT:
        raise UsageError("--dns and --ip apply to node and gateway certificates only")
    if a.days < 1:
        raise UsageError("--days must be at least 1")
    passphrase = _passphrase(a.passphrase_file)
    try:
        ca, ca_key = load_ca(Path(a.ca_dir))
        pem, key = issue_leaf(ca, ca_key, Path(a.out or a.ca_dir), role, a.name,
                              trust_domain=a.trust_domain, dns=a.dns or (), ips=a.ip or (),
                              days=a.days, passphrase=passphrase)
    except PKIExistsError as e:
        raise OfflineError("EXISTS", str(e)) from None
    except IdentityError as e:
        raise UsageError(str(e)) from None
    principal = spiffe_uri(a.trust_domain, role, a.name)
    out: dict[str, Any] = {"cert": str(pem), "key": str(key), "principal": principal}
    if a.role:
        out["acl_principals"] = {principal: list(a.role)}
    if a.output == "json":
        return out
    enc = ", encrypted" if passphrase else ""
    lines = [f"{a.kind} certificate for {principal}: {pem} (key {key}, mode 0600{enc})"]
    if a.role:
        roles = ", ".join(f'"{r}"' for r in a.role)
        lines.append(f"grant its roles by adding to the policy's principals and running "
                     f"'loomctl acl set': \"{principal}\" = [{roles}]")
    return "\n".join(lines)


def _passphrase(path: str | None) -> bytes | None:
    """--passphrase-file: read with the rules loomd applies to it (security/tls.py)."""
    return _secret(path, "--passphrase-file", "key passphrase") if path else None


def _secret(path: str, flag: str, what: str) -> bytes:
    from loom.security.tls import KeyPassphrase, TLSConfigError

    try:
        return KeyPassphrase(Path(path), what=what).read()
    except TLSConfigError as e:
        raise UsageError(f"{flag}: {e}") from None


def _storage_admin() -> Any:
    """loom.storage.admin, imported only by the commands that need it."""
    return importlib.import_module("loom.storage.admin")


def log_dir(given: str) -> str:
    """The log directory for DIR: DIR itself when it holds wal/ or snap/, else DIR/raft when
    that does (a node's data directory). Anything else holds no log: refused, because a
    verifier that finds nothing to check must not report success."""
    d = Path(given)
    if not d.is_dir():
        raise OfflineError("NOT_A_DIRECTORY", f"{given}: no such directory")
    for candidate in (d, d / LOG_SUBDIR):
        if any((candidate / part).is_dir() for part in LOG_PARTS):
            return str(candidate)
    raise OfflineError("NO_LOG", f"{given}: no write-ahead log here (expected {LOG_PARTS[0]}/ "
                                 f"or {LOG_PARTS[1]}/ in it or in {LOG_SUBDIR}/; pass a node's "
                                 "data_dir)")


def _kek(a: argparse.Namespace) -> dict[str, Any]:
    """--pkcs11-module and --kek-pin-file: what a wrapped keyring needs (storage/kms.py)."""
    pin = _secret(a.kek_pin_file, "--kek-pin-file", "KEK PIN") if a.kek_pin_file else None
    return {"kek_pin": pin, "pkcs11_module": a.pkcs11_module}


def wal_inspect(c: Ctx, a: argparse.Namespace) -> Any:
    return _storage_admin().inspect(log_dir(a.dir), a.keyring, **_kek(a))


def wal_verify(c: Ctx, a: argparse.Namespace) -> Any:
    r = _storage_admin().verify(log_dir(a.dir), a.keyring, **_kek(a))
    if not isinstance(r, dict):
        return "OK" if r is None or r is True else r
    if not r.get("segments") and not r.get("snapshots"):
        raise Declined("NOTHING_CHECKED", f"{a.dir}: no log segment and no snapshot to verify",
                       {**r, "ok": False})
    if r.get("authenticated") is False:
        raise Declined("NOT_AUTHENTICATED", f"{a.dir}: the log is encrypted and was checked by "
                       "CRC only; pass --keyring FILE to authenticate every record",
                       {**r, "ok": False})
    return r


def audit_verify(c: Ctx, a: argparse.Namespace) -> Any:
    from loom.security.auditverify import check_files

    return check_files(Path(f) for f in a.files)


def keys_create(c: Ctx, a: argparse.Namespace) -> Any:
    """A plain keyring, or with --pkcs11-module a wrapped one whose first data key is drawn in
    memory and written only wrapped by the token's key --label."""
    wrapped = (a.pkcs11_module, a.token, a.label, a.pin_file)
    if any(wrapped) and not all(wrapped):
        raise UsageError("a wrapped keyring needs --pkcs11-module, --token, --label and "
                         "--pin-file")
    if all(wrapped):
        from loom.storage.kms import Pkcs11Kek, create_wrapped

        kek = Pkcs11Kek(a.pkcs11_module, a.token, a.label,
                        _secret(a.pin_file, "--pin-file", "KEK PIN"))
        key_id = create_wrapped(a.file, kek)
    else:
        key_id = _storage_admin().create_keyring(a.file)
    if a.output == "json":
        return {"key_id": key_id, "wrapped": all(wrapped)}
    how = f", wrapped by PKCS#11 key {a.label!r} on token {a.token!r}" if all(wrapped) else ""
    return f"keyring {a.file} created, key id {key_id}{how}"


def keys_rotate(c: Ctx, a: argparse.Namespace) -> Any:
    key_id = _storage_admin().rotate_key(a.file, **_kek(a))
    return {"key_id": key_id} if a.output == "json" else key_id
