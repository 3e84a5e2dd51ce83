"""A refused request is never "maybe applied": the clients and loomctl against a real node.

A value larger than the frame limit is refused by the client before it is sent (the server
could only cut the connection); a value over `max_value_bytes` is refused by the server with
TOO_LARGE and a request id. Either way the caller hears TOO_LARGE at once, with the limit, and
not an IndeterminateError after seconds of retries.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from loom.client import Client, IndeterminateError, RetryPolicy, open_client
from loom.node.config import StateSettings
from loom.node.server import Node
from loom.wire.errors import TooLarge
from tests.conftest import PKI, NodeFactory

BIG = b"x" * (2 << 20)  # 2 MiB: over the default 1 MiB frame limit
FRAME_LIMIT = 1 << 20
RETRY = RetryPolicy(attempts=16, base=0.05, cap=2.0)


def opts(pki: PKI) -> dict[str, Any]:
    cert, key = pki.pair("admin")
    return {"ca": pki.ca, "cert": cert, "key": key, "retry": RETRY, "timeout": 10.0}


def at_once(fn: Callable[[], Any]) -> TooLarge:
    """Run `fn`, which must raise TooLarge (never IndeterminateError) well within a second."""
    start = time.monotonic()
    with pytest.raises(TooLarge) as info:
        fn()
    assert not isinstance(info.value, IndeterminateError)
    assert time.monotonic() - start < 1.0
    return info.value


async def test_value_over_the_frame_limit_is_refused_at_once(pki: PKI, node: Node) -> None:
    ep = f"127.0.0.1:{node.port}"

    async with open_client([ep], **opts(pki)) as c:
        start = trio.current_time()
        with pytest.raises(TooLarge, match=f"frame limit of {FRAME_LIMIT} bytes"):
            await c.map_put("m", "k", BIG)
        assert trio.current_time() - start < 1.0
        assert await c.map_put("m", "k", b"small") is None  # the connection is still usable

    def blocking() -> TooLarge:
        with Client([ep], **opts(pki)) as c:
            return at_once(lambda: c.map_put("m", "k", BIG))

    err = await trio.to_thread.run_sync(blocking)
    assert str(FRAME_LIMIT) in err.message

    async def on_asyncio() -> None:
        async with open_client([ep], **opts(pki)) as c:
            with pytest.raises(TooLarge, match=str(FRAME_LIMIT)):
                await c.map_put("m", "k", BIG)
            assert await c.map_get("m", "k") == b"small"

    await trio.to_thread.run_sync(asyncio.run, on_asyncio())


async def test_value_over_max_value_bytes_is_refused_by_the_server(
        pki: PKI, start_node: NodeFactory) -> None:
    n = await start_node(state=StateSettings(max_value_bytes=1024))
    ep = f"127.0.0.1:{n.port}"

    async with open_client([ep], **opts(pki)) as c:
        with pytest.raises(TooLarge, match="max_value_bytes 1024"):
            await c.map_put("m", "k", b"y" * 2000)

    def blocking() -> TooLarge:
        with Client([ep], **opts(pki)) as c:
            return at_once(lambda: c.map_put("m", "k", b"y" * 2000))

    assert "1024" in (await trio.to_thread.run_sync(blocking)).message


async def test_loomctl_put_of_a_file_over_the_limit(pki: PKI, node: Node, tmp_path: Path
                                                    ) -> None:
    big = tmp_path / "big"
    big.write_bytes(BIG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    cert, key = pki.pair("admin")
    env.update(LOOM_ENDPOINTS=f"127.0.0.1:{node.port}", LOOM_CA=str(pki.ca),
               LOOM_CERT=str(cert), LOOM_KEY=str(key))

    def run() -> tuple[subprocess.CompletedProcess[str], float]:
        start = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "loom.cli.loomctl", "put", "k", "--file",
                            str(big)], env=env, capture_output=True, text=True, timeout=60,
                           check=False)
        return r, time.monotonic() - start

    r, took = await trio.to_thread.run_sync(run)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("loomctl: TOO_LARGE"), r.stderr
    assert str(FRAME_LIMIT) in r.stderr and "may or may not" not in r.stderr
    assert took < 5.0  # the interpreter's start-up; no ~9 s of retries
