"""TLS transport benchmark: `trio.SSLStream` against `loom.security.tlsstream.TLSStream`.

    .venv/bin/python bench/tls_bench.py [--round-trips 10000] [--size 300] [--repeat 2]

A mutual-TLS 1.3 ping-pong between two processes on 127.0.0.1 (the node certificates of a
fresh development PKI, the peer contexts Loom uses): the client sends `--size` bytes, the echo
server returns them, one round trip at a time. Prints round trips/s, p50/p99 latency and the
client process's CPU per round trip, for each transport, `--repeat` times alternating (the
machine is noisy; compare runs side by side). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loom.security.devpki import create_dev_pki
from loom.security.tls import peer_client_context, peer_server_context
from loom.security.tlsstream import TLSStream

Stream = Any  # trio.SSLStream or TLSStream: the same calls


def wrap(kind: str, tcp: trio.SocketStream, ctx: Any, server_side: bool) -> Stream:
    if kind == "trio.SSLStream":
        return trio.SSLStream(tcp, ctx, server_side=server_side, server_hostname=None)
    return TLSStream(tcp, ctx, server_side=server_side)


async def serve(kind: str, pki: Path, port_file: Path) -> None:
    ctx = peer_server_context(pki / "ca.pem", pki / "n1.pem", pki / "n1.key")
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await trio.Path(port_file).write_text(str(listeners[0].socket.getsockname()[1]))
    tcp = await listeners[0].accept()
    s = wrap(kind, tcp, ctx, True)
    await s.do_handshake()
    while data := await s.receive_some(65536):
        await s.send_all(data)


async def ping(kind: str, pki: Path, port: int, n: int, size: int) -> str:
    ctx = peer_client_context(pki / "ca.pem", pki / "n2.pem", pki / "n2.key")
    s = wrap(kind, await trio.open_tcp_stream("127.0.0.1", port), ctx, False)
    await s.do_handshake()
    msg = b"x" * size
    lat: list[float] = []
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        a = time.perf_counter()
        await s.send_all(msg)
        got = 0
        while got < size:
            got += len(await s.receive_some(65536))
        lat.append(time.perf_counter() - a)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    await s.aclose()
    lat.sort()
    return (f"{kind:16} {n / wall:8.0f} round trips/s  p50 {lat[n // 2] * 1e6:5.0f} µs"
            f"  p99 {lat[int(n * 0.99)] * 1e6:5.0f} µs  client CPU {cpu / n * 1e6:4.0f} µs/rt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--round-trips", type=int, default=10000)
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--serve", nargs=3, metavar=("KIND", "PKI", "PORT_FILE"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        trio.run(serve, a.serve[0], Path(a.serve[1]), Path(a.serve[2]))
        return
    with tempfile.TemporaryDirectory(prefix="loom-tlsb-") as tmp:
        pki = Path(tmp) / "pki"
        create_dev_pki(pki, nodes=["n1", "n2"])
        for _ in range(a.repeat):
            for kind in ("trio.SSLStream", "TLSStream"):
                port_file = Path(tmp) / "port"
                port_file.unlink(missing_ok=True)
                srv = subprocess.Popen([sys.executable, __file__, "--serve", kind, str(pki),
                                        str(port_file)])
                try:
                    deadline = time.monotonic() + 10
                    while not port_file.exists() or not port_file.read_text():
                        if time.monotonic() > deadline or srv.poll() is not None:
                            raise SystemExit("the echo server did not start")
                        time.sleep(0.02)
                    port = int(port_file.read_text())
                    print(trio.run(ping, kind, pki, port, a.round_trips, a.size), flush=True)
                finally:
                    srv.kill()
                    srv.wait()


if __name__ == "__main__":
    main()
