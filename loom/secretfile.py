"""Secret files (TLS private keys, their passphrases, HSM PINs, keyrings) are read only when
nobody but their owner may access them: one rule, kept here for loom/security and
loom/storage alike.

The mode is checked on the open descriptor, so the file checked is the file read (no window
between a stat and an open), and a secret file is at most `MAX_SECRET_FILE` bytes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["MAX_SECRET_FILE", "SecretFileError", "read_secret"]

MAX_SECRET_FILE = 1 << 20


class SecretFileError(ValueError):
    """A secret file that cannot be read, or may be read by others: the message says which
    and what to do. Callers re-raise it as their own configuration error."""


def read_secret(path: str | Path, what: str) -> bytes:
    """The bytes of the secret file `path` (`what` names it in messages, e.g. "keyring")."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise SecretFileError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretFileError(
                f"{what} {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run chmod 600 on it")
        if st.st_size > MAX_SECRET_FILE:
            raise SecretFileError(f"{what} {path} is larger than 1 MiB")
        return os.read(fd, MAX_SECRET_FILE + 1)
    finally:
        os.close(fd)
