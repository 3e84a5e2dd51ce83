"""Digests of replicated state, printed as JSON, for comparing the compiled and pure builds.

    python -m tests.build_digest --sim FIRST COUNT --state FIRST COUNT --commands N

Run once with LOOM_PURE_PYTHON=1 and once without (tests/test_build_determinism.py): equal
output means that, seed for seed, both builds reached the same state on every replica.

- `sim`: each simulator seed (loom/sim: the Raft core and the storage codec under crashes,
  partitions, snapshots and membership changes) digests every replica after the run: its
  key-value state, applied and commit indexes, hard state, role, configuration, snapshot
  position and every log entry (index, term, type, SHA-256 of the data), plus the run's
  counters and its trace. A seed that fails digests its failure.
- `state`: each seed of the random command workload of tests/state/workload.py (every
  structure family through loom/state) digests the snapshot and every answer.
- `hostile`: every field of every write op given eleven values of wrong types, and bodies
  with keys that are not strings, applied in turn, then malformed envelopes decoded: the
  answers and the final snapshot (the boundary of `Command.decode` and `checked_body`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from typing import Any

import cbor2

from loom.buildinfo import build_info
from loom.sim.cluster import Simulation
from loom.state import Command, StateMachine
from loom.wire.catalog import BY_NAME
from tests.state import workload

WRONG: list[Any] = [1.5, True, None, [], {}, "x", b"x", 2**70, -1, ["k"], {"k": b"v"}]
ENVELOPES: list[Any] = [
    ["MAP_PUT", {}, 1, "", 0], ["MAP_PUT", {}, 1, "c", 2, "p", 3], ["MAP_PUT", {}, True, "", 0],
    ["MAP_PUT", [], 1, "", 0], [1, {}, 1, "", 0], ["MAP_PUT", {}, 1.0, "", 0],
    ["MAP_PUT", {}, 1, b"c", 0], ["MAP_PUT", {}, 1, "", None], ["MAP_PUT", {}, 1, "", 0, 5],
    ["MAP_PUT", {}, 1, "", 0, "", False], ["MAP_PUT", {}, 1], {"op": "MAP_PUT"}, 7,
]


def _h(parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def sim_digest(seed: int) -> str:
    sim = Simulation(seed)
    try:
        sim.run()
        failure = None
    except Exception as exc:  # a failing seed must fail alike on both builds
        failure = f"{type(exc).__name__}: {exc}"
    replicas = []
    for nid in sorted(sim.nodes):
        n = sim.nodes[nid]
        parts: list[Any] = [nid, sorted(n.kv.items()), n.applied, n.commit, n.removed,
                            n.joining]
        core = n.core
        if core is not None:
            log, conf, snap = core.log, core.conf, core.snapshot_meta
            parts += [core.term, core.vote, core.role.name, log.committed, log.offset,
                      log.offset_term, sorted(conf.voters), sorted(conf.learners),
                      snap.index, snap.term,
                      [(e.index, e.term, e.type.name, hashlib.sha256(e.data).hexdigest())
                       for e in log.entries]]
        replicas.append(_h(parts))
    return _h([failure, sorted(sim.stats.items()), replicas, sim.format_trace()])


def hostile_digest() -> str:
    sm = StateMachine()
    answers: list[Any] = []
    index = 0
    for op, mt in sorted(BY_NAME.items()):
        if not mt.is_write:
            continue
        for field in mt.schema:
            for bad in WRONG:
                good = {"name": "n", "key": "k", "value": b"v"}
                body = {f: bad if f == field else good.get(f, 1) for f in mt.schema}
                index += 1
                out = sm.apply(Command(op, body, 1_800_000_000_000 + index), index)
                answers.append((op, field, out.status.name, out.message, repr(out.value)))
        for odd in ({1: "x"}, {"name": "n", 7: 1}, {}):  # keys of another type, no fields
            index += 1
            out = sm.apply(Command(op, odd, 1_800_000_000_000 + index), index)  # type: ignore[arg-type]
            answers.append((op, repr(odd), out.status.name, out.message, repr(out.value)))
    for fields in ENVELOPES:  # what Command.decode makes of a malformed entry
        try:
            c = Command.decode(cbor2.dumps(fields))
            answers.append(repr((c.op, c.body, c.time_ms, c.client_id, c.seq, c.principal,
                                 c.acl_version)))
        except ValueError as exc:
            answers.append(f"ValueError: {exc}")
    return _h([answers, hashlib.sha256(sm.snapshot()).hexdigest()])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sim", nargs=2, type=int, default=(0, 0), metavar=("FIRST", "COUNT"))
    ap.add_argument("--state", nargs=2, type=int, default=(0, 0), metavar=("FIRST", "COUNT"))
    ap.add_argument("--commands", type=int, default=300, help="commands per state seed")
    args = ap.parse_args()
    first, count = args.sim
    sfirst, scount = args.state
    doc = {
        "build": build_info().kind,
        "sim": {str(s): sim_digest(s) for s in range(first, first + count)},
        "state": {str(s): workload.digest(s, args.commands)
                  for s in range(sfirst, sfirst + scount)},
        "hostile": hostile_digest(),
    }
    json.dump(doc, sys.stdout, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
