"""`make run` owns its nodes: they stop when it stops (Ctrl-C, SIGTERM, the hangup of a closing
terminal, even kill -9), and a second runner on the same directory refuses to start."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "run_local.py"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")]


def _free_block(n: int) -> int:
    """A base port with n consecutive free ports on 127.0.0.1."""
    for _ in range(200):
        base = random.randrange(20_000, 60_000)
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no free block of ports")


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(x) for x in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[tuple[list[str], Path]]:
    base = _free_block(10)
    argv = [sys.executable, str(SCRIPT), "--run-dir", str(tmp_path / "run"),
            "--client-port", str(base), "--peer-port", str(base + 3),
            "--http-port", str(base + 6), "--gateway-port", str(base + 9)]
    yield argv, tmp_path / "run"


def _start(argv: list[str]) -> tuple[subprocess.Popen[str], list[int]]:
    """The runner, in a session of its own as a shell would start it in a terminal; returns
    once it says the cluster is running, with the pids of its three nodes and its gateway."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:  # the runner gives up by itself after 30 s without a leader
        seen.append(line)
        if "Loom is running" in line:
            break
    else:
        raise AssertionError("runner ended: " + "".join(seen))
    cmdlines = {c: Path(f"/proc/{c}/cmdline").read_text() for c in _children(proc.pid)}
    nodes = [c for c, cmd in cmdlines.items() if "loomd" in cmd]
    gateways = [c for c, cmd in cmdlines.items() if "loom-gateway" in cmd]
    assert len(nodes) == 3 and len(gateways) == 1, cmdlines
    return proc, nodes + gateways


def _gone_within(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def _cleanup(proc: subprocess.Popen[str], pids: list[int]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.stdout:
        proc.stdout.close()


def test_hangup_stops_the_nodes_and_a_second_runner_is_refused(
        runner: tuple[list[str], Path]) -> None:
    argv, run = runner
    proc, nodes = _start(argv)
    try:
        # The nodes are not in the runner's process group, so a terminal's hangup misses them.
        assert all(os.getpgid(n) != os.getpgid(proc.pid) for n in nodes)
        second = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        assert second.returncode == 1
        assert f"already running from {run}" in second.stderr
        assert f"pid {proc.pid}" in second.stderr
        assert all(_alive(n) for n in nodes)  # the refused runner touched nothing

        os.killpg(proc.pid, signal.SIGHUP)  # what a closing terminal does
        assert proc.wait(timeout=30) == 0
        assert _gone_within(nodes, 5)
    finally:
        _cleanup(proc, nodes)
    # The lock went with the runner: a new one starts, and dies by SIGKILL without cleaning up;
    # the kernel still stops its nodes.
    proc, nodes = _start(argv)
    try:
        proc.kill()
        proc.wait(timeout=10)
        assert _gone_within(nodes, 30)
    finally:
        _cleanup(proc, nodes)
