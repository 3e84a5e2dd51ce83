"""Sans-IO pieces: body building, local validation, response classification, error mapping."""

from __future__ import annotations

import random

import pytest

from loom.client import protocol as p
from loom.client.errors import (
    ConfigError,
    ConnectError,
    IndeterminateError,
    RequestValidationError,
)
from loom.wire.codec import decode_payload, encode
from loom.wire.errors import (
    ERROR_TYPES,
    Busy,
    Internal,
    LoomError,
    NotFound,
    NotLeader,
    Status,
    Timeout,
    TooLarge,
    Unavailable,
)


def test_prepare_encodes_text_values_and_drops_absent_fields() -> None:
    mt, body = p.prepare("MAP_PUT", {"name": "m", "key": "k", "value": "é", "ttl_ms": None})
    assert mt.name == "MAP_PUT"
    assert body == {"name": "m", "key": "k", "value": "é".encode()}


def test_prepare_accepts_opcodes_and_lowercase_names() -> None:
    assert p.prepare(0x0102, {"name": "m", "key": "k"})[0].name == "MAP_GET"
    assert p.prepare("map_get", {"name": "m", "key": "k"})[0].name == "MAP_GET"


def test_prepare_coerces_lists_entries_and_batches() -> None:
    _, body = p.prepare("MAP_PUT_ALL", {"name": "m", "entries": {"a": "1", "b": b"2"}})
    assert body["entries"] == {"a": b"1", "b": b"2"}
    _, body = p.prepare("BATCH_EXECUTE", {"ops": [
        {"op": "MAP_PUT", "b": {"name": "m", "key": "k", "value": "v"}}]})
    assert body["ops"][0]["b"]["value"] == b"v"


@pytest.mark.parametrize(("op", "body", "words"), [
    ("MAP_PUT", {"name": "m", "key": "k", "value": "v", "ttl": 5}, "unknown field"),
    ("MAP_GET", {"name": "m"}, "missing required field 'key'"),
    ("MAP_GET", {"name": "bad name!", "key": "k"}, "name"),
    ("COUNTER_ADD", {"name": "c", "delta": "1"}, "integer"),
    ("NO_SUCH_OP", {}, "unknown operation"),
    ("HELLO", {"client_name": "x", "min_version": 1, "max_version": 1}, "HELLO"),
])
def test_prepare_refuses_locally(op: str, body: dict[str, object], words: str) -> None:
    with pytest.raises(RequestValidationError, match=words):
        p.prepare(op, body)


def test_request_frame_carries_seq_and_headers_only_when_given() -> None:
    plain = decode_payload(p.request_frame(7, 0x0102, {"name": "m", "key": "k"})[4:])
    assert plain == {"v": 1, "id": 7, "op": 0x0102, "b": {"name": "m", "key": "k"}}
    full = decode_payload(p.request_frame(8, 0x0101, {}, seq=3, headers={"X-Auth-User": "u"})[4:])
    assert full["q"] == 3
    assert full["h"] == {"X-Auth-User": "u"}


@pytest.mark.parametrize("status", [s for s in Status if s is not Status.OK])
def test_every_status_maps_to_its_exception(status: Status) -> None:
    frame = encode({"id": 5, "s": int(status), "e": {"code": status.name, "msg": "why"}})
    r = p.parse_response(frame[4:])
    assert r.request_id == 5
    assert type(r.error) is ERROR_TYPES[status]
    with pytest.raises(ERROR_TYPES[status], match="why"):
        r.value()


def test_unknown_status_is_internal_and_details_are_kept() -> None:
    r = p.parse_response(encode({"id": 1, "s": 99, "e": {"msg": "?"}})[4:])
    assert isinstance(r.error, Internal)
    r = p.parse_response(encode({"id": 1, "s": int(Status.NOT_LEADER), "e": {
        "code": "NOT_LEADER", "msg": "no", "leader": "n2", "leader_addr": "10.0.0.2:6002"}})[4:])
    assert isinstance(r.error, NotLeader)
    assert r.error.details["leader"] == "n2"
    assert p.leader_hint(r.error) == ("10.0.0.2", 6002)
    assert p.leader_hint(NotLeader("no leader")) is None
    assert p.leader_hint(NotFound("x")) is None


def test_push_and_ok_frames() -> None:
    push = p.parse_response(encode({"id": 3, "s": 0, "p": {"seq": 1, "value": b"x"}})[4:])
    assert push.push
    assert push.payload == {"seq": 1, "value": b"x"}
    assert p.parse_response(encode({"id": 4, "s": 0, "r": [1, 2]})[4:]).value() == [1, 2]


@pytest.mark.parametrize("bad", [[1, 2], {"s": 0}, {"id": "x", "s": 0}, {"id": 1}])
def test_malformed_responses_are_protocol_errors(bad: object) -> None:
    with pytest.raises(LoomError):
        p.parse_response(encode(bad)[4:])


def test_endpoints() -> None:
    assert p.parse_endpoints("a:1, b:2") == [("a", 1), ("b", 2)]
    assert p.parse_endpoint("[::1]:7") == ("::1", 7)
    assert p.parse_endpoint("host") == ("host", p.DEFAULT_PORT)
    assert p.format_endpoint(("::1", 7)) == "[::1]:7"
    for bad in ("", "h:x", "h:0", "[::1", ":5"):
        with pytest.raises(ConfigError):
            p.parse_endpoint(bad)


def test_backoff_is_bounded_and_honours_retry_after() -> None:
    pol = p.RetryPolicy(base=0.1, cap=1.0, rng=random.Random(1))
    assert all(0 <= pol.delay_for(None, n) <= 1.0 for n in range(20))
    assert pol.delay_for(Busy("x", retry_after_ms=500), 0) >= 0.5


def test_timeouts_of_sent_writes_are_indeterminate() -> None:
    put, get = p.resolve_type("MAP_PUT"), p.resolve_type("MAP_GET")
    e = p.timeout_error(put, True, 1.0)
    assert isinstance(e, IndeterminateError)
    assert isinstance(e, Timeout)
    assert "may or may not have been applied" in e.message
    assert not isinstance(p.timeout_error(get, True, 1.0), IndeterminateError)
    assert not isinstance(p.timeout_error(put, False, 1.0), IndeterminateError)


# -- the decisions both clients share ---------------------------------------------------------
def test_router_prefers_the_named_leader_then_rotates_past_failures() -> None:
    a, b, c = ("a", 1), ("b", 1), ("c", 1)
    r = p.Router([a, b, c])
    assert r.candidates(0.0) == [a, b, c]
    assert r.refused(a, NotLeader("no", leader_addr="c:1")) is True
    assert r.candidates(0.0) == [c, a, b]
    r.dial_failed(c, 0.0)  # the named leader cannot be reached: back to the rotation
    assert r.candidates(0.0) == [a, b, c]
    assert r.refused(b, NotLeader("me", leader_addr="b:1")) is True  # naming itself: no hint
    assert r.candidates(0.0) == [c, a, b]
    assert r.refused(c, Busy("later")) is False  # BUSY keeps the connection
    r.lost(c)
    assert r.candidates(0.0) == [a, b, c]
    assert r.refused(a, Unavailable("election")) is True
    assert r.candidates(0.0) == [b, c, a]


def _answer(error: Exception | None = None, result: object = None) -> p.Response:
    if error is None:
        return p.Response(5, 0, result=result)
    assert isinstance(error, LoomError)
    return p.Response(5, int(error.status), error=error)


def test_attempts_return_retry_or_raise_definite_answers_at_once() -> None:
    put = p.resolve_type("MAP_PUT")
    a = p.Attempts(put, p.RetryPolicy(attempts=3, base=0.0, cap=0.0), resend=True)
    assert a.pause() == 0.0
    a.sending()
    assert a.answered(_answer(Busy("later"))) is p.RETRY
    assert a.pause() is not None
    a.sending()
    with pytest.raises(TooLarge):  # definite: never retried, never "maybe applied"
        a.answered(_answer(TooLarge("over the limit")))
    with pytest.raises(IndeterminateError):  # the server's TIMEOUT for a write may still apply
        a.answered(_answer(Timeout("slow")))
    assert a.answered(_answer(result=7)) == 7


def test_attempts_lost_writes_are_indeterminate_lost_reads_are_not() -> None:
    put, get = p.resolve_type("MAP_PUT"), p.resolve_type("MAP_GET")
    w = p.Attempts(put, p.RetryPolicy(attempts=2), resend=True)
    assert w.pause() == 0.0
    w.sending()
    w.lost("reset")
    assert w.pause() is not None and w.pause() is None  # two attempts, then none
    assert isinstance(w.exhausted(), IndeterminateError)
    r = p.Attempts(get, p.RetryPolicy(attempts=1), resend=True)
    r.pause()
    r.sending()
    r.lost("reset")
    assert isinstance(r.exhausted(), ConnectError) and not isinstance(
        r.exhausted(), IndeterminateError)
    once = p.Attempts(put, p.RetryPolicy(), resend=False)
    once.sending()
    with pytest.raises(IndeterminateError, match="may or may not"):
        once.lost("reset")
    unsent = p.Attempts(put, p.RetryPolicy(), resend=True)
    unsent.lost("refused before sending")
    assert not isinstance(unsent.exhausted(), IndeterminateError)
    with pytest.raises(ConnectError):
        unsent.connect_failed(ConnectError("bad certificate", permanent=True))


def test_a_request_over_the_frame_limit_is_refused_before_sending() -> None:
    put = p.resolve_type("MAP_PUT")
    frame = p.request_frame(2, put.opcode, {"name": "m", "key": "k", "value": b"x" * 5000})
    p.check_frame_size(put, frame, 8192)
    with pytest.raises(TooLarge, match="frame limit of 4096 bytes") as info:
        p.check_frame_size(put, frame, 4096)
    assert info.value.details["limit"] == 4096


def test_options_take_the_shells_keywords() -> None:
    headers = {"X-Auth-User": "u"}
    o = p.Options.build("a:1,b:2", ca="ca.pem", timeout=None, headers=headers)
    assert o.endpoints == (("a", 1), ("b", 2)) and o.timeout == 10.0 and o.client_id
    headers["X-Auth-User"] = "changed"
    assert o.headers == {"X-Auth-User": "u"}
    with pytest.raises(TypeError, match="unknown client option"):
        p.Options.build("a:1", ca="ca.pem", timout=3)
    with pytest.raises(ConfigError):
        p.Options.build("a:1", ca="ca.pem", timeout=0)
