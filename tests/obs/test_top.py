"""`loomctl top`: the real command against a real node under load, as JSON lines and as the
table printed when the output is not a terminal; and the rates' arithmetic."""

from __future__ import annotations

import json
import os
import sys

import pytest
import trio

from loom.cli.loomctl.top import Sample, p99_bound, row
from tests.conftest import PKI, NodeFactory
from tests.node.conftest import Dial


def _env(pki: PKI, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOM_")}
    env.update(LOOM_ENDPOINTS=f"127.0.0.1:{port}", LOOM_CA=str(pki.ca),
               LOOM_CERT=str(pki.dir / "admin.pem"), LOOM_KEY=str(pki.dir / "admin.key"))
    return env


@pytest.mark.timeout(60)
async def test_top_shows_a_loaded_nodes_rates(start_node: NodeFactory, dial: Dial,
                                              pki: PKI) -> None:
    node = await start_node()
    reader = await dial(node, "reader", hello=True)
    admin = await dial(node, "admin", hello=True)
    stop = trio.Event()

    async def load() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            assert (await admin.request("MAP_PUT", name="m", key=f"k{i}", value=b"v"))["s"] == 0
            assert (await reader.request("MAP_PUT", name="m", key="x", value=b"v"))["s"] == 3
            await trio.sleep(0.005)

    cmd = [sys.executable, "-m", "loom.cli.loomctl", "-o", "json", "top", "--interval", "0.5",
           "--count", "2"]
    async with trio.open_nursery() as ns:
        ns.start_soon(load)
        r = await trio.run_process(cmd, env=_env(pki, node.port), capture_stdout=True,
                                   capture_stderr=True, check=False)
        stop.set()
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.decode().splitlines()]
    assert len(lines) == 2
    for line in lines:
        (n,) = line["nodes"]
        assert n["role"] == "leader" and n["term"] >= 1 and n["applied"] >= 1
        assert n["requests_per_s"] > 10 and n["refused_per_s"] > 5, n
        assert n["errors_per_s"] == 0
        assert 0 < n["mean_latency_s"] < 1 and n["p99_latency_le_s"] >= n["mean_latency_s"] / 10

    text = await trio.run_process([*cmd[:3], *cmd[5:]], env=_env(pki, node.port),
                                  capture_stdout=True, capture_stderr=True, check=False)
    assert text.returncode == 0, text.stderr
    out = text.stdout.decode()
    assert out.count("REQ/S") == 2 and "leader" in out and f"127.0.0.1:{node.port}" in out


def test_rates_are_over_the_interval() -> None:
    b = Sample(10.0, "leader", 2, 5, 100, 4, 1, 0.5, 100, ((0.001, 50), (0.01, 100),
                                                            (float("inf"), 100)))
    n = Sample(12.0, "leader", 2, 9, 300, 8, 1, 1.5, 300, ((0.001, 60), (0.01, 295),
                                                           (float("inf"), 300)))
    r = row("a:1", n, b)
    assert r["requests_per_s"] == 100 and r["refused_per_s"] == 2 and r["errors_per_s"] == 0
    assert r["mean_latency_s"] == pytest.approx(0.005)
    assert p99_bound(n, b) == float("inf")  # 5 of 200 above 10 ms: the 99th is in +Inf
    assert row("a:1", n, None)["requests_per_s"] is None  # one sample: no rate yet
