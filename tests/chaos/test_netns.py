"""The namespace network: a partition really cuts a pair's traffic (both ways, not the others',
not the host's) and heals; everything it created is gone after close(), and a dead harness's
leftovers are removed by the next one. Then one bounded chaos run on it.

Skipped, with the reason, where namespaces are unavailable (not root, no iproute2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loom.chaos import netns
from loom.chaos.netns import NetnsNetwork

WHY_NOT = netns.available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None,
                                reason=f"network namespaces unavailable: {WHY_NOT}")
PORT = 7400  # each namespace has its own ports: no clash with the host's or another test's

SERVE = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16); s.settimeout(60)
print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"hello"); c.close()
"""
CONNECT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5) as c:
        c.settimeout(1.5); print(c.recv(5).decode())
except OSError as e:
    print(type(e).__name__)
"""


def reach(net: NetnsNetwork, src: str | None, dst: str) -> bool:
    """Does a TCP connection from `src`'s namespace (None: the host) to `dst` get its greeting?"""
    argv = [sys.executable, "-c", CONNECT, net.host(dst), str(PORT)]
    out = subprocess.run(argv if src is None else net.wrap(src, argv), capture_output=True,
                         text=True, timeout=20, check=True).stdout.strip()
    return out == "hello"


@pytest.mark.timeout(120)
def test_a_cut_drops_the_pair_both_ways_and_heals() -> None:
    ids = ["a", "b", "c"]
    net = NetnsNetwork(ids)
    servers: list[subprocess.Popen[str]] = []
    try:
        net.setup()
        for nid in ids:
            p = subprocess.Popen(net.wrap(nid, [sys.executable, "-c", SERVE, net.host(nid),
                                                str(PORT)]), stdout=subprocess.PIPE, text=True)
            servers.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        assert reach(net, "a", "b") and reach(net, "b", "a") and reach(net, None, "a")
        net.cut("a", "b")
        assert not reach(net, "a", "b") and not reach(net, "b", "a")
        # the other links and the host (the clients' side) are untouched
        assert reach(net, "a", "c") and reach(net, "c", "b")
        assert reach(net, None, "a") and reach(net, None, "b")
        net.heal()
        assert reach(net, "a", "b") and reach(net, "b", "a")
        assert net.leftovers()  # still there until close()
    finally:
        for p in servers:
            p.kill()
            p.wait(10)
            if p.stdout is not None:
                p.stdout.close()
        net.close()
    assert net.leftovers() == []


@pytest.mark.timeout(60)
def test_a_dead_harness_leftovers_are_removed_at_the_next_start() -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, timeout=20, check=True)
    stale = NetnsNetwork(["x", "y"], prefix=f"lc{int(dead.stdout):x}_1")
    try:
        stale.setup()
        assert len(stale.leftovers()) >= 3  # two namespaces and the bridge (and host veths)
        fresh = NetnsNetwork(["x"])  # its set-up starts with the stale clean-up
        assert stale.ns("x") in fresh._stale and stale.bridge in fresh._stale
        assert stale.leftovers() == []
        fresh.close()
    finally:
        stale.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_bounded_chaos_run_in_namespaces(tmp_path: Path) -> None:
    out = tmp_path / "summary.json"
    with subprocess.Popen(
            [sys.executable, "-m", "loom.chaos", "--runs", "2", "--seconds", "12", "--seed",
             "4100", "--network", "netns", "--nemesis", "partition,kill,pause",
             "--workload", "register,counter,set", "--dir", str(tmp_path / "runs"),
             "--json", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as p:
        try:
            stdout, stderr = p.communicate(timeout=280)
        finally:
            p.kill()
    assert p.returncode == 0, f"chaos runs failed:\n{stdout}\n{stderr[-4000:]}"
    s = json.loads(out.read_text())
    assert s["network"] and all(n.startswith("netns") for n in s["network"]), s["network"]
    assert s["anomalies"] == 0 and sum(v for k, v in s["faults"].items()
                                       if k.startswith("partition-")) >= 1, s["faults"]
    # the harness removed every namespace and bridge it created (its pid is in their names)
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                             timeout=20, check=True).stdout
    assert f"lc{p.pid:x}_" not in listing
