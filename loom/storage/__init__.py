"""Durable storage under the Raft core: WAL, hard state, snapshots, encryption at rest.

See docs/storage.md for the on-disk format and the recovery and fail-stop rules.
"""

from loom.storage.errors import (
    CorruptionError,
    DataDirLockedError,
    DiskFullError,
    EncryptionKeyError,
    FatalIOError,
    StorageError,
)
from loom.storage.fs import FileSystem, OSFileSystem
from loom.storage.storage import Recovered, Storage, StorageOptions

__all__ = [
    "CorruptionError",
    "DataDirLockedError",
    "DiskFullError",
    "EncryptionKeyError",
    "FatalIOError",
    "FileSystem",
    "OSFileSystem",
    "Recovered",
    "Storage",
    "StorageError",
    "StorageOptions",
]
