from __future__ import annotations

import io
import json

from loom.cli.output import bytes_text, emit, to_jsonable, to_text


def test_bytes_print_as_text_when_utf8_else_hex() -> None:
    assert bytes_text("héllo".encode()) == "héllo"
    assert bytes_text(b"\xff\x00") == "0xff00"
    assert bytes_text(b"a\x01b") == "0x610162"


def test_text_rendering_of_nested_results() -> None:
    assert to_text(None) == "(nil)"
    assert to_text(True) == "true"
    assert to_text([b"a", 2]) == "a\n2"
    assert to_text([]) == "(empty)"
    assert to_text({"keys": [b"a", b"b"], "cursor": None}) == "keys:\n  a\n  b\ncursor: (nil)"


def test_json_is_one_object_with_base64_bytes() -> None:
    out = io.StringIO()
    emit({"v": b"\xff", "n": [1, None]}, "json", out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == {"result": {"v": {"base64": "/w=="}, "n": [1, None]}}
    assert to_jsonable(b"hi") == {"base64": "aGk="}
