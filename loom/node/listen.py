"""Accepting connections, shared by the client and peer listeners."""

from __future__ import annotations

import logging

import trio

log = logging.getLogger("loom.listen")

ACCEPT_BACKOFF_S = 0.1


async def accept(listener: trio.SocketListener, what: str) -> trio.SocketStream:
    """The next connection. Out of file descriptors (EMFILE) and similar errors are logged and
    retried after a short pause instead of spinning or ending the listener."""
    while True:
        try:
            return await listener.accept()
        except OSError as e:
            log.warning("%s: accept failed: %s", what, e)
            await trio.sleep(ACCEPT_BACKOFF_S)
