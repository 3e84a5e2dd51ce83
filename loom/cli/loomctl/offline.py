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


def wal_inspect(c: Ctx, a: argparse.Namespace) -> Any:
    return _storage_admin().inspect(log_dir(a.dir), a.keyring)


def wal_verify(c: Ctx, a: argparse.Namespace) -> Any:
    r = _storage_admin().verify(log_dir(a.dir), a.keyring)
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
    key_id = _storage_admin().create_keyring(a.file)
    if a.output == "json":
        return {"key_id": key_id}
    return f"keyring {a.file} created, key id {key_id}"


def keys_rotate(c: Ctx, a: argparse.Namespace) -> Any:
    key_id = _storage_admin().rotate_key(a.file)
    return {"key_id": key_id} if a.output == "json" else key_id
