"""A closed-loop load generator speaking Loom frames over TLS (trio), shared by the benchmarks.

Each client is one TLS connection keeping `window` requests in flight (window 1 = one request
at a time). Latency is measured per request from send to response.
"""

from __future__ import annotations

import itertools
import ssl
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from loom.security.tlsstream import TLSStream
from loom.wire import catalog
from loom.wire.codec import FrameDecoder, decode_payload, encode


@dataclass
class Result:
    ops: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def pct(self, p: float) -> float:
        if not self.latencies_ms:
            return 0.0
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(len(xs) * p))]

    def row(self) -> str:
        return (f"{self.rate:10.0f} ops/s  p50 {self.pct(0.5):7.3f} ms"
                f"  p99 {self.pct(0.99):7.3f} ms  ({self.ops} ops, {self.errors} errors,"
                f" {self.seconds:.1f} s)")


Body = Callable[[int], dict[str, Any]]
RUN_ID = uuid.uuid4().hex[:12]  # fresh dedupe identities per run and per connection
_CONN_IDS = itertools.count(1)


# Connections are opened before the clock starts, at most this many handshakes at a time, as a
# client's pool would: loomd refuses a source address holding more than
# `max_handshaking_per_source` (default 32) unfinished handshakes.
CONNECT_CONCURRENCY = 16


async def open_connection(port: int, ctx: ssl.SSLContext, limiter: trio.CapacityLimiter,
                   into: list[TLSStream]) -> None:
    async with limiter:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = TLSStream(tcp, ctx, server_hostname="localhost")
        await stream.do_handshake()
    into.append(stream)


async def _client(stream: TLSStream, op: str, body: Body, window: int,
                  deadline: float, budget: list[int], out: Result, rate_per_s: float) -> None:
    dec = FrameDecoder(1 << 24)
    opcode = catalog.BY_NAME[op].opcode

    async def read_one() -> dict[str, Any]:
        while True:
            p = dec.next_payload()
            if p is not None:
                obj = decode_payload(p)
                assert isinstance(obj, dict)
                return obj
            data = await stream.receive_some(1 << 16)
            if not data:
                raise EOFError("server closed the connection")
            dec.feed(data)

    await stream.send_all(encode({"v": 1, "id": 1, "op": 1, "b": {
        "client_name": "loadgen", "min_version": 1, "max_version": 1,
        "client_id": f"loadgen-{RUN_ID}-{next(_CONN_IDS)}"}}))
    hello = await read_one()
    assert hello["s"] == 0, hello
    sent: dict[int, float] = {}
    next_id = 2
    i = 0
    interval = 1 / rate_per_s if rate_per_s else 0.0
    next_send = time.perf_counter()
    async with stream:
        while True:
            now = time.perf_counter()
            # fill the window (closed loop), or pace to the target rate (open loop, window 1)
            frames = []
            while len(sent) < window and budget[0] > 0 and now < deadline:
                if interval and now < next_send:
                    break
                budget[0] -= 1
                rid = next_id
                next_id += 1
                frames.append(encode({"v": 1, "id": rid, "op": opcode, "b": body(i), "q": rid}))
                sent[rid] = time.perf_counter()
                i += 1
                next_send += interval
            if frames:
                await stream.send_all(b"".join(frames))
            if not sent:
                if budget[0] <= 0 or time.perf_counter() >= deadline:
                    return
                await trio.sleep(max(0.0, next_send - time.perf_counter()))
                continue
            resp = await read_one()
            while True:  # take every reply already received before refilling the window
                t0 = sent.pop(resp["id"])
                out.latencies_ms.append((time.perf_counter() - t0) * 1000)
                out.ops += 1
                if resp["s"] != 0:
                    out.errors += 1
                p = dec.next_payload()
                if p is None:
                    break
                resp = decode_payload(p)


async def run_load(port: int, ctx: ssl.SSLContext, op: str, body: Body, *, clients: int,
                   window: int, total: int, max_seconds: float, rate_per_s: float = 0.0) -> Result:
    out = Result(0, 0, 0.0, [])
    budget = [total]
    streams: list[TLSStream] = []
    limiter = trio.CapacityLimiter(CONNECT_CONCURRENCY)
    async with trio.open_nursery() as n:
        for _ in range(clients):
            n.start_soon(open_connection, port, ctx, limiter, streams)
    start = time.perf_counter()
    deadline = start + max_seconds
    per_client_rate = rate_per_s / clients if rate_per_s else 0.0
    async with trio.open_nursery() as n:
        for stream in streams:
            n.start_soon(_client, stream, op, body, window, deadline, budget, out,
                         per_client_rate)
    out.seconds = time.perf_counter() - start
    return out


def mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else 0.0
