"""`response_head`: the answers the server writes itself keep h11's checks on a head."""

from __future__ import annotations

import pytest

from loom.http.connection import response_head


def test_a_head_is_framed_by_the_server() -> None:
    raw, close = response_head(200, [("content-type", "application/json"),
                                     (b"Content-Length", b"99"), ("transfer-encoding", "x")],
                               3, False)
    assert not close
    lines = raw.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert lines[1:3] == [b"content-type: application/json", b"content-length: 3"]
    assert lines[3].startswith(b"date: ") and raw.endswith(b"\r\n\r\n")
    assert b"99" not in raw and b"transfer-encoding" not in raw.lower()


def test_connection_close_from_either_side() -> None:
    raw, close = response_head(204, [("connection", "keep-alive, Close")], None, False)
    assert close and raw.count(b"connection") == 1 and b"connection: close\r\n" in raw
    assert b"content-length" not in raw
    raw, close = response_head(404, [], 0, True)
    assert close and b"connection: close\r\n" in raw


@pytest.mark.parametrize(("status", "headers"), [
    (99, []), (1000, []),
    (200, [("x-bad", "a\r\nb")]), (200, [("x-bad", "a\x00")]), (200, [("x-bad", " lead")]),
    (200, [("bad name", "v")]), (200, [("", "v")]), (200, [("x-text", "caf\u00e9")]),
])
def test_what_h11_would_refuse_is_refused(status: int, headers: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError):
        response_head(status, headers, 0, False)
