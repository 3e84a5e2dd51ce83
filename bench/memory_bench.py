"""Memory per entry of a running loomd, measured from outside, next to redis-server.

    .venv/bin/python bench/memory_bench.py [--entries 1000000] [--snapshot-every 100]

A single-node loomd (real process, mutual TLS, fsync on) is loaded with `--entries` map entries
of 256-byte values (MAP_PUT_ALL, 1,000 per command); `raft.snapshot_every` is set so that it
takes several snapshots while loading. A thread samples the process's VmRSS from
/proc/PID/status every 100 ms; after the load, once the newest snapshot file covers the load,
the bench waits for the RSS to settle and reports RSS per entry at steady state and VmHWM (the
peak) per entry. Then the node is stopped and started again from its data directory: once it
serves the last key loaded, its settled RSS and its peak are reported as "restarted" (skip
with `--no-restart`). Then the same number of 256-byte values go into Debian's redis-server (SET
pipelined, no persistence), installed with apt-get if missing, and its `INFO memory`
(used_memory, used_memory_rss) and process RSS are reported the same way. The base RSS of each
process before loading is reported too, and subtracted in the "net" columns. Nothing is
asserted; the target (<= 1.5x Redis) is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import tomli_w
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cluster_bench import OK, LoomConn, say
from loom.chaos.cluster import free_ports
from loom.cli.loomd import EXAMPLE_ACL
from loom.security.devpki import create_dev_pki
from loom.security.tls import client_context
from loom.storage.snapshot import SNAP_RE

VALUE_BYTES = 256
PER_COMMAND = 1000
TARGET = 1.5


def status_kb(pid: int, field: str) -> int:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class RssSampler:
    """Samples a process's VmRSS every `period_s` on a thread; keeps the largest seen."""

    def __init__(self, pid: int, period_s: float = 0.1) -> None:
        self.pid = pid
        self.period_s = period_s
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, KeyError):
                self.peak_kb = max(self.peak_kb, status_kb(self.pid, "VmRSS"))
            self._stop.wait(self.period_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def settle(pid: int, seconds: float) -> int:
    """VmRSS once it stopped moving by more than 1% over a second (at most `seconds`)."""
    last = status_kb(pid, "VmRSS")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = status_kb(pid, "VmRSS")
        if abs(now - last) <= last // 100:
            return now
        last = now
    return last


# -- loomd -------------------------------------------------------------------------------------

@contextlib.contextmanager
def loomd(work: Path, snapshot_every: int) -> Iterator[tuple[list[subprocess.Popen[bytes]], str,
                                                              Path]]:
    """A node; `procs[-1]` is the running process (`restart` appends the next one)."""
    certs, d = work / "certs", work / "n1"
    create_dev_pki(certs)
    d.mkdir(parents=True)
    client, peer = (f"127.0.0.1:{p}" for p in free_ports(2))
    cfg: dict[str, Any] = {
        "node_id": "n1", "data_dir": str(d / "data"), "client_listen": client,
        "cluster_name": "loom", "peer_listen": peer, "peers": {"n1": peer},
        "trust_domain": "loom.dev", "require_client_auth": True, "log_level": "info",
        "tls": {"ca": str(certs / "ca.pem"), "cert": str(certs / "n1.pem"),
                "key": str(certs / "n1.key")},
        "audit": {"sink": "file", "path": str(d / "audit.jsonl")},
        "raft": {"snapshot_every": snapshot_every},
        "acl": EXAMPLE_ACL,
    }
    (d / "loomd.toml").write_text(tomli_w.dumps(cfg))
    procs = [start_loomd(d, new=True)]
    try:
        yield procs, client, d / "data" / "raft" / "snap"
    finally:
        stop(procs[-1])


def start_loomd(d: Path, *, new: bool = False) -> subprocess.Popen[bytes]:
    with (d / "loomd.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "loom.cli.loomd", "--config", str(d / "loomd.toml"),
             *(["--initial-cluster-state", "new"] if new else [])],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def newest_snapshot(snap_dir: Path) -> int:
    found = [int(m.group(1), 16) for n in (os.listdir(snap_dir) if snap_dir.exists() else [])
             if (m := SNAP_RE.match(n))]
    return max(found, default=0)


async def connect(addr: str, certs: Path) -> LoomConn:
    ctx = client_context(certs / "ca.pem", certs / "admin.pem", certs / "admin.key")
    deadline = trio.current_time() + 120
    while True:
        try:
            return await LoomConn.open(addr, ctx, 5.0)
        except (OSError, trio.TooSlowError, ConnectionError, EOFError):
            if trio.current_time() > deadline:
                raise
            await trio.sleep(0.5)


async def read_back(addr: str, certs: Path, entries: int) -> None:
    """Once a restarted node answers: a read of the last key loaded (the state is back)."""
    conn = await connect(addr, certs)
    try:
        key = f"k{entries - 1:09d}"
        for _ in range(600):
            r = await conn.call("MAP_GET", {"name": "m", "key": key}, 30.0)
            if r["s"] == OK and r.get("r") is not None:
                return
            await trio.sleep(0.2)
        raise RuntimeError(f"the restarted node does not answer {key}: {r}")
    finally:
        await conn.aclose()


async def load_loom(addr: str, certs: Path, entries: int) -> int:
    """Load the entries; returns the log index of the last command (its revision)."""
    conn = await connect(addr, certs)
    value = b"x" * VALUE_BYTES
    try:
        for c in range(0, entries, PER_COMMAND):
            batch = {f"k{i:09d}": value for i in range(c, min(entries, c + PER_COMMAND))}
            for _ in range(100):  # until the node has a leader (itself) and takes writes
                r = await conn.call("MAP_PUT_ALL", {"name": "m", "entries": batch}, 30.0)
                if r["s"] == OK:
                    break
                await trio.sleep(0.2)
            else:
                raise RuntimeError(f"MAP_PUT_ALL refused: {r}")
    finally:
        await conn.aclose()
    return entries // PER_COMMAND


def measure_loom(args: argparse.Namespace, work: Path) -> dict[str, float]:
    with loomd(work / "loom", args.snapshot_every) as (procs, addr, snap_dir):
        proc = procs[0]
        time.sleep(1.0)
        base = status_kb(proc.pid, "VmRSS")
        t0 = time.monotonic()
        with RssSampler(proc.pid) as sampler:
            commands = trio.run(load_loom, addr, work / "loom" / "certs", args.entries)
            load_s = time.monotonic() - t0
            # the newest snapshot covers all but less than `snapshot_every` commands, or the
            # policy is waiting for the log to reach half the last snapshot's size: wait a
            # bounded time for it
            deadline = time.monotonic() + args.snapshot_wait_s
            while (newest_snapshot(snap_dir) < commands - args.snapshot_every
                   and time.monotonic() < deadline):
                time.sleep(0.5)
            steady = settle(proc.pid, 30)
        hwm = status_kb(proc.pid, "VmHWM")
        snaps = sorted(snap_dir.glob("*.snap"))
        size = snaps[-1].stat().st_size if snaps else 0
        say(f"loomd: {args.entries} entries in {load_s:.0f} s; newest snapshot index "
            f"{newest_snapshot(snap_dir)} ({size / 1e6:.0f} MB file)")
        out: dict[str, float] = {"base_kb": base, "steady_kb": steady,
                                 "peak_kb": max(hwm, sampler.peak_kb)}
        if args.no_restart:
            return out
        # a restart: the state comes back from the newest snapshot and the log behind it
        stop(proc)
        t0 = time.monotonic()
        procs.append(again := start_loomd(work / "loom" / "n1"))
        with RssSampler(again.pid) as sampler:
            trio.run(read_back, addr, work / "loom" / "certs", args.entries)
            back_s = time.monotonic() - t0
            steady = settle(again.pid, 30)
        hwm = status_kb(again.pid, "VmHWM")
        say(f"loomd: restarted and serving the last key in {back_s:.0f} s")
        return out | {"restart_steady_kb": steady, "restart_peak_kb": max(hwm, sampler.peak_kb)}


# -- redis -------------------------------------------------------------------------------------

def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    say("redis-server missing: apt-get install -y redis-server")
    cmd = ["apt-get", "install", "-y", "redis-server"]
    if os.geteuid() != 0:
        cmd = ["sudo", "-n", *cmd]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("redis-server not found after installing it")
    return found


def resp(*parts: bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(p), p))
    return b"".join(out)


def redis_call(sock: socket.socket, payload: bytes, replies: int) -> bytes:
    """Send pipelined commands and read until `replies` replies arrived (simple ones only,
    except the last, a bulk string, which is returned)."""
    sock.sendall(payload)
    buf = b""
    while buf.count(b"\r\n") < replies:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise EOFError("redis closed the connection")
        buf += chunk
    if buf.startswith(b"$"):  # one bulk reply: read all of it
        head, _, rest = buf.partition(b"\r\n")
        need = int(head[1:]) + 2
        while len(rest) < need:
            rest += sock.recv(1 << 20)
        return rest[:-2]
    return buf


def measure_redis(args: argparse.Namespace, work: Path) -> dict[str, float]:
    port = free_ports(1)[0]
    d = work / "redis"
    d.mkdir()
    proc = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(d)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        with sock:
            base = status_kb(proc.pid, "VmRSS")
            value = b"x" * VALUE_BYTES
            with RssSampler(proc.pid) as sampler:
                for c in range(0, args.entries, PER_COMMAND):
                    hi = min(args.entries, c + PER_COMMAND)
                    cmds = b"".join(resp(b"SET", b"k%09d" % i, value) for i in range(c, hi))
                    redis_call(sock, cmds, hi - c)
                steady = settle(proc.pid, 30)
            info = redis_call(sock, resp(b"INFO", b"memory"), 1).decode()
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        hwm = status_kb(proc.pid, "VmHWM")
        say(f"redis: {fields.get('redis_version', '?')} used_memory "
            f"{int(fields['used_memory']) / 1e6:.0f} MB, used_memory_rss "
            f"{int(fields['used_memory_rss']) / 1e6:.0f} MB")
        return {"base_kb": base, "steady_kb": steady, "peak_kb": max(hwm, sampler.peak_kb),
                "used_memory": float(fields["used_memory"])}
    finally:
        stop(proc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--entries", type=int, default=1_000_000)
    p.add_argument("--snapshot-every", type=int, default=100,
                   help="raft.snapshot_every (commands of 1,000 entries between snapshots)")
    p.add_argument("--snapshot-wait-s", type=float, default=60.0,
                   help="how long to wait after the load for a snapshot covering it")
    p.add_argument("--skip-redis", action="store_true")
    p.add_argument("--no-restart", action="store_true",
                   help="skip restarting the node (RSS after recovering from its snapshot)")
    args = p.parse_args(argv)
    # a SIGTERM (a `timeout`, say) unwinds like Ctrl-C, so the servers started here are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    n: int = args.entries
    with tempfile.TemporaryDirectory(prefix="loom-membench-") as tmp:
        loom = measure_loom(args, Path(tmp))
        redis = None if args.skip_redis else measure_redis(args, Path(tmp))

    def per(kb: float) -> float:
        return kb * 1024 / n

    say("")
    say(f"{n} entries of {VALUE_BYTES}-byte values; bytes per entry (RSS / entries)")
    say(f"{'':8} | {'steady':>8} | {'peak':>8} | {'net steady':>10} | {'net peak':>8} | "
        f"{'base MB':>7}")
    rows = [("loomd", loom)]
    if "restart_steady_kb" in loom:
        rows.append(("restarted", {"steady_kb": loom["restart_steady_kb"],
                                   "peak_kb": loom["restart_peak_kb"],
                                   "base_kb": loom["base_kb"]}))
    rows += [("redis", redis)] if redis else []
    for name, m in rows:
        say(f"{name:8} | {per(m['steady_kb']):8.0f} | {per(m['peak_kb']):8.0f} | "
            f"{per(m['steady_kb'] - m['base_kb']):10.0f} | "
            f"{per(m['peak_kb'] - m['base_kb']):8.0f} | {m['base_kb'] / 1024:7.0f}")
    if redis:
        say(f"redis used_memory per entry: {redis['used_memory'] / n:.0f} B")
        for what, theirs in (("steady_kb", "steady_kb"), ("peak_kb", "peak_kb"),
                             ("restart_steady_kb", "steady_kb"), ("restart_peak_kb", "peak_kb")):
            if what not in loom:
                continue
            ratio = loom[what] / redis[theirs]
            say(f"loomd/redis {what[:-3].replace('_', ' ')}: {ratio:.2f} (target <= {TARGET}: "
                f"{'met' if ratio <= TARGET else 'NOT met'})")
    say(f"machine load average: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
