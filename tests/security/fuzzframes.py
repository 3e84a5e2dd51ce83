"""Frame fuzzing for the client listener's decode path (SECURITY-CATALOGUE F2/F3), in process.

Each case is what a connection does with a payload before dispatch: `decode_payload` with the
client item limits, `parse_request`, the catalog lookup and body validation. The only
acceptable outcomes are a value or a `FrameError` / `LoomError` (an answer to the client);
anything else would escape to the connection task. Every frame's decoding work is also
checked against its bound: a payload that passes the item limits holds at most
`MAX_FRAME_ITEMS` items.

    .venv/bin/python -m tests.security.fuzzframes --frames 5000000 [--seed N] [--seconds S]

runs the long mode (millions of frames, bounded by `--frames` and `--seconds`); the test suite
runs a slice of it (tests/security/test_sec_decoder.py, `LOOM_FUZZ_FRAMES` to change its size).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass

import cbor2

from loom.wire import catalog
from loom.wire.catalog import Listener
from loom.wire.codec import (
    MAX_FRAME_ITEMS,
    FrameError,
    client_item_limits,
    decode_payload,
    parse_request,
    scan_items,
)
from loom.wire.errors import LoomError

_VALID = [
    {"v": 1, "id": 3, "op": 0x0101, "b": {"name": "f", "key": "k", "value": b"v"}},
    {"v": 1, "id": 4, "op": 0x0605, "b": {"name": "c", "delta": 1}},
    {"v": 1, "id": 5, "op": 0x0007, "b": {"ops": [
        {"op": "MAP_PUT", "b": {"name": "f", "key": "k", "value": b"v"}}] * 3}},
    {"v": 1, "id": 6, "op": 0x0102, "b": {"name": "f", "key": "k"},
     "h": {"X-Auth-User": "a"}},
    {"v": 1, "id": 7, "op": catalog.BY_NAME["MAP_PUT_ALL"].opcode,
     "b": {"name": "m", "entries": {f"k{i}": b"x" for i in range(1024)}}},
    {"v": 1, "id": 8, "op": catalog.BY_NAME["MAP_GET_ALL"].opcode,
     "b": {"name": "m", "keys": [f"k{i}" for i in range(300)]}},
]
_VALID_BYTES = [cbor2.dumps(v) for v in _VALID]


def _header(major: int, arg: int) -> bytes:
    if arg < 24:
        return bytes([major << 5 | arg])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if arg < 1 << (8 * size):
            return bytes([major << 5 | info]) + arg.to_bytes(size, "big")
    raise ValueError(arg)


def _random_item(rng: random.Random, budget: list[int], depth: int) -> bytes:
    """Random CBOR, biased towards what costs a decoder most: many small containers, large
    declared lengths, deep nesting, tags and indefinite lengths."""
    budget[0] -= 1
    r = rng.random()
    if budget[0] <= 0 or depth > 12 or r < 0.3:
        kind = rng.randrange(6)
        if kind == 0:
            return _header(0, rng.choice((0, 23, 24, 255, 65536, 2**32, 2**64 - 1)))
        if kind == 1:
            return _header(rng.choice((2, 3)), rng.choice((0, 1, 5, 2**31)))[:9] + b"ab"
        if kind == 2:
            return bytes([rng.choice((0xF4, 0xF5, 0xF6, 0xF7, 0xFF, 0x5F, 0x9F, 0xBF, 0x1C))])
        if kind == 3:
            return _header(6, rng.choice((0, 1, 2, 28, 29, 258, 55799))) + b"\x00"
        if kind == 4:
            return b"\x80" * rng.randrange(1, 64)  # a run of empty arrays
        return _header(4, rng.choice((1 << 20, 2**32 - 1, 2**64 - 1)))  # declares a lot
    n = rng.choice((1, 2, 3, 8, 100, 1100, 5000)) if r < 0.9 else rng.randrange(50)
    n = min(n, max(1, budget[0]))
    if rng.random() < 0.5:
        return _header(4, n) + b"".join(_random_item(rng, budget, depth + 1) for _ in range(n))
    return _header(5, n) + b"".join(
        _random_item(rng, budget, depth + 1) + _random_item(rng, budget, depth + 1)
        for _ in range(n))


class _Pool:
    """Random items built once per seed; frames are assembled from them at C speed (a frame
    built item by item in Python cost about 10 ms, a hundred times its check)."""

    def __init__(self, rng: random.Random, size: int = 600) -> None:
        self.items = [_random_item(rng, [rng.choice((1, 2, 3, 10, 40))], 0)
                      for _ in range(size)]
        self.items = [x for x in self.items if len(x) <= 512]
        self.items += [b"\x80" * 8, b"\x81\x80", b"\xa0", b"\x40", b"\x60", b"\x00"] * 40

    def item(self, rng: random.Random) -> bytes:
        """A container of pool items, sized to hit the limits: just under, at, just over."""
        n = rng.choice((1, 2, 10, 100, 1023, 1024, 1025, 2047, 4095, 4097, 5000))
        if rng.random() < 0.5:
            return _header(4, n) + b"".join(rng.choices(self.items, k=n))
        half = max(1, n // 2)
        return _header(5, half) + b"".join(rng.choices(self.items, k=2 * half))


_pools: dict[int, _Pool] = {}


def _pool(rng: random.Random) -> _Pool:
    key = id(rng)
    if key not in _pools:
        _pools.clear()
        _pools[key] = _Pool(rng)
    return _pools[key]


def _mutated(rng: random.Random) -> bytes:
    base = bytearray(rng.choice(_VALID_BYTES))
    for _ in range(rng.randrange(1, 7)):
        kind = rng.randrange(4)
        pos = rng.randrange(len(base) + 1)
        if kind == 0 and pos < len(base):
            base[pos] = rng.randrange(256)
        elif kind == 1:
            base[pos:pos] = rng.randbytes(rng.randrange(1, 9))
        elif kind == 2 and pos < len(base):
            del base[pos:pos + rng.randrange(1, 5)]
        else:  # splice a random item into the frame
            base[pos:pos] = rng.choice(_pool(rng).items)
    return bytes(base)


def _request_with(rng: random.Random) -> bytes:
    """A well-formed request map whose body (or another field) is random CBOR."""
    op = rng.choice(list(client_item_limits().body or {0x0101: 0}))
    pool = _pool(rng)
    item = pool.item(rng) if rng.random() < 0.7 else rng.choice(pool.items)
    fields = [(b"\x61v", b"\x01"), (b"\x62id", b"\x05"), (b"\x62op", _header(0, op)),
              (b"\x61b", item)]
    rng.shuffle(fields)
    return _header(5, len(fields)) + b"".join(k + v for k, v in fields)


MAX_FRAME = 1 << 20  # the client listener's default limit: longer frames never get decoded


def frame(rng: random.Random) -> bytes:
    return _frame(rng)[:MAX_FRAME]


def _frame(rng: random.Random) -> bytes:
    r = rng.random()
    if r < 0.4:
        return _mutated(rng)
    if r < 0.8:
        return _request_with(rng)
    if r < 0.9:
        return _pool(rng).item(rng)
    return rng.randbytes(rng.randrange(1, 300))


@dataclass
class Outcome:
    frames: int = 0
    accepted: int = 0  # decoded, parsed and validated
    refused: int = 0  # FrameError / LoomError
    too_many: int = 0  # refused by the item limits
    seconds: float = 0.0
    max_frame_s: float = 0.0  # the most CPU one frame's check took


def check_one(payload: bytes, out: Outcome) -> None:
    """Raise AssertionError if the decode path misbehaves on `payload`."""
    limits = client_item_limits()
    t0 = time.process_time()  # CPU: on a shared machine wall time measures the neighbours
    try:
        obj = decode_payload(payload, limits=limits)
        req = parse_request(obj)
        mt = catalog.lookup(req.opcode, Listener.CLIENT)
        catalog.validate_body(mt, req.body)
        out.accepted += 1
    except FrameError as e:
        out.refused += 1
        if e.status.name == "TOO_LARGE":
            out.too_many += 1
    except LoomError:
        out.refused += 1
    except Exception as e:  # anything else would reach the connection task
        raise AssertionError(f"{type(e).__name__}: {e} on {payload[:200]!r}") from e
    else:
        if len(payload) > limits.scan_above:  # whatever got through holds a bounded count
            assert scan_items(payload, limits) <= MAX_FRAME_ITEMS
    out.max_frame_s = max(out.max_frame_s, time.process_time() - t0)


def run(frames: int, seed: int, seconds: float = float("inf")) -> Outcome:
    rng = random.Random(seed)
    out = Outcome()
    start = time.perf_counter()
    deadline = start + seconds
    for i in range(frames):
        check_one(frame(rng), out)
        out.frames += 1
        if i % 1000 == 0 and time.perf_counter() > deadline:
            break
    out.seconds = time.perf_counter() - start
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=1_000_000, help="how many frames (bound)")
    p.add_argument("--seconds", type=float, default=3600.0, help="time bound")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    out = run(a.frames, a.seed, a.seconds)
    print(f"{out.frames} frames in {out.seconds:.1f} s ({out.frames / out.seconds:,.0f}/s): "
          f"{out.accepted} accepted, {out.refused} refused ({out.too_many} by item limits); "
          f"most CPU for one frame {out.max_frame_s * 1000:.2f} ms; no crash")
    return 0


if __name__ == "__main__":
    sys.exit(main())
