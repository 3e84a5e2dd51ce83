"""Render docs/protocol.md from the catalog: `python -m loom.wire.docgen > docs/protocol.md`.

tests/test_catalog.py fails when the checked-in file differs from what this prints, so the
protocol reference can never drift from the code.
"""

from __future__ import annotations

import sys

from loom.wire import catalog
from loom.wire.codec import (
    DEFAULT_MAX_FRAME,
    MAX_DEPTH,
    MAX_FRAME_ITEMS,
    PRE_HELLO_MAX_FRAME,
    PROTOCOL_VERSION,
)
from loom.wire.errors import Status
from loom.wire.glob import DIALECT
from loom.wire.schema import MAX_LIST_ITEMS, Field

HEAD = f"""# Loom wire protocol (version {PROTOCOL_VERSION})

Generated from `loom/wire/catalog.py` by `python -m loom.wire.docgen`; do not edit by hand.

## Frames

A frame is a 4-byte big-endian payload length followed by exactly one CBOR map.

| frame | map |
| --- | --- |
| request | `{{"v": version, "id": request id, "op": opcode, "b": body, "h"?, "q"?, "c"?}}` |
| response, OK | `{{"id": request id, "s": 0, "r": result}}` |
| response, error | `{{"id": request id, "s": status, "e": {{"code": NAME, "msg": text, ...}}}}` |
| push (topics) | `{{"id": subscription request id, "s": 0, "p": payload}}` |

- The first request on a connection must be `HELLO`; until it succeeds frames are limited to
  {PRE_HELLO_MAX_FRAME} bytes, afterwards to the server's `max_frame` (default {DEFAULT_MAX_FRAME}).
- Many requests may be in flight on one connection; responses carry the request id and may
  arrive in any order. Requests in flight together are concurrent and run in no promised
  order (a read sent before an earlier write was answered may not see it); to order two
  requests, send the second after the first's answer arrived.
- Decoding is strict: at most {MAX_DEPTH} levels of nesting, no indefinite-length items, no
  duplicate map keys, no CBOR tags, no bytes after the map, no unknown fields, exact types.
  A malformed payload is answered with `BAD_REQUEST` (request id 0 if unreadable); a bad length
  prefix (zero or over the limit) is answered once and the connection is closed.
- Decoding work is bounded: a request holds at most {MAX_FRAME_ITEMS} CBOR data items (every
  scalar, string and container, map keys included), a container at most {MAX_LIST_ITEMS}
  elements or entries, and, when `op` precedes `b` in the request map (as Loom's clients
  write it), a body no more than its type's schema allows; such payloads are refused with
  `TOO_LARGE` before they are decoded. A connection that spends more than a tenth of the
  server's time decoding is paused before its next frame.
- `h` carries `X-Auth-User` / `X-Auth-Roles` / `X-Auth-Attrs`, honoured only from a configured
  gateway identity.
- `q` is a per-client sequence number for writes: with HELLO's `client_id` it makes a retried
  write apply exactly once.
- `c` is a read's consistency: `"linearizable"` (the default) is answered by the leader and
  reflects every write acknowledged before the read was sent; `"stale"` is answered by any
  node, leader, follower or learner, from its own replica at once, and may miss recent
  writes. `c` on a type that changes state (a log write or cluster administration) is
  refused with `BAD_REQUEST`.

## Status codes

| code | name |
| --- | --- |
"""

EXECUTION = """
The class is what an ACL grants (`class:read|write|admin`) and what the audit log records
(every write and admin request). *Runs as* is the path the request takes through the node:

| runs as | path |
| --- | --- |
| `local` | answered by the node that receives it, from its own state; never enters the log |
| `log-read` | answered by the state machine after a ReadIndex round (or at once, \
`c: "stale"`); appends nothing to the log |
| `log-write` | proposed as one log entry, answered once a majority has it and it is applied |
| `cluster-admin` | a membership or leadership change carried out by the Raft driver |
| `node-task` | carried out by the node that receives it, in the request's own task (a \
backup: `SNAPSHOT_SAVE`); never enters the log |

A `log-write` or `cluster-admin` request that times out may or may not have taken effect;
any other request can simply be sent again. Globs (`MAP_SCAN`'s `match`, and ACL structure and
key scopes) follow one dialect, described below.
"""


def _field(name: str, f: Field) -> str:
    s = f"`{name}`: {f.kind.value}"
    if not f.required:
        s += "?"
    return s


def render() -> str:
    out = [HEAD]
    out += [f"| {s.value} | `{s.name}` |\n" for s in Status]
    out.append("\n## Message types\n\n")
    types = sorted(catalog.BY_OPCODE.values(), key=lambda m: m.opcode)
    out.append(f"{len(types)} types. Every one can be granted by exact name, by category "
               "(`category:MAP`), by class (`class:read|write|admin`) or with `*` (except RAFT "
               "types, which exist only on the peer listener).\n")
    out.append(EXECUTION)
    for cat in catalog.Category:
        rows = [m for m in types if m.category is cat]
        if not rows:
            continue
        out.append(f"\n### {cat.value}\n\n| opcode | name | class | runs as | body | |\n"
                   "| --- | --- | --- | --- | --- | --- |\n")
        for m in rows:
            body = ", ".join(_field(n, f) for n, f in m.schema.items()) or "—"
            note = m.doc
            if m.reveal is not None:
                how = "withheld" if m.reveal.redact else "refused"
                cond = f" when `{m.reveal.flag}`" if m.reveal.flag else ""
                note += f" Reply needs `{m.reveal.read_op}`{cond} ({how} without it)."
            if m.listener is catalog.Listener.PEER:
                note += " Peer listener only."
            out.append(f"| `{m.opcode:#06x}` | `{m.name}` | {m.access.value} | "
                       f"{m.execution.value} | {body} | {note} |\n")
    out.append(f"\n## Glob patterns\n\n{DIALECT}")
    return "".join(out)


if __name__ == "__main__":
    sys.stdout.write(render())
