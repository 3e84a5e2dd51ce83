"""LEADER_TRANSFER answers once the transfer's outcome is known, with real processes.

- OK only once the target leads: `loomctl leader transfer --to X` prints "leadership
  transferred to X" and X already says it leads, in the term the answer names.
- A target that cannot take office (stopped with SIGSTOP) gets BUSY when the transfer window
  closes, within about an election timeout, with the old leader still leading; not an OK
  for a transfer that never happened.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import trio

from tests.cluster.conftest import BUSY, OK, Cluster

pytestmark = pytest.mark.slow


async def loomctl_text(cluster: Cluster, *args: str) -> str:
    admin_pem, admin_key = cluster.pki.pair("admin")
    endpoints = ",".join(n.client_addr for n in cluster.nodes.values())
    cmd = [sys.executable, "-m", "loom.cli.loomctl", "--endpoints", endpoints,
           "--ca", str(cluster.pki.ca), "--cert", str(admin_pem), "--key", str(admin_key),
           *args]
    with trio.fail_after(60):
        p = await trio.run_process(cmd, stdin=subprocess.DEVNULL, capture_stdout=True,
                                   capture_stderr=True, check=False)
    out = p.stdout.decode("utf-8", "replace").strip()
    assert p.returncode == 0, f"loomctl {' '.join(args)} exited {p.returncode}: {out} " \
                              f"{p.stderr.decode('utf-8', 'replace')}"
    return out


async def test_transfer_answers_once_the_target_leads(cluster: Cluster) -> None:
    old = await cluster.wait_leader()
    await cluster.wait_converged()
    to = next(n for n in cluster.ids if n != old)
    before = await cluster.status(old)
    assert before is not None

    out = await loomctl_text(cluster, "leader", "transfer", "--to", to)
    assert out == f"leadership transferred to {to}", out
    st = await cluster.status(to)  # asked after the answer: no waiting, no polling
    assert st is not None and st["term"] > before["term"], st
    assert st["role"] == "leader" or st["term"] > before["term"] + 1, st

    # The binary answer names the new leader and its term; asked of the node that leads
    # already, a transfer to it is answered OK at once (a retried request is not an error).
    conn = await cluster.connect(to)
    r = await conn.request("LEADER_TRANSFER", to=old)
    if r["s"] == BUSY:  # the window closed on a loaded machine: once more
        r = await conn.request("LEADER_TRANSFER", to=old)
    assert r["s"] == OK, r
    assert r["r"]["to"] == old and r["r"]["leader"] == old and r["r"]["term"] > st["term"], r
    back = await cluster.connect(old)
    again = await back.request("LEADER_TRANSFER", to=old)
    assert again["s"] == OK and again["r"]["leader"] == old, again


async def test_a_transfer_to_a_stopped_target_answers_busy_when_the_window_closes(
        cluster: Cluster) -> None:
    leader = await cluster.wait_leader()
    await cluster.wait_converged()
    target = next(n for n in cluster.ids if n != leader)
    conn = await cluster.connect(leader)
    cluster.pause(target)
    try:
        t0 = trio.current_time()
        r = await conn.request("LEADER_TRANSFER", to=target, timeout=5)
        took = trio.current_time() - t0
        assert r["s"] == BUSY, r
        assert f"{target} did not take office" in r["e"]["msg"], r
        assert took < 3, took  # the window is election_ticks_min ticks (200 ms here)
        st = await cluster.status(leader)
        assert st is not None and st["role"] == "leader", st
    finally:
        cluster.resume(target)
