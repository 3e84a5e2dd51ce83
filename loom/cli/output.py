"""How loomctl prints results.

Text (default): byte strings as UTF-8 when they decode, otherwise as 0x-prefixed hex; null as
"(nil)"; booleans as true/false; lists one item per line; maps as "key: value" lines (nested
values indented by two spaces).

Tables (`cluster status`, `members list`): a header line and one line per row, columns padded
with spaces; absent values print as "-", booleans as yes/no.

JSON (`-o json`): exactly one JSON object per command on stdout, `{"result": ...}`; byte strings
become `{"base64": "..."}` (standard alphabet, padded) so values round-trip exactly.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any, TextIO

NIL = "(nil)"


def bytes_text(b: bytes) -> str:
    try:
        s = b.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + b.hex()
    if any(ord(c) < 0x20 and c not in "\t\n" for c in s):
        return "0x" + b.hex()
    return s


def scalar_text(v: Any) -> str:
    if v is None:
        return NIL
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes_text(bytes(v))
    return str(v)


def _lines(v: Any, indent: int) -> list[str]:
    pad = "  " * indent
    if isinstance(v, dict):
        if not v:
            return [pad + "{}"]
        out: list[str] = []
        for k, item in v.items():
            key = scalar_text(k)
            if isinstance(item, (dict, list)) and item:
                out.append(f"{pad}{key}:")
                out += _lines(item, indent + 1)
            else:
                out.append(f"{pad}{key}: {_inline(item)}")
        return out
    if isinstance(v, list):
        if not v:
            return [pad + "(empty)"] if indent == 0 else [pad + "[]"]
        out = []
        for item in v:
            if isinstance(item, (dict, list)) and item:
                out.append(pad + "-")
                out += _lines(item, indent + 1)
            else:
                out.append(pad + _inline(item))
        return out
    return [pad + scalar_text(v)]


def _inline(v: Any) -> str:
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, list):
        return "[]"
    return scalar_text(v)


def to_text(v: Any) -> str:
    return "\n".join(_lines(v, 0))


def to_jsonable(v: Any) -> Any:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(v)).decode("ascii")}
    if isinstance(v, dict):
        return {str(k) if not isinstance(k, bytes) else bytes_text(k): to_jsonable(x)
                for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_jsonable(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def cell_text(v: Any) -> str:
    """One table cell: "-" for absent, yes/no for booleans, text otherwise."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return scalar_text(v)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: a header line, then one line per row, columns left-aligned."""
    cells = [[cell_text(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(items: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(items, widths, strict=True)).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in cells])


def emit(result: Any, mode: str, out: TextIO) -> None:
    """Print one command's result in `mode` ("text" or "json")."""
    if mode == "json":
        out.write(json.dumps({"result": to_jsonable(result)}, ensure_ascii=False) + "\n")
    else:
        out.write(to_text(result) + "\n")


def emit_json_line(obj: Any, out: TextIO) -> None:
    """One JSON object per line (streams such as topic subscriptions)."""
    out.write(json.dumps(to_jsonable(obj), ensure_ascii=False) + "\n")
    out.flush()
