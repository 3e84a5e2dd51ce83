"""Decoding cost bounded per frame and per connection (SECURITY-CATALOGUE F2, F3).

The item scan must be exact (it counts what cbor2 would build) and bounded (it stops at the
first limit exceeded), and the limits must refuse nothing a schema allows.
"""

from __future__ import annotations

import os
import time
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loom.wire import catalog
from loom.wire.catalog import Listener
from loom.wire.codec import (
    MAX_FRAME_ITEMS,
    DecodeBudget,
    FrameError,
    ItemLimits,
    client_item_limits,
    decode_payload,
    parse_request,
    scan_items,
)
from loom.wire.schema import MAX_LIST_ITEMS
from tests.security import fuzzframes

UNLIMITED = ItemLimits(per_frame=1 << 40, per_container=1 << 40)


def items(obj: Any) -> int:
    if isinstance(obj, list):
        return 1 + sum(items(x) for x in obj)
    if isinstance(obj, dict):
        return 1 + sum(items(k) + items(v) for k, v in obj.items())
    return 1


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64) + 1, 2**64 - 1) | st.floats()
    | st.text(max_size=30) | st.binary(max_size=300),
    lambda inner: st.lists(inner, max_size=30)
    | st.dictionaries(st.text(max_size=5) | st.integers(0, 50), inner, max_size=10),
    max_leaves=60)


@settings(max_examples=100, deadline=None)
@given(cbor_values)
def test_scan_counts_exactly_what_cbor2_builds(obj: Any) -> None:
    payload = cbor2.dumps(obj)
    assert scan_items(payload, UNLIMITED) == items(obj)
    n = items(obj)
    if n > 1:  # one fewer allowed: refused, as TOO_LARGE, by the scan itself
        with pytest.raises(FrameError) as e:
            scan_items(payload, ItemLimits(per_frame=n - 1, per_container=1 << 40))
        assert e.value.status.name == "TOO_LARGE"


def frame(op: str, body: Any, *, body_first: bool = False) -> bytes:
    opcode = catalog.BY_NAME[op].opcode
    if body_first:
        return cbor2.dumps({"b": body, "v": 1, "id": 1, "op": opcode})
    return cbor2.dumps({"v": 1, "id": 1, "op": opcode, "b": body})


def accepted(payload: bytes) -> dict[str, Any]:
    req = parse_request(decode_payload(payload, limits=client_item_limits()))
    return catalog.validate_body(catalog.lookup(req.opcode, Listener.CLIENT), req.body)


def too_large(payload: bytes) -> str:
    with pytest.raises(FrameError) as e:
        decode_payload(payload, limits=client_item_limits())
    assert e.value.status.name == "TOO_LARGE", e.value
    return str(e.value)


def test_the_largest_bodies_the_schemas_allow_still_decode() -> None:
    entries = {f"k{i}": b"" for i in range(MAX_LIST_ITEMS)}
    assert len(accepted(frame("MAP_PUT_ALL", {"name": "m", "entries": entries,
                                              "ttl_ms": 5}))["entries"]) == MAX_LIST_ITEMS
    keys = [f"k{i}" for i in range(MAX_LIST_ITEMS)]
    assert len(accepted(frame("MAP_GET_ALL", {"name": "m", "keys": keys}))["keys"]) == 1024
    ops = [{"op": "MAP_PUT", "b": {"name": "m", "key": f"k{i}", "value": b"v",
                                   "ttl_ms": 1000}} for i in range(128)]
    assert len(accepted(frame("BATCH_EXECUTE", {"ops": ops}))["ops"]) == 128
    big_value = b"x" * (900 << 10)  # bytes are skipped, not counted
    assert accepted(frame("MAP_PUT", {"name": "m", "key": "k", "value": big_value}))


def test_bombs_are_refused_by_the_scan_in_bounded_time() -> None:
    bomb = frame("MAP_PUT", [[]] * 349_000)  # the 1 MiB frame of the report, in CBOR
    t0 = time.process_time()
    for _ in range(10):
        too_large(bomb)
    assert "container" in too_large(bomb)
    # Sibling containers under the per-container limit: the per-frame count stops it.
    many = frame("MAP_PUT", [[[]] * 1000] * 300, body_first=True)
    assert str(MAX_FRAME_ITEMS) in too_large(many)
    elapsed = time.process_time() - t0
    # Generous: 11 refusals read at most 11 * 4,097 headers (unbounded decoding took 0.2 s
    # for one bomb). A failure here means the scan is not stopping at the limit.
    assert elapsed < 2.0, elapsed


def test_a_body_larger_than_its_schema_allows_fails_before_decoding() -> None:
    limits = client_item_limits()
    assert limits.body is not None
    put = catalog.BY_NAME["MAP_PUT"].opcode
    assert limits.body[put] < 20
    msg = too_large(frame("MAP_PUT", {"name": "m", "key": "k", "value": b"v",
                                      "junk": [[[]] * 1000] * 5}))
    assert "its type allows" in msg
    # The same body with "b" before "op": only the per-frame count applies, then the schema.
    with pytest.raises(FrameError):
        decode_payload(frame("MAP_PUT", {"name": "m", "junk": [[[]] * 1000] * 5},
                             body_first=True), limits=limits)
    # A type without list fields cannot hide a bomb in a deeper map either.
    too_large(frame("COUNTER_ADD", {"name": "c", "delta": 1,
                                    "x": {str(i): [0] * 1000 for i in range(5)}}))
    # ADMIN documents (ACL_SET's policy) are bounded by the per-frame count only.
    assert catalog.BY_NAME["ACL_SET"].opcode not in limits.body


def test_small_frames_are_not_scanned_and_cannot_exceed_the_limit() -> None:
    limits = client_item_limits()
    assert limits.scan_above == limits.per_frame
    # At most scan_above bytes: at most that many items, so decoding is bounded anyway.
    small = cbor2.dumps({"v": 1, "id": 1, "op": 1, "b": [[]] * (limits.scan_above - 20)})
    assert len(small) <= limits.scan_above
    decode_payload(small, limits=limits)


def test_decode_budget_pauses_a_connection_over_its_share() -> None:
    b = DecodeBudget(share=0.1, burst_s=0.05)
    assert b.charge(0.0, 0.001) == 0.0  # within the burst
    assert b.charge(0.01, 0.048) == 0.0  # 0.05 - 0.001 + 0.001 refilled - 0.048 = 0.002 left
    pause = b.charge(0.02, 0.010)  # 0.002 + 0.001 - 0.010: 7 ms owed at 10% of wall time
    assert pause == pytest.approx(0.07)
    assert b.charge(0.02 + pause, 0.0) == 0.0  # after the pause, back in budget
    # A client decoding 2 us per request 10,000 times a second never pauses.
    b = DecodeBudget()
    assert all(b.charge(i / 10_000, 2e-6) == 0.0 for i in range(20_000))
    with pytest.raises(ValueError):
        DecodeBudget(share=0)


def test_fuzzed_frames_never_escape_the_decode_path() -> None:
    """A CI slice of `python -m tests.security.fuzzframes` (LOOM_FUZZ_FRAMES to change it;
    the long mode runs millions)."""
    n = int(os.environ.get("LOOM_FUZZ_FRAMES", "3000"))
    out = fuzzframes.run(n, seed=int(os.environ.get("LOOM_FUZZ_SEED", "7")))
    assert out.frames == n
    assert out.accepted > 0 and out.too_many > 0 and out.refused > 0
