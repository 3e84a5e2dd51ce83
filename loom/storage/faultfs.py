"""An in-memory `FileSystem` that injects the faults a real disk and kernel produce.

* `crash()` models power loss: every byte written since the file's last successful sync may
  be lost. Of the unsynced operations of each file, a random prefix survives; the next one, if
  it is a write, may be torn: a random subset of its disk sectors reaches the disk and the others
  keep their old content (zeros for preallocated space). Directory entries (create, rename,
  remove) survive only if their directory was synced, unless the crash happens to have flushed
  that directory's metadata anyway (chosen at random per directory).
* A sync may fail (`fail_next_syncs`, `sync_fail_rate`); the unsynced bytes then stay readable
  but are lost at the next crash, as on Linux after a failed fsync.
* A sync may be slow (`sync_delay`, or `sync_hook`, which may also sleep in virtual time).
* `capacity` bounds the bytes stored: a write or allocation beyond it fails with ENOSPC (a
  write may have stored a prefix first).

All randomness comes from one seeded `random.Random`, so a simulated run reproduces exactly.
One instance is one machine's disk: the Raft simulator gives each node its own instance and
calls `crash()` when it kills the node, then reopens `Storage` on the same instance.
"""

from __future__ import annotations

import errno
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from loom.storage.fs import DirLock, File, FileSystem

_WRITE, _TRUNCATE = 0, 1


@dataclass
class _Inode:
    data: bytearray = field(default_factory=bytearray)
    durable: bytearray = field(default_factory=bytearray)
    pending: list[tuple[int, int, bytes]] = field(default_factory=list)  # (op, offset/size, data)


def _norm(path: str) -> str:
    return os.path.normpath(path)


class FaultFS(FileSystem):
    def __init__(
        self,
        seed: int = 0,
        *,
        tear: bool = True,
        sync_fail_rate: float = 0.0,
        sync_delay: float = 0.0,
        sync_hook: Callable[[str], None] | None = None,
        capacity: int | None = None,
        sector_size: int = 512,
    ) -> None:
        self.rng = random.Random(seed)
        self.tear = tear
        self.sync_fail_rate = sync_fail_rate
        self.sync_delay = sync_delay
        self.sync_hook = sync_hook
        self.capacity = capacity
        self.sector_size = sector_size
        self.syncs = 0  # successful file and directory syncs, for tests and benchmarks
        self.crashes = 0
        self._fail_next = 0
        self._generation = 0
        self._files: dict[str, _Inode] = {}
        self._dirs: set[str] = {"/"}
        self._durable_files: dict[str, _Inode] = {}
        self._durable_dirs: set[str] = {"/"}
        self._locks: set[str] = set()

    # ----- fault controls -------------------------------------------------------------
    def fail_next_syncs(self, count: int = 1) -> None:
        self._fail_next += count

    def used_bytes(self) -> int:
        seen = {id(i): len(i.data) for i in self._files.values()}
        return sum(seen.values())

    def crash(self) -> None:
        """Power loss: drop what was not made durable (see the module docstring)."""
        self.crashes += 1
        self._generation += 1
        self._locks.clear()
        parents = {os.path.dirname(p) for p in self._files} | {
            os.path.dirname(p) for p in self._durable_files
        }
        for d in sorted(parents):  # metadata the kernel may have flushed on its own
            if self.rng.random() < 0.25:
                self._sync_names(d)
        self._files = dict(self._durable_files)
        self._dirs = set(self._durable_dirs)
        for inode in {id(i): i for i in self._files.values()}.values():
            self._lose_unsynced(inode)

    def _lose_unsynced(self, inode: _Inode) -> None:
        data = bytearray(inode.durable)
        keep = self.rng.randint(0, len(inode.pending))
        for op, arg, payload in inode.pending[:keep]:
            _apply(data, op, arg, payload)
        if self.tear and keep < len(inode.pending):
            op, arg, payload = inode.pending[keep]
            if op == _WRITE:
                self._tear(data, arg, payload)
        inode.data = data
        inode.durable = bytearray(data)
        inode.pending = []

    def _tear(self, data: bytearray, offset: int, payload: bytes) -> None:
        """Apply a random subset of the sectors of one write (a prefix half of the time)."""
        ss = self.sector_size
        pieces: list[tuple[int, int]] = []
        pos, end = offset, offset + len(payload)
        while pos < end:
            stop = min(end, (pos // ss + 1) * ss)
            pieces.append((pos, stop))
            pos = stop
        if self.rng.random() < 0.5:
            chosen = pieces[: self.rng.randint(0, len(pieces))]
        else:
            chosen = [p for p in pieces if self.rng.random() < 0.5]
        if not chosen:
            return
        last = chosen[-1][1] if self.rng.random() < 0.5 else end
        if len(data) < last:
            data.extend(bytes(last - len(data)))
        for a, b in chosen:
            data[a:b] = payload[a - offset : b - offset]

    # ----- helpers ----------------------------------------------------------------------
    def _check_sync(self, path: str) -> None:
        if self.sync_hook is not None:
            self.sync_hook(path)
        if self.sync_delay:
            time.sleep(self.sync_delay)
        if self._fail_next > 0:
            self._fail_next -= 1
            raise OSError(errno.EIO, "injected fsync failure", path)
        if self.sync_fail_rate and self.rng.random() < self.sync_fail_rate:
            raise OSError(errno.EIO, "injected fsync failure", path)

    def _room(self) -> int | None:
        return None if self.capacity is None else max(0, self.capacity - self.used_bytes())

    def _sync_names(self, d: str) -> None:
        for p in [p for p in self._durable_files if os.path.dirname(p) == d]:
            if p not in self._files:
                del self._durable_files[p]
        for p, inode in self._files.items():
            if os.path.dirname(p) == d:
                self._durable_files[p] = inode
        for sub in [s for s in self._durable_dirs if os.path.dirname(s) == d and s != d]:
            if sub not in self._dirs:
                self._durable_dirs.discard(sub)
        for sub in self._dirs:
            if os.path.dirname(sub) == d and sub != d:
                self._durable_dirs.add(sub)

    def _parent_ok(self, path: str) -> None:
        if os.path.dirname(path) not in self._dirs:
            raise FileNotFoundError(errno.ENOENT, "no such directory", os.path.dirname(path))

    # ----- FileSystem -------------------------------------------------------------------
    def open(self, path: str, *, create: bool = False, exclusive: bool = False) -> File:
        path = _norm(path)
        inode = self._files.get(path)
        if inode is not None and exclusive:
            raise FileExistsError(errno.EEXIST, "file exists", path)
        if inode is None:
            if not (create or exclusive):
                raise FileNotFoundError(errno.ENOENT, "no such file", path)
            self._parent_ok(path)
            if path in self._dirs:
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            inode = _Inode()
            self._files[path] = inode
        return _FaultFile(self, inode, path)

    def mkdir(self, path: str) -> None:
        path = _norm(path)
        if path in self._dirs or path in self._files:
            raise FileExistsError(errno.EEXIST, "exists", path)
        self._parent_ok(path)
        self._dirs.add(path)

    def listdir(self, path: str) -> list[str]:
        path = _norm(path)
        if path not in self._dirs:
            raise FileNotFoundError(errno.ENOENT, "no such directory", path)
        names = [os.path.basename(p) for p in self._files if os.path.dirname(p) == path]
        names += [
            os.path.basename(d) for d in self._dirs if os.path.dirname(d) == path and d != path
        ]
        return sorted(names)

    def exists(self, path: str) -> bool:
        path = _norm(path)
        return path in self._files or path in self._dirs

    def is_dir(self, path: str) -> bool:
        return _norm(path) in self._dirs

    def remove(self, path: str) -> None:
        path = _norm(path)
        if path not in self._files:
            raise FileNotFoundError(errno.ENOENT, "no such file", path)
        del self._files[path]

    def rename(self, src: str, dst: str) -> None:
        src, dst = _norm(src), _norm(dst)
        if src not in self._files:
            raise FileNotFoundError(errno.ENOENT, "no such file", src)
        self._parent_ok(dst)
        self._files[dst] = self._files.pop(src)

    def sync_dir(self, path: str) -> None:
        path = _norm(path)
        if path not in self._dirs:
            raise FileNotFoundError(errno.ENOENT, "no such directory", path)
        self._check_sync(path)
        self._sync_names(path)
        self.syncs += 1

    def lock(self, path: str) -> DirLock:
        path = _norm(path)
        if path in self._locks:
            raise BlockingIOError(errno.EWOULDBLOCK, "lock held", path)
        if path not in self._files:
            self.open(path, create=True).close()
        self._locks.add(path)
        return _FaultLock(self, path, self._generation)


def _apply(data: bytearray, op: int, arg: int, payload: bytes) -> None:
    if op == _WRITE:
        end = arg + len(payload)
        if len(data) < end:
            data.extend(bytes(end - len(data)))
        data[arg:end] = payload
    elif arg < len(data):
        del data[arg:]
    else:
        data.extend(bytes(arg - len(data)))


class _FaultLock(DirLock):
    def __init__(self, fs: FaultFS, path: str, generation: int) -> None:
        self._fs, self._path, self._gen = fs, path, generation

    def release(self) -> None:
        if self._gen == self._fs._generation:
            self._fs._locks.discard(self._path)
        self._gen = -1


class _FaultFile(File):
    def __init__(self, fs: FaultFS, inode: _Inode, path: str) -> None:
        self._fs, self._inode, self._path = fs, inode, path
        self._gen = fs._generation
        self._closed = False

    def _live(self) -> _Inode:
        if self._closed:
            raise ValueError("I/O on a closed file")
        if self._gen != self._fs._generation:
            raise OSError(errno.EIO, "file handle from before a crash", self._path)
        return self._inode

    def pread(self, offset: int, size: int) -> bytes:
        return bytes(self._live().data[offset : offset + size])

    def pwrite(self, offset: int, data: bytes) -> None:
        inode = self._live()
        grow = max(0, offset + len(data) - len(inode.data))
        room = self._fs._room()
        if room is not None and grow > room:
            fits = len(data) - (grow - room)
            if fits > 0:
                _apply(inode.data, _WRITE, offset, bytes(data[:fits]))
                inode.pending.append((_WRITE, offset, bytes(data[:fits])))
            raise OSError(errno.ENOSPC, "no space left on device (injected)", self._path)
        _apply(inode.data, _WRITE, offset, bytes(data))
        inode.pending.append((_WRITE, offset, bytes(data)))

    def size(self) -> int:
        return len(self._live().data)

    def truncate(self, size: int) -> None:
        inode = self._live()
        room = self._fs._room()
        if room is not None and size - len(inode.data) > room:
            raise OSError(errno.ENOSPC, "no space left on device (injected)", self._path)
        _apply(inode.data, _TRUNCATE, size, b"")
        inode.pending.append((_TRUNCATE, size, b""))

    def allocate(self, size: int) -> None:
        if size > len(self._live().data):
            self.truncate(size)

    def sync(self) -> None:
        inode = self._live()
        try:
            self._fs._check_sync(self._path)
        except OSError:
            inode.pending = []  # the kernel dropped them: readable now, gone after a crash
            raise
        for op, arg, payload in inode.pending:  # cost proportional to the unsynced bytes
            _apply(inode.durable, op, arg, payload)
        inode.pending = []
        self._fs.syncs += 1

    def fullsync(self) -> None:
        self.sync()

    def close(self) -> None:
        self._closed = True
