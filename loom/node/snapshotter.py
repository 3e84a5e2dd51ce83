"""Serialising a snapshot in a forked child, so the Raft driver keeps working meanwhile.

Serialising the state machine is CPU-bound Python holding the GIL: on the driver task it stops
heartbeats and replication for as long as it takes (about 1 s per million map entries), long
enough for followers to elect someone else. `fork()` gives a child a copy-on-write image of the
state at the instant of the call; the child runs `serialise` over that image and streams what
it returns back through a pipe while the parent goes on. This is how Redis writes its RDB
files, and as Redis does, the driver's child writes the snapshot file itself and returns only
a short report (`snapshots.py`), so the parent never holds the bytes; a backup's child
returns the bytes.

Invariants:
- The fork happens synchronously in the driver, between two Ready batches, so the image is
  exactly the state at the applied index the driver recorded for it.
- The child runs only `serialise` and a write loop, then `os._exit`: no trio, no logging, no
  garbage collection (no finaliser may run on copies of the parent's objects), no atexit
  hooks, default signal handlers. If anything fails it exits non-zero and the parent gets None.
- The parent reads the pipe and reaps the child in worker threads; cancelling the wait kills
  the child, so a stopping node never leaves one behind.
- Memory: pages the child touches are copied (reference counts live in every object's header),
  up to one more copy of the state in the child while it runs; the parent's memory does not
  grow unless it writes to those pages meanwhile.
"""

from __future__ import annotations

import gc
import os
import signal
import warnings
from collections.abc import Callable

import trio

CAN_FORK = hasattr(os, "fork")


class Child:
    """A child process serialising one snapshot; `await result()` once, from any task."""

    def __init__(self, pid: int, read_fd: int) -> None:
        self.pid = pid
        self._fd = read_fd

    async def result(self) -> bytes | None:
        """The serialised bytes, or None if the child failed or was killed."""
        try:
            data = await trio.to_thread.run_sync(_read_all, self._fd, abandon_on_cancel=True)
            _, status = await trio.to_thread.run_sync(os.waitpid, self.pid, 0)
        except BaseException:
            self._kill()
            raise
        return data if os.waitstatus_to_exitcode(status) == 0 else None

    def _kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        # The reading thread, abandoned, sees EOF now and closes the descriptor itself.


def start(serialise: Callable[[], bytes]) -> Child:
    """Fork now; the child serialises its image of this process with `serialise`."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads: the child here never
        # touches a lock another thread could hold (see the module invariants).
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            gc.disable()
            os.close(read_fd)
            try:  # only possible from the main thread, where trio runs in loomd
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
            except ValueError:
                pass
            view = memoryview(serialise())
            while view:
                view = view[os.write(write_fd, view):]
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    return Child(pid, read_fd)


def _read_all(fd: int) -> bytes:
    with open(fd, "rb", closefd=True) as f:
        return f.read()
