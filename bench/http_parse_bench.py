"""What the HTTP door's protocol library costs per request, against the binary framing.

h11 parsing one keep-alive GET and writing its 256-byte answer, against decoding one binary
request frame and encoding its reply: the floor under the HTTP door's CPU per request that no
change to Loom's own code can lower.

    python bench/http_parse_bench.py [--requests N]
"""

from __future__ import annotations

import argparse
import time

import h11

from loom.wire.codec import FrameDecoder, decode_payload, encode

REQUEST = (b"GET /v1/maps/bench/k17 HTTP/1.1\r\nhost: 127.0.0.1:7443\r\n"
           b"accept: application/octet-stream\r\n\r\n")
VALUE = b"x" * 256
HEADERS = [("content-type", "application/octet-stream"), ("content-length", str(len(VALUE)))]


def h11_once(conn: h11.Connection) -> None:
    conn.receive_data(REQUEST)
    request, end = conn.next_event(), conn.next_event()
    assert isinstance(request, h11.Request) and isinstance(end, h11.EndOfMessage)
    out = conn.send(h11.Response(status_code=200, headers=HEADERS))
    out = (out or b"") + (conn.send(h11.Data(data=VALUE)) or b"")
    out += conn.send(h11.EndOfMessage()) or b""
    conn.start_next_cycle()


def binary_once(dec: FrameDecoder, frame: bytes, reply: dict[str, object]) -> None:
    dec.feed(frame)
    payload = dec.next_payload()
    assert payload is not None
    decode_payload(payload)
    encode(reply)


def per_request_us(fn: object, n: int) -> float:
    assert callable(fn)
    for _ in range(min(n, 2_000)):  # warm up
        fn()
    t = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=50_000)
    n = ap.parse_args().requests
    conn = h11.Connection(h11.SERVER)
    dec = FrameDecoder(1 << 20)
    frame = encode({"v": 1, "id": 5, "op": 0x0101, "b": {"name": "bench", "key": "k17"}, "q": 5})
    reply: dict[str, object] = {"v": 1, "id": 5, "s": 0, "r": VALUE}
    http = per_request_us(lambda: h11_once(conn), n)
    binary = per_request_us(lambda: binary_once(dec, frame, reply), n)
    print(f"h11: parse a GET, write its answer   {http:6.1f} µs CPU per request")
    print(f"binary: decode a frame, encode reply {binary:6.1f} µs CPU per request")
    print(f"ratio {http / binary:.1f}x over {n} requests each")


if __name__ == "__main__":
    main()
