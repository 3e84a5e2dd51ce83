"""Test-only fault hooks of a node: a skewed clock, a slow or failing fsync, power loss, and
planted bugs (mutants) that `loom.chaos` must catch.

They exist for `loom.chaos` (real processes under faults) and must never be on by accident:
- they are read once, at start, from the environment variable LOOM_TEST_HOOKS (JSON);
- loomd refuses to start when that variable is set without its `--enable-test-hooks` flag
  (a leftover variable is an error, not a silent fault injection), and logs every hook in force
  at WARNING;
- without them the node is built exactly as before (`Node(test_hooks=None)`): the production
  path never consults a hook.

Hooks (all optional): `clock_offset_ms` (added to the wall clock the node stamps proposals
with), `clock_rate` (the node's monotonic time and Raft ticks run this many times as fast:
elections, heartbeats and leases all follow it), `fsync_delay_ms` (every data sync of the
write-ahead log and snapshots sleeps this long first), `fsync_fail_after` (the Nth sync and
every later one fail with EIO: the storage then stops the node, which must never go on as if
the data were durable), `fsync_fail_file` (a path: every sync fails with EIO once that file
exists, so a harness arms the failure when the node is up and taking writes), `power_loss`
(what the node writes stays in its own memory until the file's next fsync, so a SIGKILL loses
every byte that was not synced, as a power cut does; see `HookedFS`).

Mutants: planted bugs, each one at its decision point in the node, that a chaos run must catch:
`ack_before_fsync` (implies `power_loss`: a data sync, the write-ahead log's per-batch
fdatasync, makes durable only what was pending at the previous one, so the node acknowledges
every appended batch one sync before it is durable; a full fsync still flushes everything),
`forget_removed` (the peer plane forgets that a removed member's id is refused by name: a
removed member is never told, loom/node/peer.py), `skip_identity_pin` (the peer plane steps a
Raft message whose sender is not the certificate's node id, loom/node/peer.py, A4).
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from loom.node.config import ConfigError
from loom.storage.fs import DirLock, File, FileSystem, OSFileSystem

ENV = "LOOM_TEST_HOOKS"
MUTANTS = ("ack_before_fsync", "forget_removed", "skip_identity_pin")
FLAG = "--enable-test-hooks"
INJECTED = "injected fsync failure"  # in the error a failed sync raises (loomd logs it)


@dataclass(frozen=True, slots=True)
class FaultHooks:
    clock_offset_ms: int = 0
    clock_rate: float = 1.0
    fsync_delay_ms: int = 0
    fsync_fail_after: int = 0  # 0: never
    fsync_fail_file: str = ""  # "": never; else every sync fails once this file exists
    power_loss: bool = False
    ack_before_fsync: bool = False  # mutant
    forget_removed: bool = False  # mutant
    skip_identity_pin: bool = False  # mutant

    def describe(self) -> str:
        return ", ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


def from_environ(environ: Mapping[str, str], *, enabled: bool) -> FaultHooks | None:
    """The hooks in force, or None. ConfigError when LOOM_TEST_HOOKS is set without the flag,
    or is not a JSON object of known hooks within their bounds."""
    raw = environ.get(ENV)
    if raw is None:
        return None
    if not enabled:
        raise ConfigError(f"{ENV} is set but loomd was not started with {FLAG}: refusing to "
                          f"start with test-only fault hooks (unset {ENV})")
    try:
        d: Any = json.loads(raw)
    except ValueError as e:
        raise ConfigError(f"{ENV}: not JSON: {e}") from None
    known = {f.name for f in fields(FaultHooks)}
    if not isinstance(d, dict) or set(d) - known:
        raise ConfigError(f"{ENV}: expected an object with keys among {sorted(known)}")
    try:
        flags = {k: d.get(k, False) for k in ("power_loss", *MUTANTS)}
        if not all(isinstance(v, bool) for v in flags.values()):
            raise TypeError("power_loss and the mutants are true or false")
        hooks = FaultHooks(clock_offset_ms=int(d.get("clock_offset_ms", 0)),
                          clock_rate=float(d.get("clock_rate", 1.0)),
                          fsync_delay_ms=int(d.get("fsync_delay_ms", 0)),
                          fsync_fail_after=int(d.get("fsync_fail_after", 0)),
                          fsync_fail_file=d.get("fsync_fail_file", ""), **flags)
        if not isinstance(hooks.fsync_fail_file, str):
            raise TypeError("fsync_fail_file is a path")
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{ENV}: {e}") from None
    if not (abs(hooks.clock_offset_ms) <= 86_400_000 and 0.1 <= hooks.clock_rate <= 10
            and 0 <= hooks.fsync_delay_ms <= 10_000 and hooks.fsync_fail_after >= 0):
        raise ConfigError(f"{ENV}: out of bounds: {hooks.describe()}")
    return hooks


def wall_ms(hooks: FaultHooks) -> Any:
    return lambda: time.time_ns() // 1_000_000 + hooks.clock_offset_ms


def mono_s(hooks: FaultHooks) -> Any:
    return lambda: time.monotonic() * hooks.clock_rate


_WRITE, _TRUNCATE = 0, 1
Op = tuple[int, int, bytes]  # (_WRITE, offset, data) or (_TRUNCATE, size, b"")


class HookedFS(FileSystem):
    """The real file system, with every file's syncs delayed and/or failing, and with
    `power_loss`, a page cache that dies with the process.

    Power loss: a file's writes and truncations are kept here, in order, per inode (so every
    open of the file, and a renamed file, sees them, as with the kernel's page cache) and reach
    the file only at its next sync. A SIGKILL then leaves on disk exactly what was synced. Not
    modelled: directory entries (create, rename, remove) are durable at once, and no write is
    torn (loom/storage/faultfs.py models both, in memory, for the simulator).
    Memory: what a file writes between two syncs (the storage syncs every batch it saves)."""

    def __init__(self, hooks: FaultHooks, inner: FileSystem | None = None) -> None:
        self.hooks = hooks
        self.inner = inner or OSFileSystem()
        self.syncs = 0
        self.buffered = hooks.power_loss or hooks.ack_before_fsync
        self.pending: dict[tuple[int, int], list[Op]] = {}  # inode -> ops not yet synced
        self.lagging: dict[tuple[int, int], list[Op]] = {}  # ack_before_fsync: the next sync's

    def _sync(self) -> None:
        self.syncs += 1
        if self.hooks.fsync_delay_ms:
            time.sleep(self.hooks.fsync_delay_ms / 1000)
        if (self.hooks.fsync_fail_after and self.syncs >= self.hooks.fsync_fail_after) or \
                (self.hooks.fsync_fail_file and os.path.exists(self.hooks.fsync_fail_file)):
            raise OSError(errno.EIO, f"{ENV}: {INJECTED} #{self.syncs}")

    def open(self, path: str, *, create: bool = False, exclusive: bool = False) -> File:
        f = self.inner.open(path, create=create, exclusive=exclusive)
        return _HookedFile(self, f, _inode(path) if self.buffered else (0, 0))

    def flush(self, ino: tuple[int, int], f: File, *, data_sync: bool) -> None:
        """A sync of inode `ino` (open as `f`): its pending ops reach the file. The mutant's
        data sync writes only those of the previous data sync and keeps these for the next."""
        ops, newer = self.lagging.pop(ino, []), self.pending.pop(ino, [])
        if self.hooks.ack_before_fsync and data_sync:
            self.lagging[ino] = newer  # durable at the next sync, acknowledged already
        else:
            ops += newer
        for op, arg, data in ops:
            if op == _WRITE:
                f.pwrite(arg, data)
            else:
                f.truncate(arg)

    def mkdir(self, path: str) -> None:
        self.inner.mkdir(path)

    def listdir(self, path: str) -> list[str]:
        return self.inner.listdir(path)

    def exists(self, path: str) -> bool:
        return self.inner.exists(path)

    def is_dir(self, path: str) -> bool:
        return self.inner.is_dir(path)

    def remove(self, path: str) -> None:
        if self.buffered:  # its unsynced ops die with it (an inode number may be reused)
            ino = _inode(path)
            self.pending.pop(ino, None)
            self.lagging.pop(ino, None)
        self.inner.remove(path)

    def rename(self, src: str, dst: str) -> None:
        self.inner.rename(src, dst)

    def sync_dir(self, path: str) -> None:
        self._sync()
        self.inner.sync_dir(path)

    def lock(self, path: str) -> DirLock:
        return self.inner.lock(path)


def _inode(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


class _HookedFile(File):
    def __init__(self, fs: HookedFS, inner: File, ino: tuple[int, int]) -> None:
        self.fs = fs
        self.inner = inner
        self.ino = ino

    def _ops(self) -> list[Op]:
        return [*self.fs.lagging.get(self.ino, ()), *self.fs.pending.get(self.ino, ())]

    def pread(self, offset: int, size: int) -> bytes:
        ops = self._ops() if self.fs.buffered else []
        if not ops:
            return self.inner.pread(offset, size)
        # the file as the process sees it: what is on disk, then every unsynced op in order
        buf = bytearray(self.inner.pread(offset, size).ljust(size, b"\0"))
        length = self.inner.size()
        for op, arg, data in ops:
            if op == _WRITE:
                lo, hi = max(arg, offset), min(arg + len(data), offset + size)
                if lo < hi:
                    buf[lo - offset:hi - offset] = data[lo - arg:hi - arg]
                length = max(length, arg + len(data))
            else:
                if arg < offset + size:  # cut off, then zeros if the file grows again
                    start = max(arg - offset, 0)
                    buf[start:] = bytes(len(buf) - start)
                length = arg
        return bytes(buf[:max(0, min(size, length - offset))])

    def pwrite(self, offset: int, data: bytes) -> None:
        if self.fs.buffered:
            self.fs.pending.setdefault(self.ino, []).append((_WRITE, offset, bytes(data)))
        else:
            self.inner.pwrite(offset, data)

    def size(self) -> int:
        length = self.inner.size()
        for op, arg, data in self._ops() if self.fs.buffered else ():
            length = max(length, arg + len(data)) if op == _WRITE else arg
        return length

    def truncate(self, size: int) -> None:
        if self.fs.buffered:
            self.fs.pending.setdefault(self.ino, []).append((_TRUNCATE, size, b""))
        else:
            self.inner.truncate(size)

    def allocate(self, size: int) -> None:
        # reserves blocks, changes no byte a reader sees unless the file grows: then it is
        # a pending extension like any other
        if not self.fs.buffered:
            self.inner.allocate(size)
        elif self.size() < size:
            self.fs.pending.setdefault(self.ino, []).append((_WRITE, size - 1, b"\0"))

    def sync(self) -> None:
        self.fs._sync()
        if self.fs.buffered:
            self.fs.flush(self.ino, self.inner, data_sync=True)
        self.inner.sync()

    def fullsync(self) -> None:
        self.fs._sync()
        if self.fs.buffered:
            self.fs.flush(self.ino, self.inner, data_sync=False)
        self.inner.fullsync()

    def close(self) -> None:
        self.inner.close()
