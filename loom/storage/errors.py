"""The storage error hierarchy.

The node driver reacts to each class differently:

* `CorruptionError`: stored data failed a check; the node must not start (or must stop).
* `DiskFullError`: the write was refused and nothing of it is visible; retry later.
* `FatalIOError`: the storage can no longer promise durability (an fsync failed); stop the node.
* `EncryptionKeyError`: the keyring is missing, unreadable or lacks a key the data needs.
* `DataDirLockedError`: another process holds the data directory.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error the storage layer raises on purpose."""


class CorruptionError(StorageError):
    """Stored bytes failed a check. Names the file and the byte offset of the bad record."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"corruption in {path} at offset {offset}: {reason}")


class DiskFullError(StorageError):
    """No space left. The write was refused and undone; the storage stays usable."""


class FatalIOError(StorageError):
    """An I/O error after which durability cannot be promised (a failed fsync).

    The storage refuses every further call; the caller must stop the node. Retrying an
    fsync after a failure is unsafe: the kernel may have dropped the dirty pages already.
    """


class EncryptionKeyError(StorageError, KeyError):
    """The keyring is missing or wrong, or does not hold a key id the data was written with."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "encryption key error"


class DataDirLockedError(StorageError):
    """Another process holds the lock of the data directory."""
