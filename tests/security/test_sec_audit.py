"""Audit record shape, escaping, no values, gap records, lanes."""

from __future__ import annotations

import json

from loom.security.audit import (
    format_ts,
    lane,
    record_for,
    result_of,
    should_audit,
)
from loom.wire.catalog import BY_NAME, validate_body
from loom.wire.errors import Status

SECRET = b"s3cr3t-value-\xff"


def rec(name: str, body: dict[str, object], result: str = "ok", **kw: object):  # type: ignore[no-untyped-def]
    mt = BY_NAME[name]
    args: dict[str, object] = dict(client_id="c42",
                                   principal="spiffe://loom.dev/client/writer",
                                   roles=("data-writer",), via_gateway=None, mt=mt,
                                   body=validate_body(mt, body), result=result, duration_ms=1.25)
    args.update(kw)
    return record_for(**args)  # type: ignore[arg-type]


def test_ts_format() -> None:
    assert format_ts(0.5) == "1970-01-01T00:00:00.500Z"
    assert format_ts(1714564800.0019) == "2024-05-01T12:00:00.001Z"


def test_record_fields_and_no_values() -> None:
    r = rec("MAP_PUT", {"name": "m", "key": "k1", "value": SECRET, "return_old": True})
    d = json.loads(r.to_json_line())
    assert d == {"event": "request",
                 "client_id": "c42", "principal": "spiffe://loom.dev/client/writer",
                 "roles": ["data-writer"], "via_gateway": None, "command": "MAP_PUT",
                 "structure": "m", "key": "k1", "key_count": 1, "result": "ok",
                 "duration_ms": 1.25}
    line = r.to_json_line()
    assert "s3cr3t" not in line and "value" not in line
    many = rec("MAP_PUT_ALL", {"name": "m", "entries": {"b": SECRET, "a": SECRET, "c": b"x"}})
    assert (many.key, many.key_count) == ("a", 3)
    assert "s3cr3t" not in many.to_json_line()


def test_escaping() -> None:
    key = 'k"}{"event":"request","result":"ok"}\u2028\u202e\\'
    r = rec("MAP_GET", {"name": "m", "key": key},
            principal="user:bob\nadmin\x1b[2J\x00", reason="x\r\ny")
    line = r.to_json_line()
    assert "\n" not in line and "\r" not in line and "\u2028" not in line
    assert all(32 <= ord(c) < 127 for c in line)
    d = json.loads(line)
    assert d["key"] == key
    assert d["principal"] == "user:bob\nadmin\x1b[2J\x00" and d["reason"] == "x\r\ny"


def test_long_fields_are_cut() -> None:
    r = rec("MAP_GET", {"name": "m", "key": "k" * 1000})
    assert len(json.loads(r.to_json_line())["key"]) < 300


def test_results() -> None:
    assert result_of(Status.OK) == "ok"
    assert result_of(Status.FORBIDDEN) == "denied"
    assert result_of(Status.TIMEOUT) == "unknown"
    assert result_of(Status.UNAUTHENTICATED) == "unauthenticated"
    assert result_of(Status.BUSY) == "busy"


def test_should_audit_and_lanes() -> None:
    get, put, acl = BY_NAME["MAP_GET"], BY_NAME["MAP_PUT"], BY_NAME["ACL_SET"]
    assert should_audit(put, "ok") and should_audit(acl, "ok")
    assert not should_audit(get, "ok") and should_audit(get, "ok", audit_reads=True)
    assert should_audit(get, "denied") and should_audit(get, "unauthenticated")
    assert should_audit(None, "bad_request")
    assert not should_audit(BY_NAME["PING"], "ok")
    assert lane(rec("MAP_PUT", {"name": "m", "key": "k", "value": b""})) == "data"
    assert lane(rec("MAP_GET", {"name": "m", "key": "k"}, result="denied")) == "priority"
    assert lane(rec("MAP_GET", {"name": "m", "key": "k"}, result="unauthenticated")) == "priority"
    assert lane(rec("ACL_GET", {})) == "priority"

