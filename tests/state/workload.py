"""A seeded random workload over every family, for determinism and restore tests."""

from __future__ import annotations

import hashlib
import random
import sys
from collections.abc import Iterator
from typing import Any

from loom.state import Command, StateLimits, StateMachine
from loom.wire.catalog import BY_NAME, validate_body
from loom.wire.schema import Kind

LIMITS = StateLimits(housekeeping_budget=3, topic_ring=4, dedupe_per_client=4,
                     dedupe_clients=3, dedupe_idle_ms=5000, map_caches=(("cache", 5),))
NAMES = ["a", "b", "cache"]
KEYS = [f"k{i}" for i in range(8)] + ["é", "日本", "z"]
PRINCIPALS = ["", "alice", "bob"]


def _principal(rng: random.Random, body: dict[str, Any], owners: dict[int, str]) -> str:
    """Mostly the owner of the session the command names (if any), sometimes anyone."""
    sids = [body["session_id"]] if "session_id" in body else [
        item["b"]["session_id"] for item in body.get("ops", ()) if "session_id" in item["b"]]
    if sids and sids[0] in owners and rng.random() < 0.85:
        return owners[sids[0]]
    return rng.choice(PRINCIPALS)


def _body(rng: random.Random, op: str, sessions: list[int]) -> dict[str, Any]:
    b: dict[str, Any] = {"name": rng.choice(NAMES)}
    schema = BY_NAME[op].schema
    for f, spec in schema.items():
        k = spec.kind
        if f == "name":
            continue
        if k is Kind.KEY:
            b[f] = rng.choice(KEYS)
        elif k is Kind.BYTES:
            b[f] = rng.choice([None, b"", b"x", b"yy", bytes([rng.randrange(256)])]) \
                if not spec.required else rng.choice([b"", b"x", b"yy"])
        elif k is Kind.BOOL:
            b[f] = rng.random() < 0.5
        elif k is Kind.ENTRIES:
            b[f] = {rng.choice(KEYS): b"e" for _ in range(rng.randint(1, 3))}
        elif f == "category":
            b[f] = rng.choice(["MAP", "QUEUE", "LOCK", "SEMAPHORE", "COUNTER"])
        elif f == "ttl_ms":
            b[f] = rng.choice([None, 1, 50, 2000])
        elif f == "session_id":
            b[f] = rng.choice(sessions or [1])
        elif f == "timeout_ms":
            b[f] = rng.choice([0, 100])
        elif k is Kind.INT:
            lo = -3 if spec.min is None else spec.min
            b[f] = rng.choice([max(lo, rng.randint(-3, 3)), 2**63 - 1, -(2**63)]) \
                if spec.min is None and rng.random() < 0.05 else max(lo, rng.randint(-3, 3))
    return validate_body(BY_NAME[op], b)


WRITE_OPS = sorted(n for n, mt in BY_NAME.items() if mt.is_write and mt.has_structure)


def commands(seed: int, n: int) -> Iterator[Command]:
    rng = random.Random(seed)
    t = 1_800_000_000_000
    sessions: list[int] = []
    owners: dict[int, str] = {}  # session id -> principal that opened it
    seqs: dict[str, int] = {}
    for index in range(1, n + 1):
        t += rng.choice([0, 1, 10, 700, -50])
        r = rng.random()
        if r < 0.05:
            owners[index] = rng.choice(PRINCIPALS)
            cmd = Command("SESSION_OPEN", {"ttl_ms": rng.choice([1000, 3000])}, t,
                          principal=owners[index])
            sessions.append(index)
        elif r < 0.08 and sessions:
            cmd = Command("SESSION_HEARTBEAT", {"session_id": rng.choice(sessions)}, t)
        elif r < 0.1:
            ops = [{"op": (o := rng.choice(WRITE_OPS)), "b": _body(rng, o, sessions)}
                   for _ in range(rng.randint(1, 3))]
            ops = [x for x in ops if not BY_NAME[str(x["op"])].waits]
            cmd = Command("BATCH_EXECUTE", {"ops": ops or [
                {"op": "COUNTER_INCREMENT", "b": {"name": "a"}}]}, t)
        else:
            op = rng.choice(WRITE_OPS)
            cmd = Command(op, _body(rng, op, sessions), t)
        if cmd.op != "SESSION_OPEN":
            cmd = Command(cmd.op, cmd.body, t, principal=_principal(rng, cmd.body, owners))
        if rng.random() < 0.3:
            # The node scopes deduplication by principal: "<principal>/<client id>".
            client = f"{cmd.principal}/{rng.choice(['c1', 'c2', 'c3', 'c4'])}"
            if rng.random() < 0.2 and seqs.get(client):
                seq = rng.randint(1, seqs[client])  # a retry (maybe of another command)
            else:
                seq = seqs[client] = seqs.get(client, 0) + 1
            cmd = Command(cmd.op, cmd.body, cmd.time_ms, client, seq, cmd.principal)
        yield cmd


def run(seed: int, n: int) -> tuple[StateMachine, list[Any]]:
    sm = StateMachine(LIMITS)
    outs = []
    for i, cmd in enumerate(commands(seed, n), start=1):
        out = sm.apply(cmd, i)
        outs.append((out.status, out.value, out.message, out.wait))
    return sm, outs


def digest(seed: int, n: int) -> str:
    sm, outs = run(seed, n)
    h = hashlib.sha256(sm.snapshot())
    h.update(repr(outs).encode())
    return h.hexdigest()


if __name__ == "__main__":
    print(digest(int(sys.argv[1]), int(sys.argv[2])))
