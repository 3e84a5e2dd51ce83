"""Hostile frames against a real node: what costly-to-decode frames do to honest writers.

    .venv/bin/python bench/hostile_frames_bench.py [--seconds 8] [--writers 16]

Starts one real `loomd` (TLS 1.3, client certificates, file audit sink), runs `--writers`
closed-loop MAP_PUT clients for `--seconds` alone, then again while one hostile connection
(a reader certificate, in its own process) sends the worst frames it can build at full speed,
one kind at a time:

- `bomb`: the 1 MiB frame of the report, a MAP_PUT whose body is 349,000 `[[]]`;
- `at-limit`: frames just under the per-frame item limit, body before opcode, so that the
  scan passes them and cbor2 decodes every item (the costliest frame that gets decoded);
- `containers`: frames of many containers just under the per-container limit, over the
  per-frame limit (refused by the scan at the last item it reads);
- `worst` (hostile mode only): the three in turn.

Prints writes/s and p99 for each phase, the node's CPU, the hostile frames sent, and the CPU
per frame decoded in this process (with and without the item limits).
"""

from __future__ import annotations

import argparse
import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cbor2
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import run_load
from bench.node_bench import free_port, start_node
from loom.security.tls import client_context
from loom.security.tlsstream import TLSStream
from loom.wire.codec import FrameDecoder, FrameError, decode_payload, encode

try:
    from loom.wire.codec import MAX_FRAME_ITEMS, client_item_limits

    LIMITED = True
except ImportError:  # a tree from before the item limits: the same frames, for comparison
    MAX_FRAME_ITEMS = 4096
    LIMITED = False

VALUE = b"x" * 256
PUT = 0x0101


def hostile_payload(kind: str) -> bytes:
    if kind == "bomb":
        return cbor2.dumps({"v": 1, "id": 2, "op": PUT, "b": [[]] * 349_000})
    if kind == "at-limit":
        n = MAX_FRAME_ITEMS - 16
        return cbor2.dumps({"b": [[[]] * 1000] * (n // 1001) + [[]] * (n % 1001), "v": 1,
                            "id": 2, "op": PUT})
    if kind == "containers":
        return cbor2.dumps({"b": [[[]] * 1000] * 1000, "v": 1, "id": 2, "op": PUT})
    raise ValueError(kind)


KINDS = ("bomb", "at-limit", "containers")


def cpu_per_frame(kind: str) -> tuple[float, float]:
    """CPU seconds to decode one frame of `kind` with the client limits and without."""
    payload = hostile_payload(kind)
    out = []
    for limited in (True, False):
        if limited and not LIMITED:
            out.append(float("nan"))
            continue
        kw: dict[str, Any] = {"limits": client_item_limits()} if limited else {}
        n = 0
        t0 = time.process_time()
        while n < 5 or time.process_time() - t0 < 0.5:
            try:
                decode_payload(payload, **kw)
            except FrameError:
                pass
            n += 1
        out.append((time.process_time() - t0) / n)
    return out[0], out[1]


async def hostile(port: int, certs: Path, kind: str) -> None:
    """Send `kind` frames as fast as the node reads them; read and drop the answers."""
    ctx = client_context(certs / "ca.pem", certs / "reader.pem", certs / "reader.key")
    kinds = KINDS if kind == "worst" else (kind,)
    payloads = [encode(cbor2.loads(hostile_payload(k))) for k in kinds]
    sent = answers = 0
    print("ready", flush=True)
    while True:
        try:
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            stream = TLSStream(tcp, ctx, server_hostname="localhost")
            await stream.do_handshake()
            await stream.send_all(encode({"v": 1, "id": 1, "op": 1, "b": {
                "client_name": "hostile", "min_version": 1, "max_version": 1}}))
            async def drain(stream: TLSStream, dec: FrameDecoder) -> None:
                nonlocal answers
                while True:
                    data = await stream.receive_some(1 << 16)
                    if not data:
                        return
                    dec.feed(data)
                    while dec.next_payload() is not None:
                        answers += 1

            async with trio.open_nursery() as n:
                n.start_soon(drain, stream, FrameDecoder(1 << 24))
                while True:
                    await stream.send_all(payloads[sent % len(payloads)])
                    sent += 1
                    if sent % 50 == 0:
                        print(f"sent {sent} answers {answers}", flush=True)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await trio.sleep(0.01)  # closed by the node: come back at once


async def hostile_until_sigterm(port: int, certs: Path, kind: str) -> None:
    with trio.open_signal_receiver(signal.SIGTERM) as sigs:
        async with trio.open_nursery() as n:
            n.start_soon(hostile, port, certs, kind)
            async for _ in sigs:
                n.cancel_scope.cancel()
                break


def node_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def phase(port: int, certs: Path, args: argparse.Namespace, pid: int,
                kind: str | None) -> str:
    ctx = client_context(certs / "ca.pem", certs / "admin.pem", certs / "admin.key")

    def put(i: int) -> dict[str, object]:
        return {"name": "bench", "key": f"k{i % 10000}", "value": VALUE}

    proc = None
    if kind is not None:
        proc = await trio.to_thread.run_sync(functools.partial(
            subprocess.Popen, [sys.executable, __file__, "--hostile", kind, "--port", str(port),
                               "--certs", str(certs)], stdout=subprocess.PIPE, text=True))
        assert proc.stdout is not None
        assert (await trio.to_thread.run_sync(proc.stdout.readline)).strip() == "ready"
        await trio.sleep(1.0)  # let it reach full speed
    try:
        cpu0 = node_cpu(pid)
        r = await run_load(port, ctx, "MAP_PUT", put, clients=args.writers, window=1,
                           total=10**9, max_seconds=args.seconds)
        cpu = node_cpu(pid) - cpu0
    finally:
        sent = ""
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
            last = [x for x in out.splitlines() if x.startswith("sent")]
            sent = f"; hostile {last[-1] if last else 'sent < 50'}"
    return (f"{r.rate:8.0f} writes/s  p50 {r.pct(0.5):6.2f} ms  p99 {r.pct(0.99):7.2f} ms  "
            f"errors {r.errors}  node CPU {100 * cpu / r.seconds:3.0f}%{sent}")


async def main_async(args: argparse.Namespace, port: int, certs: Path, pid: int) -> None:
    print(f"{args.writers} writers, {args.seconds:.0f} s per phase")
    base = await phase(port, certs, args, pid, None)
    print(f"{'alone':12} {base}", flush=True)
    for kind in args.kinds.split(","):
        print(f"{kind:12} {await phase(port, certs, args, pid, kind)}", flush=True)
    print(f"{'alone again':12} {await phase(port, certs, args, pid, None)}", flush=True)
    print("CPU per frame decoded (this process): with limits / without")
    for kind in KINDS:
        with_l, without = cpu_per_frame(kind)
        size = len(hostile_payload(kind))
        print(f"  {kind:12} {size:8d} bytes  {with_l * 1e3:8.3f} ms / {without * 1e3:8.3f} ms")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=8.0, help="length of each phase")
    p.add_argument("--writers", type=int, default=16)
    p.add_argument("--kinds", default=",".join(KINDS), help="hostile phases, in order")
    # The hostile client alone (also used by tests/security/test_sec_hostile_frames.py).
    p.add_argument("--hostile", choices=(*KINDS, "worst"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--certs", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.hostile:
        trio.run(hostile_until_sigterm, args.port, Path(args.certs), args.hostile)
        return 0
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        port = free_port()
        proc = start_node(tmp, port)
        try:
            trio.run(main_async, args, port, tmp / "certs", proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
