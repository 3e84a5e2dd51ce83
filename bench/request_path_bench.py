"""The CPU a request costs a node in Python, with the I/O taken out.

    .venv/bin/python bench/request_path_bench.py [--requests 15000] [--repeat 7]

One process, no socket, no disk, no Raft: each request goes the way it goes on a leader, from a
received frame to the encoded answer and its audit line:

    frame -> FrameDecoder -> CBOR decode -> parse_request -> Dispatcher.start (identity,
    schema, ACL) -> Dispatcher.submit -> Command.encode -> Command.decode (as every replica
    applies it) -> StateMachine.apply (writes) or .read (reads) -> answer -> CBOR encode;
    then the audit drainer turns the records into JSON lines (a sink that discards them).

For MAP_PUT and MAP_GET (256-byte values, 1,000 keys, admin over mutual TLS as in
bench/cluster_bench.py) it prints the best of `--repeat` runs in µs of CPU per request. The
machine is noisy; for figures that do not move with the neighbours, count instructions:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/request_path_bench.py --requests 2000 --repeat 1

(and subtract a run with fewer requests to take out the start-up). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.progress import phases
from loom.cli.loomd import EXAMPLE_ACL
from loom.node.audit import AuditLog, NullSink
from loom.node.dispatcher import Call, Dispatcher
from loom.node.replicator import LogStatistics, OnDone
from loom.security.acl import Policy
from loom.security.identity import Identity, Role
from loom.state.command import Command, Outcome
from loom.state.machine import StateMachine
from loom.wire import catalog
from loom.wire.codec import FrameDecoder, decode_payload, encode, parse_request

VALUE = b"v" * 256
KEYS = 1000


class Session:
    conn_id = "c1"
    listener = "client"
    source = "127.0.0.1"
    client_id = "request-path-bench"
    version = 1
    identity = Identity(Role.CLIENT, "admin", "spiffe://loom.dev/client/admin", "loom.dev")

    def subscribe(self, topic: str, request_id: int, from_seq: int | None) -> int:
        raise NotImplementedError

    def unsubscribe(self, subscription: int) -> bool:
        raise NotImplementedError


class InlineReplicator:
    """Applies at once what the log would replicate: encoded, decoded, applied, answered."""

    def __init__(self) -> None:
        self.sm = StateMachine()
        self.index = 0

    def state(self) -> StateMachine:
        return self.sm

    def submit(self, cmd: Command, *, read: bool, on_done: OnDone, stale: bool = False) -> None:
        if read:
            on_done(self.sm.read(cmd), None)
            return
        self.index += 1
        on_done(self.sm.apply(Command.decode(cmd.encode()), self.index), None)

    # The rest of the Replicator interface is not on this path.
    async def propose(self, cmd: Command) -> Outcome:
        raise NotImplementedError

    async def read(self, cmd: Command, *, stale: bool = False) -> Outcome:
        raise NotImplementedError

    def changed_event(self, structure: tuple[str, str]) -> trio.Event:
        raise NotImplementedError

    def statistics(self) -> LogStatistics:
        raise NotImplementedError

    def cluster_status(self) -> dict[str, Any]:
        return {}

    async def admin(self, what: str, **kw: Any) -> Any:
        raise NotImplementedError


def frames(op: str, n: int) -> list[bytes]:
    opcode = catalog.BY_NAME[op].opcode

    def body(i: int) -> dict[str, Any]:
        b: dict[str, Any] = {"name": "bench", "key": f"k{i % KEYS}"}
        if op == "MAP_PUT":
            b["value"] = VALUE
        return b

    return [encode({"v": 1, "id": i + 1, "op": opcode, "b": body(i), "q": i + 1})
            for i in range(n)]


async def one_run(op: str, n: int) -> tuple[float, float]:
    """(µs of CPU per request on the request path, µs per request turning audit into JSON)."""
    audit = AuditLog("n1", NullSink(), queue_size=n + 16, priority_queue_size=16)
    rep = InlineReplicator()
    d = Dispatcher(node_id="n1", replicator=rep, audit=audit, gateways=frozenset(),
                   seed_policy=Policy.from_config(EXAMPLE_ACL))
    for i in range(KEYS):  # reads find what they look for
        rep.sm.apply(Command("MAP_PUT", {"name": "bench", "key": f"k{i}", "value": VALUE}, 0),
                     i + 1)
    rep.index = KEYS
    todo = frames(op, n)
    answers: list[bytes] = []
    deliver: Callable[[dict[str, Any]], None] = lambda a: answers.append(encode(a))  # noqa: E731
    dec = FrameDecoder(1 << 24)
    sess = Session()
    gc.collect()
    t0 = time.process_time()
    for frame in todo:
        dec.feed(frame)
        payload = dec.next_payload()
        assert payload is not None
        call = d.start(sess, parse_request(decode_payload(payload)))
        assert isinstance(call, Call), call
        d.submit(call, deliver)
    t1 = time.process_time()
    audited = 0
    while batch := audit._take_batch():
        audited += len(batch)
        await audit._write(batch)
    t2 = time.process_time()
    if len(answers) != n:
        raise RuntimeError(f"{len(answers)} answers for {n} requests")
    return 1e6 * (t1 - t0) / n, 1e6 * (t2 - t1) / n if audited else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=15_000, help="requests per run (bound)")
    ap.add_argument("--repeat", type=int, default=7, help="runs per type; the best is shown")
    args = ap.parse_args()
    print(f"requests per run {args.requests}, best of {args.repeat}; CPU µs per request")
    with phases(2 * args.repeat, "runs") as done:
        for op in ("MAP_PUT", "MAP_GET"):
            runs = []
            for i in range(args.repeat):
                runs.append(trio.run(one_run, op, args.requests))
                done(f"{op} {i + 1}")
            path, audit = min(runs, key=lambda r: r[0] + r[1])
            print(f"{op:8} request path {path:6.1f} µs   audit JSON {audit:5.1f} µs   "
                  f"total {path + audit:6.1f} µs")


if __name__ == "__main__":
    main()
