"""Data commands that need more than one request field per argument: maps (the default map
and `map ...`), batches, topic subscriptions, and locks and semaphores (a session per command
unless --session is given)."""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from collections.abc import Callable
from typing import Any

from loom.cli.loomctl.base import (
    NOTHING,
    Ctx,
    Declined,
    UsageError,
    ok,
    read_input,
    unwrap,
    value_arg,
)
from loom.cli.output import emit_json_line, scalar_text
from loom.client.errors import ClientError
from loom.client.protocol import prepare
from loom.wire.errors import LoomError, NotFound


# -- maps ---------------------------------------------------------------------------------------
def mapname(a: argparse.Namespace) -> str:
    """`--name` (map commands), else `--map` (default: 'default')."""
    return str(getattr(a, "name", None) or a.map)


def get(c: Ctx, a: argparse.Namespace) -> Any:
    name = mapname(a)
    r = unwrap(c.call("MAP_GET", name=name, key=a.key), "value")
    if r is None:
        raise NotFound(f"key {a.key!r} not found in map {name!r}")
    return r


def put(c: Ctx, a: argparse.Namespace) -> Any:
    op = "MAP_PUT_IF_ABSENT" if getattr(a, "if_absent", False) else "MAP_PUT"
    return ok(c.call(op, name=mapname(a), key=a.key, value=value_arg(a), ttl_ms=a.ttl))


def delete(c: Ctx, a: argparse.Namespace) -> Any:
    r = c.call("MAP_DELETE", name=mapname(a), key=a.key)
    existed = unwrap(r, "deleted", "existed")
    if isinstance(existed, bool):
        return {"deleted": existed} if a.output == "json" else (
            "deleted" if existed else "not found")
    return ok(r)


def ttl(c: Ctx, a: argparse.Namespace) -> Any:
    if a.clear or a.set is not None:
        return c.call("MAP_SET_TTL", name=mapname(a), key=a.key,
                      ttl_ms=None if a.clear else a.set)
    return c.call("MAP_GET_TTL", name=mapname(a), key=a.key)


def map_op(op: str, *fields: str, value: str | None = None, expected: bool = False,
           wrap: Callable[[Any], Any] = lambda r: r) -> Callable[[Ctx, argparse.Namespace], Any]:
    """A map command: the map from --name/--map, fields from same-named arguments
    ("ttl_ms=ttl" as for base.op), VALUE (or --file) as `value`, and --expected as bytes."""
    def run(c: Ctx, a: argparse.Namespace) -> Any:
        body: dict[str, Any] = {f.split("=")[0]: getattr(a, f.split("=")[-1]) for f in fields}
        if value is not None:
            body[value] = value_arg(a)
        if expected:
            body["expected"] = str(a.expected).encode("utf-8")
        return wrap(c.call(op, name=mapname(a), **body))
    return run


def get_and_delete(c: Ctx, a: argparse.Namespace) -> Any:
    name = mapname(a)
    r = c.call("MAP_GET_AND_DELETE", name=name, key=a.key)
    if r is None:
        raise NotFound(f"key {a.key!r} not found in map {name!r}")
    return r


def get_all(c: Ctx, a: argparse.Namespace) -> Any:
    return c.call("MAP_GET_ALL", name=mapname(a), keys=list(a.keys))


def put_all(c: Ctx, a: argparse.Namespace) -> Any:
    """KEY=VALUE pairs; every pair is set in one atomic write."""
    entries: dict[str, bytes] = {}
    for pair in a.pairs:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise UsageError(f"put-all expects KEY=VALUE pairs, got {pair!r}")
        if k in entries:
            raise UsageError(f"put-all: key {k!r} given twice")
        entries[k] = v.encode("utf-8")
    return ok(c.call("MAP_PUT_ALL", name=mapname(a), entries=entries, ttl_ms=a.ttl))


def ref_set(c: Ctx, a: argparse.Namespace) -> Any:
    return ok(c.call("ATOMIC_REF_SET", name=a.name, value=a.value))


# -- batches and policies: documents read from a file or stdin ---------------------------------
def _document(path: str, what: str) -> Any:
    raw = read_input(path)
    try:
        return tomllib.loads(raw.decode()) if path.endswith(".toml") else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not a valid {what}: {e}") from None


def batch(c: Ctx, a: argparse.Namespace) -> Any:
    """FILE holds a JSON list of {"op": NAME, "b": {...}} applied atomically (text given for
    bytes fields is UTF-8 encoded); prints one result per operation."""
    ops = _document(a.file, "batch (a JSON list of {\"op\": NAME, \"b\": {...}})")
    if not isinstance(ops, list):
        raise UsageError(f"{a.file}: a batch is a JSON list of operations")
    return c.call("BATCH_EXECUTE", ops=ops)


def acl_set(c: Ctx, a: argparse.Namespace) -> Any:
    policy = _document(a.file, "policy document")
    if isinstance(policy, dict) and isinstance(policy.get("acl"), dict) and "roles" not in policy:
        # A loomd config file: its [acl] table is the policy. This is the explicit way to make
        # the file's version the cluster's; a reload never does (docs/security.md "Reload").
        policy = policy["acl"]
    return ok(c.call("ACL_SET", policy=policy, expected_version=a.expected_version))


# -- topics -------------------------------------------------------------------------------------
def subscribe(c: Ctx, a: argparse.Namespace) -> Any:
    """Text: one value per line on stdout; every loss notice (messages the server could not
    deliver: a slow consumer, or older than the topic's ring) is one line on stderr. JSON: one
    object per push, `lost` included."""
    wait = a.wait / 1000 if a.wait else None
    prepare("TOPIC_SUBSCRIBE", {"name": a.name, "from_seq": a.from_seq})
    pushes = c.client().subscribe(a.name, a.from_seq, timeout=wait)
    for n, msg in enumerate(pushes, 1):
        if a.output == "json":
            emit_json_line(msg, c.out)
        else:
            lost = msg.get("lost") if isinstance(msg, dict) else None
            if isinstance(lost, list) and len(lost) == 2:
                sys.stderr.write(f"loomctl: LOST: messages {lost[0]}-{lost[1]} of topic "
                                 f"{a.name!r} were not delivered\n")
                sys.stderr.flush()
            value = msg.get("value") if isinstance(msg, dict) else msg
            c.out.write(scalar_text(value) + "\n")
            c.out.flush()
        if a.count and n >= a.count:
            break
    return NOTHING


# -- locks and semaphores: a session per command unless --session is given -------------------
def _session(c: Ctx, a: argparse.Namespace) -> tuple[int, bool]:
    if a.session is not None:
        return a.session, False
    r = unwrap(c.call("SESSION_OPEN", ttl_ms=a.session_ttl), "session_id", "id")
    if not isinstance(r, int) or isinstance(r, bool):
        raise LoomError(f"unexpected SESSION_OPEN answer: {r!r}")
    return r, True


def _close_session(c: Ctx, sid: int) -> None:
    try:
        c.call("SESSION_CLOSE", session_id=sid)
    except (LoomError, ClientError):
        pass  # it expires on its own


def acquire(op: str, what: str, **extra: str) -> Callable[[Ctx, argparse.Namespace], Any]:
    """Acquire a lock (the answer is its fencing token, null when not acquired) or permits
    (true/false). Not acquired: the session opened for the command is closed, and the command
    exits 1 (Declined)."""
    def run(c: Ctx, a: argparse.Namespace) -> Any:
        sid, opened = _session(c, a)
        body = {k: getattr(a, v) for k, v in extra.items()}
        try:
            r = c.call(op, name=a.name, session_id=sid, **body)
        except BaseException:
            if opened:
                _close_session(c, sid)
            raise
        got = unwrap(r, "token", "acquired")
        if got is None or got is False:
            if opened:
                _close_session(c, sid)
            raise Declined("NOT_ACQUIRED", f"{what} {a.name!r} not acquired",
                           {"acquired": False})
        if what == "lock":
            return {"session_id": sid, "fencing_token": got}
        return {"session_id": sid, "acquired": True}
    return run
