"""The bare HTTP/1.1 server's cost: `loom.http.HTTPServer` driven by `loom.http.HTTPClient`.

    .venv/bin/python bench/http_server_bench.py [--seconds 5] [--clients 1 64] [--size 256]

The server runs in its own process with the development PKI's node certificate (mutual TLS 1.3,
client certificates required, default limits) and a handler that answers every POST with its
body (`--size` bytes each way), so what is measured is the HTTP door itself: TLS, h11, limits,
Request/Response, with nothing behind it. Each client task holds one keep-alive connection and
sends one request at a time. Prints requests/s, p50/p99 latency, and the CPU per request of the
server process (read from its `/cpu` route before and after) and of the client process. The
client is one Python process too, so at 64 clients the two share the machine; compare with
bench/tls_bench.py and bench/node_bench.py on the same machine and at the same time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loom.http import ClientLimits, HTTPClient, HTTPServer, Request, Response
from loom.security.devpki import create_dev_pki
from loom.security.tls import client_context, server_context


async def handler(request: Request) -> Response:
    if request.path == "/cpu":
        return Response(200, body=repr(time.process_time()).encode())
    return Response(200, [("content-type", "application/octet-stream")], request.body)


async def serve(pki: Path, port_file: Path) -> None:
    ctx = server_context(pki / "ca.pem", pki / "n1.pem", pki / "n1.key",
                         require_client_auth=True)
    server = HTTPServer(handler, ctx)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(server.serve_tcp, "127.0.0.1", 0)
        await trio.Path(port_file).write_text(str(listeners[0].socket.getsockname()[1]))


async def load(pki: Path, port: int, clients: int, seconds: float, size: int) -> str:
    ctx = client_context(pki / "ca.pem", pki / "admin.pem", pki / "admin.key")
    url = f"https://127.0.0.1:{port}/v1/echo"
    body = b"v" * size
    lat: list[float] = []
    async with HTTPClient(ctx, limits=ClientLimits(max_connections_per_origin=clients)) as c:

        async def one(stop: float) -> None:
            while (a := time.perf_counter()) < stop:
                r = await c.request("POST", url, body=body)
                assert r.status == 200 and len(r.body) == size
                lat.append(time.perf_counter() - a)

        async def server_cpu() -> float:
            return float((await c.request("GET", f"https://127.0.0.1:{port}/cpu")).body)

        async with trio.open_nursery() as n:  # warm up: every connection made and used
            for _ in range(clients):
                n.start_soon(one, time.perf_counter() + 0.5)
        lat.clear()
        s0, c0, t0 = await server_cpu(), time.process_time(), time.perf_counter()
        async with trio.open_nursery() as n:
            for _ in range(clients):
                n.start_soon(one, t0 + seconds)
        wall, ccpu = time.perf_counter() - t0, time.process_time() - c0
        scpu = await server_cpu() - s0
    k = len(lat)
    lat.sort()
    return (f"{clients:3d} clients {k / wall:8.0f} req/s  p50 {lat[k // 2] * 1e6:6.0f} µs"
            f"  p99 {lat[int(k * 0.99)] * 1e6:6.0f} µs  server CPU {scpu / k * 1e6:4.0f} µs/req"
            f"  client CPU {ccpu / k * 1e6:4.0f} µs/req")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--serve", nargs=2, metavar=("PKI", "PORT_FILE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        trio.run(serve, Path(a.serve[0]), Path(a.serve[1]))
        return
    with tempfile.TemporaryDirectory(prefix="loom-httpb-") as tmp:
        pki = Path(tmp) / "pki"
        create_dev_pki(pki, nodes=["n1"], clients=["admin"], gateways=[])
        port_file = Path(tmp) / "port"
        srv = subprocess.Popen([sys.executable, __file__, "--serve", str(pki), str(port_file)])
        try:
            deadline = time.monotonic() + 10
            while not port_file.exists() or not port_file.read_text():
                if time.monotonic() > deadline or srv.poll() is not None:
                    raise SystemExit("the HTTP server did not start")
                time.sleep(0.02)
            port = int(port_file.read_text())
            for clients in a.clients:
                print(trio.run(load, pki, port, clients, a.seconds, a.size), flush=True)
        finally:
            srv.kill()
            srv.wait()


if __name__ == "__main__":
    main()
