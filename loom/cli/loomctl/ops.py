"""Day-2 operations: `snapshot save` (a backup from the leader) and `members replace` (a dead
member swapped for a new one). Both are sequences of catalog requests; the node decides."""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import sys
import time
from pathlib import Path
from typing import IO, Any

from loom.cli.loomctl.base import Ctx, UsageError
from loom.cli.loomctl.cluster import _leader_view, _members, _peer_addr, query_every_endpoint
from loom.wire.errors import Internal, Unavailable

MAX_CHUNKS = 1 << 20  # a bound on the fetch loop: 256 GiB at the default chunk size


# -- snapshot save ------------------------------------------------------------------------------
def snapshot_save(c: Ctx, a: argparse.Namespace) -> Any:
    """Fetch a consistent snapshot from the leader into FILE: written to a temporary file
    (0600) next to it, checked against the SHA-256 the leader gave, fsynced, then renamed, so
    FILE is either absent or a complete, checked backup."""
    path = Path(a.file)
    if path.exists() and not a.force:
        raise UsageError(f"{path} exists; pass --force to replace it")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    show = sys.stderr.isatty()
    t0 = time.monotonic()
    first = c.call("SNAPSHOT_SAVE")
    sid, size, digest = first["snapshot"], first["size"], first["sha256"]
    h = hashlib.sha256()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            offset = _write(f, h, first, 0)
            for _ in range(MAX_CHUNKS):
                if show:
                    _progress(offset, size, t0)
                if offset >= size:
                    break
                offset = _write(f, h, c.call("SNAPSHOT_SAVE", snapshot=sid, offset=offset),
                                offset)
            f.flush()
            os.fsync(f.fileno())
        if offset != size or h.hexdigest() != digest:
            raise Internal(f"the snapshot arrived damaged ({offset} of {size} bytes, sha256 "
                           f"{h.hexdigest()} instead of {digest}); nothing was saved")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if show:
            sys.stderr.write("\n")
    info = {"file": str(path), "node": first.get("node"), "index": first["index"],
            "term": first["term"], "size": size, "sha256": digest,
            "encrypted": first["encrypted"]}
    if a.output == "json":
        return info
    return (f"snapshot saved to {path}: index {info['index']}, term {info['term']}, {size} "
            f"bytes from {info['node']}, sha256 {digest}, "
            f"{'encrypted' if info['encrypted'] else 'not encrypted'}")


def _write(f: IO[bytes], h: Any, r: Any, offset: int) -> int:
    if not isinstance(r, dict) or r.get("offset") != offset or not isinstance(r.get("data"),
                                                                             bytes):
        raise Internal(f"unexpected SNAPSHOT_SAVE answer at offset {offset}")
    data: bytes = r["data"]
    if not data:
        raise Internal(f"the node sent an empty chunk at offset {offset}")
    f.write(data)
    h.update(data)
    return offset + len(data)


def _progress(done: int, total: int, t0: float) -> None:
    width = 30
    frac = done / total if total else 1.0
    bar = "#" * int(frac * width)
    rate = done / max(time.monotonic() - t0, 1e-6) / (1 << 20)
    sys.stderr.write(f"\rsnapshot [{bar:<{width}}] {done / (1 << 20):.1f}/"
                     f"{total / (1 << 20):.1f} MiB {frac:4.0%} {rate:.1f} MiB/s")
    sys.stderr.flush()


# -- members replace ----------------------------------------------------------------------------
RETRY_S = 0.2  # between attempts of a membership change the log refused for now


def members_replace(c: Ctx, a: argparse.Namespace) -> Any:
    """Swap dead member OLD for NEW (started beforehand with `loomd --join`), in the order that
    never lowers the number of failures the cluster tolerates below what it was with OLD dead:
    NEW joins as a learner (it does not count in any majority while it catches up), OLD is
    removed, then NEW is promoted once caught up. Each step is retried while the log refuses it
    for now (one change in flight, learner not caught up), until --wait seconds."""
    old, new = a.node, a.with_
    if old == new:
        raise UsageError("--with must name another node than the one replaced")
    addr = _peer_addr(a.peer_addr)
    members = {m.get("id"): m for m in _members(_leader_status(c))}
    if old not in members and new not in members:
        known = ", ".join(sorted(str(k) for k in members)) or "none"
        raise UsageError(f"{old} is not a member of the cluster (members: {known})")
    # Run again after an interruption, it picks up where it stopped: NEW already a member,
    # OLD already removed. A change the leader finds already made ("no-op": leadership moved
    # since its member list was read) counts as done.
    deadline = time.monotonic() + a.wait
    steps: list[str] = []
    if new not in members and _retry(c, deadline, "MEMBER_ADD", node=new, peer_addr=addr,
                                     learner=True, readmit=False):
        steps.append(f"{new} added as a learner")
    if old in members and _retry(c, deadline, "MEMBER_REMOVE", node=old):
        steps.append(f"{old} removed")
    if not members.get(new, {}).get("voter") and _retry(c, deadline, "MEMBER_PROMOTE",
                                                        node=new):
        steps.append(f"{new} promoted to voter")
    deny = _deny_hint(a.old_cert, old)
    if a.output == "json":
        return {"replaced": old, "with": new, "peer_addr": addr, "steps": steps, **deny}
    lines = [f"{old} replaced by {new}: " + ", ".join(steps)]
    if deny:
        lines.append(deny["deny"])
    return "\n".join(lines)


def _leader_status(c: Ctx) -> dict[str, Any]:
    """The leader's CLUSTER_STATUS, asked of every endpoint: a node's own member list may be
    behind (a removed node never learns that it was), the leader's is the one that counts."""
    leader = _leader_view(query_every_endpoint(c))
    if leader is None:
        raise Unavailable("no endpoint is the leader now (list every node in --endpoints, "
                          "or retry once an election is over)")
    return leader


NOOP = "no-op change"  # the log's refusal of a change already made (raft/confchange.py)


def _retry(c: Ctx, deadline: float, op: str, **body: Any) -> bool:
    """Whether the change was made now (False: it had been made already)."""
    from loom.wire.errors import Conflict

    while True:
        try:
            c.call(op, **body)
            return True
        except Conflict as e:
            if NOOP in e.message:
                return False
            if time.monotonic() >= deadline:
                raise Conflict(f"{op} {body.get('node')}: still refused after --wait: "
                               f"{e.message}") from None
            time.sleep(RETRY_S)


def _deny_hint(cert: str | None, node: str) -> dict[str, Any]:
    """The removed node's certificate serial and how to refuse it everywhere: the peer plane
    already refuses a removed id; the deny list also stops it on the client port."""
    if cert is None:
        return {}
    from cryptography import x509

    try:
        c = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    except (OSError, ValueError) as e:
        raise UsageError(f"--old-cert {cert}: {e}") from None
    serial = f"{c.serial_number:x}"
    return {"denied_serial": serial,
            "deny": f"{node}'s certificate has serial {serial}: add it to [tls] denied_serials "
                    "on every node and reload them (SIGHUP) to refuse it on every port"}


# -- keys rotate / rewrap -----------------------------------------------------------------------
def keys_rotate(c: Ctx, a: argparse.Namespace) -> Any:
    """With FILE: the offline edit of a plain keyring (nodes use it from their next start).
    Without: KEYS_ROTATE on the node --endpoints names, in force at once."""
    if a.file:
        from loom.cli.loomctl.base import offline as tool
        from loom.cli.loomctl.offline import keys_rotate as rotate_file

        return tool(rotate_file)(c, a)
    r = c.call("KEYS_ROTATE")
    if a.output == "json":
        return r
    return (f"data key {r['key_id']} is active on {c.args.endpoints} for new segments and "
            f"snapshots (keys held: {', '.join(map(str, r['keys']))})")


def keys_rewrap(c: Ctx, a: argparse.Namespace) -> Any:
    """KEYS_REWRAP on the node --endpoints names: its data keys wrapped under --label."""
    body: dict[str, Any] = {"label": a.label}
    if a.token:
        body["token"] = a.token
    r = c.call_body("KEYS_REWRAP", body)
    if a.output == "json":
        return r
    return (f"keyring of {c.args.endpoints} rewrapped under PKCS#11 key {r['label']!r} on "
            f"token {r['token']!r} (keys {', '.join(map(str, r['keys']))})")
