"""A hostile connection sending the costliest frames it can build, at full speed, against a
real 3-node cluster (SECURITY-CATALOGUE F2, G2).

The hostile client (bench/hostile_frames_bench.py in its hostile mode, in its own process,
with a reader certificate: no ACL check comes before decoding) sends, in turn, the 1 MiB
frame of nested empty arrays, frames just under the per-frame item limit, and frames of
containers just under the per-container limit, as fast as the leader reads them. Meanwhile
16 writers run closed-loop MAP_PUTs on the leader. Asserted: every write succeeds, the hostile
frames are answered with errors, no node crashes, and nobody starts an election (the 20 ms
ticks here time out after 200-400 ms: a stalled event loop shows at once). The writers'
throughput against a quiet phase is printed; `bench/hostile_frames_bench.py` measures it
(the machine is shared, so a timed floor here could fail for reasons of its own).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import pytest
import trio

from tests import conftest as base
from tests.cluster.conftest import FAST_RAFT, Cluster, Conn, ConnError

pytestmark = pytest.mark.slow

BENCH = Path(__file__).resolve().parents[2] / "bench" / "hostile_frames_bench.py"
WRITERS = 16
PHASE_S = 3.0
OK = 0


async def _writers(cluster: Cluster, nid: str) -> tuple[int, int]:
    """16 closed-loop writers for PHASE_S: (writes answered OK, other answers)."""
    conns = [await cluster.connect(nid, name="writer") for _ in range(WRITERS)]
    ok = bad = 0
    deadline = trio.current_time() + PHASE_S

    async def one(i: int, c: Conn) -> None:
        nonlocal ok, bad
        n = 0
        while trio.current_time() < deadline:
            r = await c.request("MAP_PUT", name="hostile-test", key=f"w{i}-{n}",
                                value=b"x" * 256)
            n += 1
            if r["s"] == OK:
                ok += 1
            else:
                bad += 1

    async with trio.open_nursery() as ns:
        for i, c in enumerate(conns):
            ns.start_soon(one, i, c)
    return ok, bad


def _cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _terms(cluster: Cluster) -> dict[str, tuple[int, str]]:
    st = await cluster.statuses(list(cluster.ids))
    assert set(st) == set(cluster.ids), st
    return {nid: (s["term"], s["leader"]) for nid, s in st.items()}


async def test_hostile_frames_do_not_stop_writers_or_elect(pki: Any, tmp_path: Path,
                                                           nursery: trio.Nursery) -> None:
    cluster = Cluster(cast(base.PKI, pki), tmp_path / "cluster", nursery, ("n1", "n2", "n3"),
                      FAST_RAFT, proxied=False)
    try:
        await cluster.start()
        leader = await cluster.wait_leader()
        await cluster.wait_converged()
        before = await _terms(cluster)
        proc = cluster.nodes[leader].proc
        assert proc is not None
        cpu0, lcpu0 = time.process_time(), _cpu(proc.pid)
        quiet_ok, quiet_bad = await _writers(cluster, leader)
        quiet_cpu, quiet_lcpu = time.process_time() - cpu0, _cpu(proc.pid) - lcpu0
        assert quiet_bad == 0 and quiet_ok > 0

        hostile = subprocess.Popen(
            [sys.executable, str(BENCH), "--hostile", "worst", "--port",
             str(cluster.nodes[leader].client_port), "--certs", str(pki.dir)],
            stdout=subprocess.PIPE, text=True)
        try:
            assert hostile.stdout is not None
            ready = await trio.to_thread.run_sync(hostile.stdout.readline)
            assert ready.strip() == "ready"
            await trio.sleep(0.5)
            t0, cpu0, lcpu0 = time.perf_counter(), time.process_time(), _cpu(proc.pid)
            hcpu0 = _cpu(hostile.pid)
            loud_ok, loud_bad = await _writers(cluster, leader)
            elapsed, loud_cpu = time.perf_counter() - t0, time.process_time() - cpu0
            loud_lcpu, hcpu = _cpu(proc.pid) - lcpu0, _cpu(hostile.pid) - hcpu0
        finally:
            hostile.terminate()
            out, _ = hostile.communicate(timeout=30)
        sent = [line for line in out.splitlines() if line.startswith("sent")]
        assert sent, f"the hostile client never got going: {out!r}"
        n_sent, n_answered = (int(x) for x in sent[-1].split()[1::2])
        assert n_sent >= 50 and n_answered > 0, sent[-1]

        assert loud_bad == 0, "a writer's request failed while the hostile client ran"
        assert loud_ok > 0
        assert all(cluster.nodes[n].running for n in cluster.ids), "a node died"
        after = await _terms(cluster)
        assert after == before, f"an election happened: {before} -> {after}"
        # Still serving normally afterwards.
        c = await cluster.connect(leader, name="writer")
        assert (await c.request("MAP_PUT", name="hostile-test", key="after",
                                value=b"v"))["s"] == OK
        quiet, loud = quiet_ok / PHASE_S, loud_ok / elapsed
        print(f"writers: {quiet:.0f} writes/s quiet, {loud:.0f} writes/s with the hostile "
              f"client ({100 * loud / quiet:.0f}%); "
              f"hostile frames: {sent[-1]}; CPU quiet / hostile: writers "
              f"{quiet_cpu / PHASE_S:.0%} / {loud_cpu / elapsed:.0%}, leader "
              f"{quiet_lcpu / PHASE_S:.0%} / {loud_lcpu / elapsed:.0%}, hostile client "
              f"{hcpu / elapsed:.0%}")
    except (ConnError, AssertionError):
        cluster.dump_logs()
        raise
    finally:
        await cluster.aclose()
