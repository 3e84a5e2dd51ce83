"""A dedupe identity reused for another request: refused, never answered the first outcome."""

from __future__ import annotations

from dataclasses import replace

import cbor2
import pytest

from loom.state import Command, StateLimits
from loom.state.dedupe import IDEMPOTENCY_KEY_REUSED, request_fingerprint
from loom.wire.errors import Status
from tests.state.helpers import Driver, state_part

CID = "alice/idem:0123"


def _fp(c: Command) -> Command:
    return replace(c, fingerprint=request_fingerprint(c.op, c.body))


def test_fingerprint_is_the_request() -> None:
    a = request_fingerprint("COUNTER_INCREMENT", {"name": "c", "delta": 1})
    assert a == request_fingerprint("COUNTER_INCREMENT", {"delta": 1, "name": "c"})
    assert len(a) == 16
    assert a != request_fingerprint("COUNTER_INCREMENT", {"name": "d", "delta": 1})
    assert a != request_fingerprint("COUNTER_INCREMENT", {"name": "c", "delta": 2})
    assert a != request_fingerprint("COUNTER_DECREMENT", {"name": "c", "delta": 1})


def test_same_fingerprint_answers_the_first_outcome_another_is_refused() -> None:
    d = Driver()
    first = _fp(d.cmd("COUNTER_INCREMENT", CID, 1, name="c"))
    assert d.apply_cmd(first).value == 1
    assert d.apply_cmd(first).value == 1  # the retry: applied once
    before = state_part(d.sm)
    for other in (d.cmd("COUNTER_INCREMENT", CID, 1, name="d"),      # another target
                  d.cmd("COUNTER_ADD", CID, 1, name="c", delta=5),  # another type
                  d.cmd("COUNTER_SET", CID, 1, name="c", value=9)):  # another body
        out = d.apply_cmd(_fp(other))
        assert out.status is Status.CONFLICT, out
        assert out.details == {"reason": IDEMPOTENCY_KEY_REUSED}
        assert "Idempotency-Key" in out.message
        assert state_part(d.sm) == before  # nothing applied, nothing stored
    assert d.read("COUNTER_GET", name="c") == 1
    assert d.read("COUNTER_GET", name="d") == 0
    assert d.apply_cmd(first).value == 1  # the first request's retry still answers its outcome


def test_without_a_fingerprint_on_either_side_there_is_no_check() -> None:
    """Log entries and records from before fingerprints, and binary-protocol retries."""
    d = Driver()
    plain = d.cmd("COUNTER_INCREMENT", CID, 1, name="c")
    assert d.apply_cmd(plain).value == 1
    assert d.apply_cmd(_fp(d.cmd("COUNTER_INCREMENT", CID, 1, name="d"))).value == 1
    d.apply_cmd(_fp(d.cmd("COUNTER_INCREMENT", CID, 2, name="c")))
    assert d.apply_cmd(d.cmd("COUNTER_INCREMENT", CID, 2, name="d")).value == 2
    assert d.read("COUNTER_GET", name="c") == 2
    assert d.read("COUNTER_GET", name="d") == 0


def test_snapshot_keeps_fingerprints_and_old_snapshots_load() -> None:
    d = Driver(StateLimits(dedupe_per_client=2))
    first = _fp(d.cmd("COUNTER_INCREMENT", CID, 1, name="c"))
    d.apply_cmd(first)
    d.apply_cmd(d.cmd("COUNTER_INCREMENT", CID, 2, name="c"))  # stored without one
    r = d.restored()
    assert r.sm.snapshot() == d.sm.snapshot()
    assert r.apply_cmd(_fp(r.cmd("COUNTER_INCREMENT", CID, 1, name="x"))).status is Status.CONFLICT
    assert r.apply_cmd(first).value == 1
    # an outcome leaving the window takes its fingerprint with it
    r.apply_cmd(_fp(r.cmd("COUNTER_INCREMENT", CID, 3, name="c")))
    assert list(r.sm.dedupe.clients[CID].fingerprints) == [3]
    # a snapshot written before fingerprints (5-element outcomes) loads, without checks
    doc = cbor2.loads(d.sm.snapshot())
    for _cid, _floor, _last, results in doc[6]:
        for res in results:
            del res[5:]
    old = Driver(d.limits, type(d.sm).restore(cbor2.dumps(doc), d.limits))
    old.index, old.now = d.index, d.now
    assert old.apply_cmd(_fp(old.cmd("COUNTER_INCREMENT", CID, 1, name="x"))).value == 1
    doc[6][0][3][0].append("not bytes")
    with pytest.raises(ValueError):
        type(d.sm).restore(cbor2.dumps(doc), d.limits)


def test_command_carries_its_fingerprint_through_the_log() -> None:
    fp = request_fingerprint("COUNTER_INCREMENT", {"name": "c", "delta": 1})
    for c in (Command("COUNTER_INCREMENT", {"name": "c"}, 5, CID, 1, "alice", 3, fp),
              Command("COUNTER_INCREMENT", {"name": "c"}, 5, CID, 1, "alice", -1, fp),
              Command("COUNTER_INCREMENT", {"name": "c"}, 5, CID, 1, "alice", 3)):
        assert Command.decode(c.encode()) == c
    assert len(cbor2.loads(Command("X", {}, 5, CID, 1, "a", 3).encode())) == 7  # as before
    with pytest.raises(ValueError):
        Command.decode(cbor2.dumps(["X", {}, 5, CID, 1, "a", 3, "not bytes"]))
    with pytest.raises(ValueError):
        Command.decode(cbor2.dumps(["X", {}, 5, CID, 1, "a", 3, fp, 9]))
