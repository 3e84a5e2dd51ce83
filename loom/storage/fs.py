"""The file layer: every byte the storage writes or reads goes through `FileSystem`.

Two implementations exist: `OSFileSystem` (the real one) and `loom.storage.faultfs.FaultFS`
(in memory, with crashes, torn writes, failing or slow syncs and a full disk), so the WAL, hard
state and snapshot code is exercised under faults exactly as it runs in production.

Contract (what callers may rely on, and what the fault layer enforces):

* `File.pwrite` writes all bytes or raises `OSError` (ENOSPC when the disk is full; a prefix
  may have been written).
* Written bytes are durable only after `File.sync` (data, fdatasync) or `File.fullsync`
  (data and metadata, fsync) returned. A failed sync raises `OSError`; the unsynced bytes
  may then be lost at the next crash even though reads still return them.
* A created, renamed or removed name is durable only after `sync_dir` of its directory.
"""

from __future__ import annotations

import abc
import errno
import os
import sys

if sys.platform != "win32":
    import fcntl


class File(abc.ABC):
    @abc.abstractmethod
    def pread(self, offset: int, size: int) -> bytes: ...

    @abc.abstractmethod
    def pwrite(self, offset: int, data: bytes) -> None: ...

    @abc.abstractmethod
    def size(self) -> int: ...

    @abc.abstractmethod
    def truncate(self, size: int) -> None: ...

    @abc.abstractmethod
    def allocate(self, size: int) -> None:
        """Reserve space so that writes below `size` cannot fail with ENOSPC."""

    @abc.abstractmethod
    def sync(self) -> None:
        """Make written data (and the size) durable: fdatasync."""

    @abc.abstractmethod
    def fullsync(self) -> None:
        """Make data and all metadata durable: fsync."""

    @abc.abstractmethod
    def close(self) -> None: ...


class DirLock(abc.ABC):
    @abc.abstractmethod
    def release(self) -> None: ...


class FileSystem(abc.ABC):
    # Whether a forked child's writes reach the parent's files (a real file system: yes; one
    # held in the process's memory: no). A snapshot is written by a child only where they do.
    shared_with_children = False

    @abc.abstractmethod
    def open(self, path: str, *, create: bool = False, exclusive: bool = False) -> File:
        """Open for reading and writing; new files get mode 0600."""

    @abc.abstractmethod
    def mkdir(self, path: str) -> None:
        """Create one directory with mode 0700 (FileExistsError if it exists)."""

    @abc.abstractmethod
    def listdir(self, path: str) -> list[str]: ...

    @abc.abstractmethod
    def exists(self, path: str) -> bool: ...

    @abc.abstractmethod
    def is_dir(self, path: str) -> bool: ...

    @abc.abstractmethod
    def remove(self, path: str) -> None: ...

    @abc.abstractmethod
    def rename(self, src: str, dst: str) -> None:
        """Atomically replace dst with src."""

    @abc.abstractmethod
    def sync_dir(self, path: str) -> None: ...

    @abc.abstractmethod
    def lock(self, path: str) -> DirLock:
        """Take an exclusive lock on the file at path (created 0600); BlockingIOError if held."""

    def read_file(self, path: str) -> bytes:
        f = self.open(path)
        try:
            return f.pread(0, f.size())
        finally:
            f.close()

    def makedirs(self, path: str) -> list[str]:
        """Create path and missing parents (0700); returns the ones created, outermost first."""
        created: list[str] = []
        missing: list[str] = []
        cur = os.path.normpath(path)
        while not self.exists(cur):
            missing.append(cur)
            parent = os.path.dirname(cur)
            if parent == cur:
                break
            cur = parent
        for d in reversed(missing):
            self.mkdir(d)
            created.append(d)
        return created


class _OSFile(File):
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def pread(self, offset: int, size: int) -> bytes:
        parts: list[bytes] = []
        while size > 0:
            chunk = os.pread(self._fd, min(size, 1 << 24), offset)
            if not chunk:
                break
            parts.append(chunk)
            offset += len(chunk)
            size -= len(chunk)
        return b"".join(parts)

    def pwrite(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, offset)
            if n <= 0:  # pragma: no cover - the kernel reports ENOSPC as an error
                raise OSError(errno.ENOSPC, "short write")
            view = view[n:]
            offset += n

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)

    def allocate(self, size: int) -> None:
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(self._fd, 0, size)
                return
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
        if self.size() < size:  # no fallocate: at least fix the size (sparse)
            os.ftruncate(self._fd, size)

    def sync(self) -> None:
        if sys.platform == "darwin":  # fsync does not flush the drive cache on macOS
            fcntl.fcntl(self._fd, fcntl.F_FULLFSYNC)
        elif hasattr(os, "fdatasync"):
            os.fdatasync(self._fd)
        else:  # pragma: no cover
            os.fsync(self._fd)

    def fullsync(self) -> None:
        if sys.platform == "darwin":
            fcntl.fcntl(self._fd, fcntl.F_FULLFSYNC)
        else:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class _OSLock(DirLock):
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class OSFileSystem(FileSystem):
    """The real file system (POSIX)."""

    shared_with_children = True

    def open(self, path: str, *, create: bool = False, exclusive: bool = False) -> File:
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
        if create:
            flags |= os.O_CREAT
        if exclusive:
            flags |= os.O_CREAT | os.O_EXCL
        fd = os.open(path, flags, 0o600)
        return _OSFile(fd)

    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)  # the umask may have removed bits; never added any

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def remove(self, path: str) -> None:
        os.remove(path)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def sync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def lock(self, path: str) -> DirLock:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            os.close(fd)
            raise
        return _OSLock(fd)
