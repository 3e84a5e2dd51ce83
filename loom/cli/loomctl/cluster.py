"""Cluster and node commands: `cluster status` (every endpoint asked for its own Raft state,
the answers merged into one row per node), `members ...`, `leader transfer`, `ping` and the
`call` escape hatch."""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from loom.cli.loomctl.base import Ctx, UsageError, ok, unwrap
from loom.cli.output import scalar_text, table
from loom.client.errors import ClientError, ConfigError
from loom.client.protocol import RetryPolicy, format_endpoint, parse_endpoint, parse_endpoints
from loom.wire.errors import Conflict, LoomError

# -- status -----------------------------------------------------------------------------------
STATUS_COLUMNS = ("ID", "ROLE", "TERM", "COMMIT", "APPLIED", "LEADER", "REACHABLE", "BUILD")
UNREACHABLE = "unreachable"
NOT_QUERIED = "not queried"


@dataclass(frozen=True)
class NodeAnswer:
    """One endpoint's CLUSTER_STATUS answer, or why it could not be had."""

    endpoint: str
    status: dict[str, Any] | None
    error: str | None = None


def _leader_view(answers: Sequence[NodeAnswer]) -> dict[str, Any] | None:
    """The answer of the node that is leader in the highest term (its member list carries
    reachability); None when no queried node is leader."""
    leaders = [a.status for a in answers
               if a.status is not None and a.status.get("role") == "leader"]
    if not leaders:
        return None
    return max(leaders, key=_term)


def _term(status: dict[str, Any]) -> int:
    t = status.get("term")
    return t if isinstance(t, int) and not isinstance(t, bool) else -1


def _members(status: dict[str, Any] | None) -> list[dict[str, Any]]:
    members = status.get("members") if status is not None else None
    return [m for m in members if isinstance(m, dict)] if isinstance(members, list) else []


def _build(status: dict[str, Any]) -> str | None:
    """"compiled" or "pure" (loom/buildinfo.py); None from a node too old to say."""
    build = status.get("build")
    kind = build.get("kind") if isinstance(build, dict) else None
    return kind if isinstance(kind, str) else None


def merge_status(answers: Sequence[NodeAnswer]) -> list[dict[str, Any]]:
    """One row per node, sorted by id, from every endpoint's own CLUSTER_STATUS answer.

    An endpoint that could not be asked is listed with role "unreachable" (under the member id
    whose client address it is, when some answer names it; else under its address). Members
    named by the answers but not among the endpoints are listed with role "not queried".
    `reachable` is the leader's view of each member (None without a leader answer)."""
    leader = _leader_view(answers)
    seen_reach = {m.get("id"): m.get("reachable") for m in _members(leader)}
    if leader is not None and seen_reach.get(leader.get("node")) is None:
        seen_reach[leader.get("node")] = True  # the leader reaches itself
    by_addr: dict[str, Any] = {}
    known: dict[Any, None] = {}
    for a in answers:
        for m in _members(a.status):
            known.setdefault(m.get("id"))
            if isinstance(m.get("client_addr"), str):
                by_addr.setdefault(m["client_addr"], m.get("id"))
    rows: dict[str, dict[str, Any]] = {}

    def add(node: Any, row: dict[str, Any]) -> None:
        key = str(node)
        if key not in rows:
            rows[key] = {"id": node, **row, "reachable": seen_reach.get(node)}

    for a in answers:
        s = a.status
        if s is not None:
            role = s.get("role")
            if s.get("joining") is True:  # started empty, not yet caught up: counts in no quorum
                role = f"{role} (joining)"
            add(s.get("node"), {"endpoint": a.endpoint, "role": role,
                                "term": s.get("term"), "commit": s.get("commit_index"),
                                "applied": s.get("applied_index"), "leader": s.get("leader"),
                                "build": _build(s), "error": None})
    for a in answers:
        if a.status is None:
            add(by_addr.get(a.endpoint, a.endpoint),
                {"endpoint": a.endpoint, "role": UNREACHABLE, "term": None, "commit": None,
                 "applied": None, "leader": None, "build": None, "error": a.error})
    for node in known:
        if node is not None:
            add(node, {"endpoint": None, "role": NOT_QUERIED, "term": None, "commit": None,
                       "applied": None, "leader": None, "build": None, "error": None})
    return [rows[k] for k in sorted(rows)]


def status_table(rows: Sequence[dict[str, Any]]) -> str:
    keys = ("id", "role", "term", "commit", "applied", "leader", "reachable", "build")
    return table(STATUS_COLUMNS, [[r[k] for k in keys] for r in rows])


def status_json(answers: Sequence[NodeAnswer]) -> list[dict[str, Any]]:
    """The per-node answers, each with the endpoint it came from."""
    return [{"endpoint": a.endpoint, **a.status} if a.status is not None else
            {"endpoint": a.endpoint, "role": UNREACHABLE, "error": a.error} for a in answers]


def query_every_endpoint(c: Ctx) -> list[NodeAnswer]:
    """CLUSTER_STATUS from each endpoint, asked in parallel, each node answering for itself
    (no leader following, one attempt). Raises the first failure when no endpoint answered."""
    endpoints = [format_endpoint(e) for e in parse_endpoints(c.args.endpoints)]
    endpoints = list(dict.fromkeys(endpoints))
    clients = [c.make_client(e, retry=RetryPolicy(attempts=1)) for e in endpoints]
    failures: list[BaseException] = []

    def ask(i: int) -> NodeAnswer:
        try:
            r = clients[i].call("CLUSTER_STATUS")
        except (LoomError, ClientError) as e:
            failures.append(e)
            return NodeAnswer(endpoints[i], None, str(e))
        finally:
            clients[i].close()
        if not isinstance(r, dict):
            return NodeAnswer(endpoints[i], None, f"unexpected answer: {r!r}")
        return NodeAnswer(endpoints[i], r)

    with ThreadPoolExecutor(max_workers=min(16, len(endpoints))) as pool:
        answers = list(pool.map(ask, range(len(endpoints))))
    if all(a.status is None for a in answers) and failures:
        raise failures[0]
    return answers


def cluster_status(c: Ctx, a: argparse.Namespace) -> Any:
    answers = query_every_endpoint(c)
    if a.output == "json":
        return status_json(answers)
    return status_table(merge_status(answers))


def members_list(c: Ctx, a: argparse.Namespace) -> Any:
    r = c.call("MEMBER_LIST")
    if a.output == "json":
        return r
    members = _members(r)
    return table(("ID", "VOTER", "PEER_ADDR", "CLIENT_ADDR"),
                 [[m.get("id"), m.get("voter"), m.get("peer_addr"), m.get("client_addr")]
                  for m in members])


def _peer_addr(text: str) -> str:
    """HOST:PORT (port required; [v6]:PORT for IPv6), normalised."""
    if not re.fullmatch(r"(\[[^\]]+\]|[^:\[\]]+):\d+", text.strip()):
        raise UsageError(f"--peer-addr expects HOST:PORT, got {text!r}")
    try:
        return format_endpoint(parse_endpoint(text))
    except ConfigError as e:
        raise UsageError(f"--peer-addr: {e}") from None


def _admin_text(a: argparse.Namespace, r: Any, done: str) -> Any:
    if a.output == "json":
        return r
    index = unwrap(r, "index")
    return f"{done} (log index {index})" if isinstance(index, int) else f"{done}"


def members_add(c: Ctx, a: argparse.Namespace) -> Any:
    if a.voter and a.learner:
        raise UsageError("--voter and --learner exclude each other")
    r = c.call("MEMBER_ADD", node=a.node, peer_addr=_peer_addr(a.peer_addr),
               learner=not a.voter, readmit=a.readmit)
    how = "re-admitted as a learner" if a.readmit else \
        f"added as a {'voter' if a.voter else 'learner'}"
    return _admin_text(a, r, f"{a.node} {how}")


def members_promote(c: Ctx, a: argparse.Namespace) -> Any:
    return _admin_text(a, c.call("MEMBER_PROMOTE", node=a.node), f"{a.node} promoted to voter")


def members_remove(c: Ctx, a: argparse.Namespace) -> Any:
    try:
        r = c.call("MEMBER_REMOVE", node=a.node)
    except Conflict:
        # The log refuses a change that changes nothing; say why in the operator's terms.
        members = _members(c.call("MEMBER_LIST"))
        if all(m.get("id") != a.node for m in members):
            known = ", ".join(sorted(str(m.get("id")) for m in members)) or "none"
            raise Conflict(f"{a.node} is not a member of the cluster (members: {known})"
                           ) from None
        raise
    return _admin_text(a, r, f"{a.node} removed")


def leader_transfer(c: Ctx, a: argparse.Namespace) -> Any:
    r = c.call("LEADER_TRANSFER", to=a.to)
    if a.output == "json":
        return r
    new = r.get("leader", r.get("to")) if isinstance(r, dict) else None
    if new is None or isinstance(new, (dict, list)):
        return ok(r)
    return f"leadership transferred to {scalar_text(new)}"


def ping(c: Ctx, a: argparse.Namespace) -> Any:
    client = c.client()  # connected: the round trip below is the PING alone
    t0 = time.perf_counter()
    client.call("PING")
    ms = (time.perf_counter() - t0) * 1000
    hello = client.hello
    node = hello.node if hello is not None else None
    if a.output == "json":
        return {"pong": True, "node": node, "address": client.address, "rtt_ms": round(ms, 3)}
    return f"PONG from {node} ({client.address}) in {ms:.2f} ms"


def call(c: Ctx, a: argparse.Namespace) -> Any:
    try:
        body = json.loads(a.json)
    except ValueError as e:
        raise UsageError(f"--json is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise UsageError("--json must be a JSON object")
    return c.call_body(a.op, body)
