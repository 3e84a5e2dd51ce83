"""Test-only fault hooks of a node: a skewed clock and a slow or failing fsync.

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
the data were durable).
"""

from __future__ import annotations

import errno
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from loom.node.config import ConfigError
from loom.storage.fs import DirLock, File, FileSystem, OSFileSystem

ENV = "LOOM_TEST_HOOKS"
FLAG = "--enable-test-hooks"


@dataclass(frozen=True, slots=True)
class FaultHooks:
    clock_offset_ms: int = 0
    clock_rate: float = 1.0
    fsync_delay_ms: int = 0
    fsync_fail_after: int = 0  # 0: never

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
        hooks = FaultHooks(clock_offset_ms=int(d.get("clock_offset_ms", 0)),
                          clock_rate=float(d.get("clock_rate", 1.0)),
                          fsync_delay_ms=int(d.get("fsync_delay_ms", 0)),
                          fsync_fail_after=int(d.get("fsync_fail_after", 0)))
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


class HookedFS(FileSystem):
    """The real file system, with every file's syncs delayed and/or failing."""

    def __init__(self, hooks: FaultHooks, inner: FileSystem | None = None) -> None:
        self.hooks = hooks
        self.inner = inner or OSFileSystem()
        self.syncs = 0

    def _sync(self) -> None:
        self.syncs += 1
        if self.hooks.fsync_delay_ms:
            time.sleep(self.hooks.fsync_delay_ms / 1000)
        if self.hooks.fsync_fail_after and self.syncs >= self.hooks.fsync_fail_after:
            raise OSError(errno.EIO, f"{ENV}: injected fsync failure #{self.syncs}")

    def open(self, path: str, *, create: bool = False, exclusive: bool = False) -> File:
        return _HookedFile(self, self.inner.open(path, create=create, exclusive=exclusive))

    def mkdir(self, path: str) -> None:
        self.inner.mkdir(path)

    def listdir(self, path: str) -> list[str]:
        return self.inner.listdir(path)

    def exists(self, path: str) -> bool:
        return self.inner.exists(path)

    def is_dir(self, path: str) -> bool:
        return self.inner.is_dir(path)

    def remove(self, path: str) -> None:
        self.inner.remove(path)

    def rename(self, src: str, dst: str) -> None:
        self.inner.rename(src, dst)

    def sync_dir(self, path: str) -> None:
        self._sync()
        self.inner.sync_dir(path)

    def lock(self, path: str) -> DirLock:
        return self.inner.lock(path)


class _HookedFile(File):
    def __init__(self, fs: HookedFS, inner: File) -> None:
        self.fs = fs
        self.inner = inner

    def pread(self, offset: int, size: int) -> bytes:
        return self.inner.pread(offset, size)

    def pwrite(self, offset: int, data: bytes) -> None:
        self.inner.pwrite(offset, data)

    def size(self) -> int:
        return self.inner.size()

    def truncate(self, size: int) -> None:
        self.inner.truncate(size)

    def allocate(self, size: int) -> None:
        self.inner.allocate(size)

    def sync(self) -> None:
        self.fs._sync()
        self.inner.sync()

    def fullsync(self) -> None:
        self.fs._sync()
        self.inner.fullsync()

    def close(self) -> None:
        self.inner.close()
