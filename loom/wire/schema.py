"""Body schemas: exact field types, checked before anything else looks at a request.

A schema is a mapping of field name to `Field`. `validate` returns a new dict holding exactly the
declared fields (defaults filled in) or raises `BadRequest` naming the field. Unknown fields are
refused, never ignored: a client that misspells `ttl_ms` must hear about it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from loom.wire.errors import BadRequest

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# Structure names: printable, no separators that could confuse pattern matching or audit lines.
NAME_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
MAX_KEY_BYTES = 1024
MAX_LIST_ITEMS = 1024  # per request: keys of MAP_GET_ALL, entries of MAP_PUT_ALL, ops of a batch


class Kind(Enum):
    NAME = "name"  # a structure name (NAME_RE)
    KEY = "key"  # a key: str, 1..MAX_KEY_BYTES UTF-8 bytes, no control characters
    STR = "str"
    BYTES = "bytes"
    INT = "int"  # signed 64-bit
    BOOL = "bool"
    KEYS = "list[key]"
    VALUES = "list[bytes]"
    ENTRIES = "map[key,bytes]"
    OPS = "list[op]"  # BATCH_EXECUTE: [{"op": NAME, "b": {...}}, ...]; checked by the catalog
    ANY = "any"  # only for admin documents (ACL policy); validated by their owner


@dataclass(frozen=True, slots=True)
class Field:
    kind: Kind
    required: bool = True
    default: Any = None
    min: int | None = None  # INT: smallest value; STR/BYTES: shortest length
    max: int | None = None  # INT: largest value; STR/BYTES/lists: longest length
    doc: str = ""


def opt(kind: Kind, default: Any = None, **kw: Any) -> Field:
    return Field(kind, required=False, default=default, **kw)


_CONTROL = re.compile("[\x00-\x1f\x7f]")


def _has_control(s: str) -> bool:
    return _CONTROL.search(s) is not None


def _check_key(v: Any, where: str) -> str:
    if not isinstance(v, str):
        raise BadRequest(f"{where} must be a string key, got {type(v).__name__}")
    n = len(v.encode("utf-8", "surrogatepass"))
    if n == 0 or n > MAX_KEY_BYTES:
        raise BadRequest(f"{where} must be 1..{MAX_KEY_BYTES} bytes, got {n}")
    if _has_control(v):
        raise BadRequest(f"{where} must not contain control characters")
    return v


def _check_len(n: int, f: Field, where: str) -> None:
    if f.min is not None and n < f.min:
        raise BadRequest(f"{where} must have at least {f.min} items/bytes, got {n}")
    limit = f.max if f.max is not None else None
    if limit is not None and n > limit:
        raise BadRequest(f"{where} must have at most {limit} items/bytes, got {n}")


def check_value(f: Field, v: Any, where: str) -> Any:
    """Check one value against its field; return it (possibly normalised)."""
    k = f.kind
    if k is Kind.NAME:
        if not isinstance(v, str) or not NAME_RE.fullmatch(v):
            raise BadRequest(f"{where} must be a name of 1-128 characters [A-Za-z0-9_.:-]")
        return v
    if k is Kind.KEY:
        return _check_key(v, where)
    if k is Kind.STR:
        if not isinstance(v, str):
            raise BadRequest(f"{where} must be a string, got {type(v).__name__}")
        _check_len(len(v), f, where)
        return v
    if k is Kind.BYTES:
        if not isinstance(v, bytes):
            raise BadRequest(f"{where} must be bytes, got {type(v).__name__}")
        _check_len(len(v), f, where)
        return v
    if k is Kind.INT:
        # bool is an int subclass in Python; on the wire they are different types.
        if not isinstance(v, int) or isinstance(v, bool):
            raise BadRequest(f"{where} must be an integer, got {type(v).__name__}")
        lo = INT64_MIN if f.min is None else f.min
        hi = INT64_MAX if f.max is None else f.max
        if not lo <= v <= hi:
            raise BadRequest(f"{where} must be in [{lo}, {hi}], got {v}")
        return v
    if k is Kind.BOOL:
        if not isinstance(v, bool):
            raise BadRequest(f"{where} must be a boolean, got {type(v).__name__}")
        return v
    if k is Kind.KEYS:
        if not isinstance(v, list):
            raise BadRequest(f"{where} must be a list of keys, got {type(v).__name__}")
        _check_len(len(v), Field(k, max=f.max or MAX_LIST_ITEMS, min=f.min), where)
        return [_check_key(x, f"{where}[{i}]") for i, x in enumerate(v)]
    if k is Kind.VALUES:
        if not isinstance(v, list) or not all(isinstance(x, bytes) for x in v):
            raise BadRequest(f"{where} must be a list of byte strings")
        _check_len(len(v), Field(k, max=f.max or MAX_LIST_ITEMS, min=f.min), where)
        return v
    if k is Kind.ENTRIES:
        if not isinstance(v, dict):
            raise BadRequest(f"{where} must be a map of key to bytes, got {type(v).__name__}")
        _check_len(len(v), Field(k, max=f.max or MAX_LIST_ITEMS, min=f.min), where)
        for key, val in v.items():
            _check_key(key, f"{where} key")
            if not isinstance(val, bytes):
                raise BadRequest(f"{where}[{key!r}] must be bytes, got {type(val).__name__}")
        return v
    if k is Kind.OPS:
        if not isinstance(v, list):
            raise BadRequest(f"{where} must be a list of operations")
        _check_len(len(v), Field(k, max=f.max or MAX_LIST_ITEMS, min=f.min or 1), where)
        return v  # each item is validated by the catalog against its own type
    if k is Kind.ANY:
        return v
    raise AssertionError(f"unhandled kind {k}")  # pragma: no cover


def max_items(f: Field, op_items: int = 0) -> int | None:
    """The most CBOR data items a valid value of `f` holds (itself included); None: unbounded
    (ANY). `op_items`: the most one batched operation holds (OPS only; the catalog knows it)."""
    k = f.kind
    n = f.max or MAX_LIST_ITEMS
    if k in (Kind.KEYS, Kind.VALUES):
        return 1 + n
    if k is Kind.ENTRIES:
        return 1 + 2 * n
    if k is Kind.OPS:
        return 1 + n * op_items
    if k is Kind.ANY:
        return None
    return 1


def max_body_items(schema: Mapping[str, Field], op_items: int = 0) -> int | None:
    """The most CBOR data items a valid body of `schema` holds: the map, every field name and
    value (codec.ItemLimits: a body with more is refused before it is decoded)."""
    total = 1
    for f in schema.values():
        n = max_items(f, op_items)
        if n is None:
            return None
        total += 1 + n
    return total


def validate(schema: Mapping[str, Field], body: Any, what: str) -> dict[str, Any]:
    """Validate a request body against its schema; return the normalised body."""
    if not isinstance(body, dict):
        raise BadRequest(f"{what}: body must be a map, got {type(body).__name__}")
    unknown = [k for k in body if k not in schema]
    if unknown:
        shown = ", ".join(repr(k) for k in unknown[:5])
        raise BadRequest(f"{what}: unknown field(s) {shown}")
    out: dict[str, Any] = {}
    for name, f in schema.items():
        if name in body and body[name] is not None:
            out[name] = check_value(f, body[name], f"{what}.{name}")
        elif f.required:
            raise BadRequest(f"{what}: missing required field {name!r}")
        elif f.default is not None:
            out[name] = f.default
    return out
