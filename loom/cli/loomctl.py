"""loomctl: the command-line client for Loom (docs/cli.md).

Exit codes: 0 success; 1 the server refused or failed the request (the error code is printed);
2 usage or configuration error (nothing was sent); 3 could not connect or TLS failed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TextIO

from loom.cli.output import emit, emit_json_line, scalar_text, table
from loom.client.errors import (
    ClientError,
    ConfigError,
    ConnectError,
    RequestValidationError,
)
from loom.client.protocol import RetryPolicy, format_endpoint, parse_endpoint, parse_endpoints
from loom.client.sync import Client
from loom.wire import catalog
from loom.wire.catalog import Access
from loom.wire.errors import LoomError, NotFound

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONNECT = 0, 1, 2, 3
DEFAULT_ENDPOINTS = "127.0.0.1:6001"
DEFAULT_MAP = "default"
NOTHING = object()  # a command that printed its own output


class UsageError(Exception):
    """Bad command line or input; nothing was sent (exit 2)."""


class OfflineError(Exception):
    """An offline tool (certs, wal, keys) failed (exit 1); `code` names the failure."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


@dataclass
class Ctx:
    args: argparse.Namespace
    out: TextIO
    _client: Client | None = field(default=None)

    def client(self) -> Client:
        if self._client is None:
            # The connection opens on the first request, after local validation.
            self._client = self.make_client(self.args.endpoints)
        return self._client

    def make_client(self, endpoints: str, **overrides: Any) -> Client:
        a = self.args
        if not a.ca_file:
            raise ConfigError("no CA certificate: pass --ca or set LOOM_CA")
        headers = dict(_kv(h) for h in a.header or [])
        opts: dict[str, Any] = {
            "ca": a.ca_file, "cert": a.cert_file, "key": a.key_file, "client_name": "loomctl",
            "timeout": a.timeout, "headers": headers or None, "server_hostname": a.server_name,
            "connect_timeout": min(a.timeout, 5.0), **overrides}
        return Client(endpoints, **opts)

    def call(self, op: str, **body: Any) -> Any:
        if getattr(self.args, "stale", False):
            if catalog.BY_NAME[op].access is not Access.READ:
                raise UsageError(f"--stale applies to reads only, not {op}")
            return self.client().call(op, stale=True, **body)
        return self.client().call(op, **body)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _kv(text: str) -> tuple[str, str]:
    k, sep, v = text.partition("=")
    if not sep or not k:
        raise UsageError(f"--header expects NAME=VALUE, got {text!r}")
    return k, v


def _ok(r: Any) -> Any:
    return "OK" if r is None else r


def _unwrap(r: Any, *names: str) -> Any:
    """`r[name]` for the first name present when the server wraps a value in a map."""
    if isinstance(r, dict):
        for n in names:
            if n in r:
                return r[n]
    return r


def _value_arg(a: argparse.Namespace) -> bytes:
    """VALUE from the command line; '-' reads stdin's bytes; --file reads a file."""
    if getattr(a, "file", None):
        try:
            return Path(a.file).read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read {a.file}: {e.strerror or e}") from None
    if a.value == "-":
        return sys.stdin.buffer.read()
    if a.value is None:
        raise UsageError("a VALUE (or --file) is required")
    return str(a.value).encode("utf-8")


# -- map --------------------------------------------------------------------------------------
def _mapname(a: argparse.Namespace) -> str:
    return str(getattr(a, "name", None) or a.map)


def cmd_get(c: Ctx, a: argparse.Namespace) -> Any:
    name = _mapname(a)
    r = _unwrap(c.call("MAP_GET", name=name, key=a.key), "value")
    if r is None:
        raise NotFound(f"key {a.key!r} not found in map {name!r}")
    return r


def cmd_put(c: Ctx, a: argparse.Namespace) -> Any:
    op = "MAP_PUT_IF_ABSENT" if getattr(a, "if_absent", False) else "MAP_PUT"
    return _ok(c.call(op, name=_mapname(a), key=a.key, value=_value_arg(a), ttl_ms=a.ttl))


def cmd_del(c: Ctx, a: argparse.Namespace) -> Any:
    r = c.call("MAP_DELETE", name=_mapname(a), key=a.key)
    existed = _unwrap(r, "deleted", "existed")
    if isinstance(existed, bool):
        return {"deleted": existed} if a.output == "json" else (
            "deleted" if existed else "not found")
    return _ok(r)


def cmd_map_ttl(c: Ctx, a: argparse.Namespace) -> Any:
    if a.clear or a.set is not None:
        return c.call("MAP_SET_TTL", name=_mapname(a), key=a.key,
                      ttl_ms=None if a.clear else a.set)
    return c.call("MAP_GET_TTL", name=_mapname(a), key=a.key)


# -- lock / semaphore: a session per command unless --session is given ------------------------
def _session(c: Ctx, a: argparse.Namespace) -> tuple[int, bool]:
    if a.session is not None:
        return a.session, False
    r = _unwrap(c.call("SESSION_OPEN", ttl_ms=a.session_ttl), "session_id", "id")
    if not isinstance(r, int) or isinstance(r, bool):
        raise LoomError(f"unexpected SESSION_OPEN answer: {r!r}")
    return r, True


def _with_session(op: str, **extra: str) -> Callable[[Ctx, argparse.Namespace], Any]:
    def run(c: Ctx, a: argparse.Namespace) -> Any:
        sid, opened = _session(c, a)
        body = {k: getattr(a, v) for k, v in extra.items()}
        try:
            r = c.call(op, name=a.name, session_id=sid, **body)
        except BaseException:
            if opened:
                _close_session(c, sid)
            raise
        got = _unwrap(r, "token", "acquired")
        if opened and (got is None or got is False):
            _close_session(c, sid)
            return {"acquired": False, "result": r}
        return {"session_id": sid, "result": r}
    return run


def _close_session(c: Ctx, sid: int) -> None:
    try:
        c.call("SESSION_CLOSE", session_id=sid)
    except (LoomError, ClientError):
        pass  # it expires on its own


def cmd_topic_subscribe(c: Ctx, a: argparse.Namespace) -> Any:
    for n, msg in enumerate(c.client().subscribe(a.name, a.from_seq, timeout=a.wait), 1):
        if a.output == "json":
            emit_json_line(msg, c.out)
        else:
            c.out.write(scalar_text(_unwrap(msg, "value")) if not isinstance(msg, dict)
                        or "value" in msg else json.dumps(str(msg)))
            c.out.write("\n")
            c.out.flush()
        if a.count and n >= a.count:
            break
    return NOTHING


def cmd_acl_set(c: Ctx, a: argparse.Namespace) -> Any:
    try:
        raw = sys.stdin.buffer.read() if a.file == "-" else Path(a.file).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {a.file}: {e.strerror or e}") from None
    try:
        policy = tomllib.loads(raw.decode()) if a.file.endswith(".toml") else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{a.file}: not a valid policy document: {e}") from None
    return _ok(c.call("ACL_SET", policy=policy, expected_version=a.expected_version))


def cmd_ping(c: Ctx, a: argparse.Namespace) -> Any:
    client = c.client()
    t0 = time.perf_counter()
    client.call("PING")
    ms = (time.perf_counter() - t0) * 1000
    hello = client.hello
    node = hello.node if hello is not None else None
    if a.output == "json":
        return {"pong": True, "node": node, "address": client.address, "rtt_ms": round(ms, 3)}
    return f"PONG from {node} ({client.address}) in {ms:.2f} ms"


def cmd_call(c: Ctx, a: argparse.Namespace) -> Any:
    try:
        body = json.loads(a.json)
    except ValueError as e:
        raise UsageError(f"--json is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise UsageError("--json must be a JSON object")
    return c.client().call_body(a.op, body)


# -- cluster ----------------------------------------------------------------------------------
STATUS_COLUMNS = ("ID", "ROLE", "TERM", "COMMIT", "APPLIED", "LEADER", "REACHABLE")
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
            add(s.get("node"), {"endpoint": a.endpoint, "role": s.get("role"),
                                "term": s.get("term"), "commit": s.get("commit_index"),
                                "applied": s.get("applied_index"), "leader": s.get("leader"),
                                "error": None})
    for a in answers:
        if a.status is None:
            add(by_addr.get(a.endpoint, a.endpoint),
                {"endpoint": a.endpoint, "role": UNREACHABLE, "term": None, "commit": None,
                 "applied": None, "leader": None, "error": a.error})
    for node in known:
        if node is not None:
            add(node, {"endpoint": None, "role": NOT_QUERIED, "term": None, "commit": None,
                       "applied": None, "leader": None, "error": None})
    return [rows[k] for k in sorted(rows)]


def status_table(rows: Sequence[dict[str, Any]]) -> str:
    keys = ("id", "role", "term", "commit", "applied", "leader", "reachable")
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


def cmd_cluster_status(c: Ctx, a: argparse.Namespace) -> Any:
    answers = query_every_endpoint(c)
    if a.output == "json":
        return status_json(answers)
    return status_table(merge_status(answers))


def cmd_members_list(c: Ctx, a: argparse.Namespace) -> Any:
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
    index = _unwrap(r, "index")
    return f"{done} (log index {index})" if isinstance(index, int) else f"{done}"


def cmd_members_add(c: Ctx, a: argparse.Namespace) -> Any:
    r = c.call("MEMBER_ADD", node=a.node, peer_addr=_peer_addr(a.peer_addr),
               learner=not a.voter, readmit=a.readmit)
    how = "re-admitted as a learner" if a.readmit else \
        f"added as a {'voter' if a.voter else 'learner'}"
    return _admin_text(a, r, f"{a.node} {how}")


def cmd_members_promote(c: Ctx, a: argparse.Namespace) -> Any:
    return _admin_text(a, c.call("MEMBER_PROMOTE", node=a.node), f"{a.node} promoted to voter")


def cmd_members_remove(c: Ctx, a: argparse.Namespace) -> Any:
    return _admin_text(a, c.call("MEMBER_REMOVE", node=a.node), f"{a.node} removed")


def cmd_leader_transfer(c: Ctx, a: argparse.Namespace) -> Any:
    r = c.call("LEADER_TRANSFER", to=a.to)
    if a.output == "json":
        return r
    new = r.get("leader", r.get("to")) if isinstance(r, dict) else None
    if new is None or isinstance(new, (dict, list)):
        return _ok(r)
    return f"leadership transferred to {scalar_text(new)}"


# -- offline tools (imported lazily: they live in other packages) ----------------------------
def cmd_certs_dev(c: Ctx, a: argparse.Namespace) -> Any:
    from loom.security.devpki import PKIExistsError, create_dev_pki

    try:
        r = create_dev_pki(Path(a.out), force=a.force)
    except PKIExistsError as e:
        raise UsageError(f"{e} (pass --force to overwrite)") from None
    return r if r is not None else f"development PKI written to {a.out}"


def _storage_admin() -> Any:
    """loom.storage.admin, imported only by the commands that need it."""
    return importlib.import_module("loom.storage.admin")


def cmd_wal_inspect(c: Ctx, a: argparse.Namespace) -> Any:
    return _storage_admin().inspect(a.dir, a.keyring)


def cmd_wal_verify(c: Ctx, a: argparse.Namespace) -> Any:
    r = _storage_admin().verify(a.dir, a.keyring)
    return "OK" if r is None or r is True else r


def cmd_keys_create(c: Ctx, a: argparse.Namespace) -> Any:
    key_id = _storage_admin().create_keyring(a.file)
    if a.output == "json":
        return {"key_id": key_id}
    return f"keyring {a.file} created, key id {key_id}"


def cmd_keys_rotate(c: Ctx, a: argparse.Namespace) -> Any:
    key_id = _storage_admin().rotate_key(a.file)
    return {"key_id": key_id} if a.output == "json" else key_id



# -- the command line -------------------------------------------------------------------------
Handler = Callable[[Ctx, argparse.Namespace], Any]


def _op(op: str, *fields: str, wrap: Callable[[Any], Any] = lambda r: r,
        value: str | None = None) -> Handler:
    """A command that sends `op` with body fields taken from same-named arguments."""
    def run(c: Ctx, a: argparse.Namespace) -> Any:
        body = {f.split("=")[0]: getattr(a, f.split("=")[-1]) for f in fields}
        if value is not None:
            body[value] = _value_arg(a)
        return wrap(c.call(op, **body))
    return run


def _offline(fn: Handler) -> Handler:
    """Offline tools: their own failures become one line and exit 1 (OSError: exit 2)."""
    def run(c: Ctx, a: argparse.Namespace) -> Any:
        try:
            return fn(c, a)
        except (ImportError, UsageError, FileNotFoundError):
            raise
        except Exception as e:  # the tool's own error types are not known here
            code = "".join("_" + ch if ch.isupper() else ch.upper()
                           for ch in type(e).__name__).lstrip("_")
            raise OfflineError(code, str(e) or type(e).__name__) from e
    return run


def _globals(p: argparse.ArgumentParser, suppress: bool) -> None:
    d: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    g = p.add_argument_group("connection and output")
    g.add_argument("--endpoints", metavar="HOST:PORT,...",
                   help="comma-separated client addresses (env LOOM_ENDPOINTS; "
                        f"default {DEFAULT_ENDPOINTS})", **d)
    g.add_argument("--ca", dest="ca_file", metavar="FILE",
                   help="cluster CA certificate (env LOOM_CA)", **d)
    g.add_argument("--cert", dest="cert_file", metavar="FILE",
                   help="client certificate (env LOOM_CERT)", **d)
    g.add_argument("--key", dest="key_file", metavar="FILE",
                   help="client private key (env LOOM_KEY)", **d)
    g.add_argument("--server-name", metavar="NAME",
                   help="name expected in the server certificate (default: endpoint host)", **d)
    g.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="deadline per request, retries included (default 10)", **d)
    g.add_argument("-o", "--output", choices=("text", "json"), help="output format", **d)
    g.add_argument("--map", metavar="NAME", help="map of get/put/del (default 'default')", **d)
    g.add_argument("--header", action="append", metavar="NAME=VALUE",
                   help="request header (gateways: X-Auth-User, X-Auth-Roles)", **d)
    g.add_argument("--stale", action="store_true",
                   help="reads: let the endpoint asked answer from its own replica, leader or "
                        "not (faster; may miss the latest writes)", **d)


class _Tree:
    def __init__(self) -> None:
        self.root = _Parser(prog="loomctl", description="Command-line client for Loom.",
                            epilog="Exit codes: 0 ok, 1 refused/failed by the server, "
                                   "2 usage or configuration, 3 connection or TLS.")
        _globals(self.root, suppress=False)
        self.subs = self.root.add_subparsers(title="commands", metavar="COMMAND")

    def group(self, name: str, help: str) -> argparse._SubParsersAction[_Parser]:
        g = self.subs.add_parser(name, help=help, description=help)
        return g.add_subparsers(title="subcommands", metavar="SUBCOMMAND", required=True)

    @staticmethod
    def leaf(subs: argparse._SubParsersAction[_Parser], cmd: str, text: str,
             func: Handler, /, *args: str, **opts: dict[str, Any]) -> _Parser:
        p = subs.add_parser(cmd, help=text, description=text)
        _globals(p, suppress=True)
        for spec in args:
            _positional(p, spec)
        for flag, kw in opts.items():
            p.add_argument("--" + flag.replace("_", "-"), dest=flag, **kw)
        p.set_defaults(func=func)
        return p


INT: dict[str, Any] = {"type": int}


def _positional(p: argparse.ArgumentParser, spec: str) -> None:
    """'key', 'delta:int', 'value?' (optional)."""
    name, _, kind = spec.partition(":")
    optional = name.endswith("?")
    name = name.rstrip("?")
    kw: dict[str, Any] = {"metavar": name.upper()}
    if kind == "int":
        kw["type"] = int
    if optional:
        kw["nargs"] = "?"
    p.add_argument(name, **kw)


def build_parser() -> _Parser:
    t = _Tree()
    leaf, s = t.leaf, t.subs
    ttl = {"type": int, "metavar": "MS", "help": "time to live in ms"}
    vfile = {"metavar": "FILE", "help": "read the value from FILE (VALUE may be omitted)"}
    wait = {"type": int, "default": 0, "metavar": "MS", "help": "wait up to MS for it"}

    leaf(s, "get", "print the value of KEY in the default map (--map)", cmd_get, "key")
    leaf(s, "put", "set KEY to VALUE in the default map ('-' reads stdin)", cmd_put, "key",
         "value?", ttl=ttl, file=vfile,
         if_absent={"action": "store_true", "help": "only if KEY is absent"})
    leaf(s, "del", "delete KEY from the default map", cmd_del, "key")

    m = t.group("map", "map commands (--name, default: --map)")
    nm = {"metavar": "NAME", "help": "map name"}
    leaf(m, "put", "set KEY to VALUE", cmd_put, "key", "value?", ttl=ttl, file=vfile,
         if_absent={"action": "store_true", "help": "only if KEY is absent"}, name=nm)
    leaf(m, "get", "value of KEY", cmd_get, "key", name=nm)
    leaf(m, "del", "delete KEY", cmd_del, "key", name=nm)
    leaf(m, "contains", "whether KEY is present",
         lambda c, a: c.call("MAP_CONTAINS", name=_mapname(a), key=a.key), "key", name=nm)
    leaf(m, "keys", "a page of keys",
         lambda c, a: c.call("MAP_KEYS", name=_mapname(a), cursor=a.cursor, limit=a.limit),
         name=nm, cursor={"metavar": "CURSOR"}, limit=INT)
    leaf(m, "size", "number of entries",
         lambda c, a: c.call("MAP_SIZE", name=_mapname(a)), name=nm)
    leaf(m, "clear", "remove every entry",
         lambda c, a: _ok(c.call("MAP_CLEAR", name=_mapname(a))), name=nm)
    leaf(m, "scan", "a page of entries whose key matches a glob",
         lambda c, a: c.call("MAP_SCAN", name=_mapname(a), match=a.match, cursor=a.cursor,
                             limit=a.limit),
         name=nm, match={"metavar": "GLOB"}, cursor={"metavar": "CURSOR"}, limit=INT)
    leaf(m, "ttl", "remaining TTL of KEY (or --set MS / --clear)", cmd_map_ttl, "key",
         name=nm, set={"type": int, "metavar": "MS"}, clear={"action": "store_true"})

    q = t.group("queue", "queue commands")
    leaf(q, "push", "offer VALUE", _op("QUEUE_PUSH", "name", value="value", wrap=_ok),
         "name", "value?", file=vfile)
    leaf(q, "poll", "take the head item", _op("QUEUE_POLL", "name", "timeout_ms=wait"),
         "name", wait=wait)
    leaf(q, "peek", "the head item", _op("QUEUE_PEEK", "name"), "name")
    leaf(q, "size", "number of items", _op("QUEUE_SIZE", "name"), "name")
    leaf(q, "drain", "take up to --max items", _op("QUEUE_DRAIN", "name", "max"), "name",
         max=INT)
    leaf(q, "clear", "remove every item", _op("QUEUE_CLEAR", "name", wrap=_ok), "name")
    leaf(q, "create", "create with a capacity", _op("QUEUE_CREATE", "name", "capacity",
                                                    wrap=_ok), "name", "capacity:int")

    st = t.group("set", "set commands")
    leaf(st, "add", "add MEMBER", _op("SET_ADD", "name", "member"), "name", "member")
    leaf(st, "remove", "remove MEMBER", _op("SET_REMOVE", "name", "member"), "name", "member")
    leaf(st, "contains", "whether MEMBER is present", _op("SET_CONTAINS", "name", "member"),
         "name", "member")
    leaf(st, "members", "a page of members", _op("SET_MEMBERS", "name", "cursor", "limit"),
         "name", cursor={"metavar": "CURSOR"}, limit=INT)
    leaf(st, "size", "number of members", _op("SET_SIZE", "name"), "name")
    leaf(st, "clear", "remove every member", _op("SET_CLEAR", "name", wrap=_ok), "name")

    ls = t.group("list", "list commands")
    leaf(ls, "lpush", "prepend VALUE", _op("LIST_PUSH_LEFT", "name", value="value"),
         "name", "value?", file=vfile)
    leaf(ls, "rpush", "append VALUE", _op("LIST_PUSH_RIGHT", "name", value="value"),
         "name", "value?", file=vfile)
    leaf(ls, "lpop", "remove the first item", _op("LIST_POP_LEFT", "name"), "name")
    leaf(ls, "rpop", "remove the last item", _op("LIST_POP_RIGHT", "name"), "name")
    leaf(ls, "get", "item at INDEX", _op("LIST_GET", "name", "index"), "name", "index:int")
    leaf(ls, "set", "replace the item at INDEX",
         _op("LIST_SET", "name", "index", value="value", wrap=_ok), "name", "index:int",
         "value?", file=vfile)
    leaf(ls, "range", "items START..STOP inclusive", _op("LIST_RANGE", "name", "start", "stop"),
         "name", "start:int", "stop:int")
    leaf(ls, "size", "number of items", _op("LIST_SIZE", "name"), "name")
    leaf(ls, "trim", "keep items START..STOP", _op("LIST_TRIM", "name", "start", "stop",
                                                   wrap=_ok), "name", "start:int", "stop:int")

    ct = t.group("counter", "counter (atomic long) commands")
    leaf(ct, "get", "current value", _op("COUNTER_GET", "name"), "name")
    leaf(ct, "set", "set the value", _op("COUNTER_SET", "name", "value", wrap=_ok), "name",
         "value:int")
    leaf(ct, "incr", "add one", _op("COUNTER_INCREMENT", "name"), "name")
    leaf(ct, "decr", "subtract one", _op("COUNTER_DECREMENT", "name"), "name")
    leaf(ct, "add", "add DELTA", _op("COUNTER_ADD", "name", "delta"), "name", "delta:int")
    leaf(ct, "cas", "set VALUE if the value is EXPECTED",
         _op("COUNTER_COMPARE_AND_SET", "name", "expected", "value"), "name",
         "expected:int", "value:int")

    sess = {"type": int, "metavar": "ID", "help": "use this session (default: open one)"}
    sttl = {"type": int, "metavar": "MS", "help": "TTL of the session opened for the command"}
    lk = t.group("lock", "fenced lock commands (a lock taken without --session is held by a "
                         "session opened for the command, released when that session expires)")
    leaf(lk, "acquire", "acquire, waiting up to --wait MS; prints session and fencing token",
         _with_session("LOCK_LOCK", timeout_ms="wait"), "name", wait=wait, session=sess,
         session_ttl=sttl)
    leaf(lk, "try", "acquire if free", _with_session("LOCK_TRY_LOCK"), "name", session=sess,
         session_ttl=sttl)
    leaf(lk, "release", "release one hold of --session",
         _op("LOCK_UNLOCK", "name", "session_id=session", wrap=_ok), "name",
         session={**sess, "required": True, "help": "the holding session"})
    leaf(lk, "status", "whether held, and the fencing token", _op("LOCK_IS_LOCKED", "name"),
         "name")
    leaf(lk, "owner", "holding session, hold count, token", _op("LOCK_GET_OWNER", "name"),
         "name")
    leaf(lk, "force-unlock", "release whoever holds it (admin)",
         _op("LOCK_FORCE_UNLOCK", "name", wrap=_ok), "name")

    sm = t.group("semaphore", "semaphore commands (sessions as for lock)")
    perm = {"type": int, "metavar": "N", "help": "permits (default 1)"}
    leaf(sm, "init", "initialise with PERMITS", _op("SEMAPHORE_INIT", "name", "permits"),
         "name", "permits:int")
    leaf(sm, "acquire", "take permits, waiting up to --wait MS",
         _with_session("SEMAPHORE_ACQUIRE", permits="permits", timeout_ms="wait"), "name",
         permits=perm, wait=wait, session=sess, session_ttl=sttl)
    leaf(sm, "try", "take permits if available",
         _with_session("SEMAPHORE_TRY_ACQUIRE", permits="permits"), "name", permits=perm,
         session=sess, session_ttl=sttl)
    leaf(sm, "release", "return permits held by --session",
         _op("SEMAPHORE_RELEASE", "name", "session_id=session", "permits", wrap=_ok), "name",
         permits=perm, session={**sess, "required": True, "help": "the holding session"})
    leaf(sm, "available", "available permits", _op("SEMAPHORE_AVAILABLE", "name"), "name")

    la = t.group("latch", "count-down latch commands")
    leaf(la, "set", "set COUNT if at zero", _op("LATCH_TRY_SET_COUNT", "name", "count"),
         "name", "count:int")
    leaf(la, "countdown", "decrement", _op("LATCH_COUNT_DOWN", "name", wrap=_ok), "name")
    leaf(la, "count", "current count", _op("LATCH_GET_COUNT", "name"), "name")
    leaf(la, "await", "wait up to --wait MS for zero",
         _op("LATCH_AWAIT", "name", "timeout_ms=wait"), "name", wait=wait)

    rf = t.group("ref", "atomic reference commands")
    leaf(rf, "get", "current value", _op("ATOMIC_REF_GET", "name"), "name")
    leaf(rf, "set", "set VALUE (no VALUE: clear)",
         lambda c, a: _ok(c.call("ATOMIC_REF_SET", name=a.name, value=a.value)),
         "name", "value?")
    leaf(rf, "cas", "set --value if the value is --expected (absent: unset)",
         _op("ATOMIC_REF_COMPARE_AND_SET", "name", "expected", "value"), "name",
         expected={"metavar": "V"}, value={"metavar": "V"})

    ig = t.group("id", "id generator commands")
    leaf(ig, "next", "reserve --count ids; prints the first", _op("ID_GEN_NEXT", "name",
                                                                   "count"), "name", count=INT)

    tp = t.group("topic", "topic commands")
    leaf(tp, "publish", "publish VALUE", _op("TOPIC_PUBLISH", "name", value="value"), "name",
         "value?", file=vfile)
    leaf(tp, "subscribe", "print messages as they arrive", cmd_topic_subscribe, "name",
         from_seq={"type": int, "metavar": "SEQ"},
         count={"type": int, "metavar": "N", "help": "exit after N messages"},
         wait={"type": float, "metavar": "SECONDS", "help": "fail if no message that long"})

    se = t.group("session", "session commands")
    leaf(se, "open", "open a session; prints its id", _op("SESSION_OPEN", "ttl_ms=ttl"),
         ttl=ttl)
    leaf(se, "heartbeat", "keep session ID alive",
         _op("SESSION_HEARTBEAT", "session_id", wrap=_ok), "session_id:int")
    leaf(se, "close", "close session ID, releasing its locks and permits",
         _op("SESSION_CLOSE", "session_id", wrap=_ok), "session_id:int")

    ac = t.group("acl", "ACL policy commands")
    leaf(ac, "get", "the policy in force and its version", _op("ACL_GET"))
    leaf(ac, "set", "replace the policy with FILE (JSON, or TOML if *.toml; '-': stdin)",
         cmd_acl_set, "file", expected_version=INT)

    sr = t.group("struct", "structure administration")
    leaf(sr, "list", "a page of structures", _op("STRUCT_LIST", "category", "cursor", "limit"),
         category={"metavar": "CATEGORY"}, cursor={"metavar": "CURSOR"}, limit=INT)
    leaf(sr, "stats", "size and counters of a structure",
         _op("STRUCT_STATS", "category", "name"), "category", "name")
    leaf(sr, "destroy", "destroy a structure",
         _op("STRUCT_DESTROY", "category", "name", wrap=_ok), "category", "name")

    leaf(t.group("cluster", "cluster commands"), "status",
         "ask every endpoint for its Raft state; one row per node", cmd_cluster_status)
    mb = t.group("members", "membership commands (sent to the leader)")
    leaf(mb, "list", "members and their addresses", cmd_members_list)
    leaf(mb, "add", "add NODE (a learner unless --voter)", cmd_members_add, "node",
         peer_addr={"required": True, "metavar": "HOST:PORT",
                    "help": "the new node's peer (Raft) address"},
         voter={"action": "store_true", "help": "add as a voter at once"},
         readmit={"action": "store_true",
                  "help": "re-admit a removed NODE (refused otherwise); it comes back as a "
                          "learner"})
    leaf(mb, "promote", "make the caught-up learner NODE a voter", cmd_members_promote, "node")
    leaf(mb, "remove", "remove NODE from the cluster", cmd_members_remove, "node")
    leaf(t.group("leader", "leadership commands (sent to the leader)"), "transfer",
         "hand leadership to --to NODE (default: the most caught-up voter)",
         cmd_leader_transfer, to={"metavar": "NODE"})
    leaf(t.group("node", "node commands"), "stats", "this node's counters", _op("NODE_STATS"))
    leaf(s, "whoami", "the principal and roles requests run as", _op("WHOAMI"))
    leaf(s, "ping", "round trip to a node", cmd_ping)
    leaf(s, "call", "send any operation: call OPNAME --json '{...}' (text for bytes fields "
                    "is UTF-8 encoded)", cmd_call, "op", json={"default": "{}",
                                                              "metavar": "OBJECT"})

    ce = t.group("certs", "certificates (offline)")
    leaf(ce, "dev", "write a development PKI to --out", _offline(cmd_certs_dev),
         out={"required": True, "metavar": "DIR"}, force={"action": "store_true"})
    wl = t.group("wal", "write-ahead log tools (offline)")
    leaf(wl, "inspect", "summarise a data directory", _offline(cmd_wal_inspect), "dir",
         keyring={"metavar": "FILE"})
    leaf(wl, "verify", "check every record of a data directory", _offline(cmd_wal_verify),
         "dir", keyring={"metavar": "FILE"})
    ky = t.group("keys", "encryption-at-rest keyrings (offline)")
    leaf(ky, "create", "create keyring FILE", _offline(cmd_keys_create), "file")
    leaf(ky, "rotate", "add a new current key to FILE; prints its id",
         _offline(cmd_keys_rotate), "file")
    return t.root


def _settle(a: argparse.Namespace) -> None:
    """Fill global options from the environment and defaults."""
    env = os.environ
    a.endpoints = getattr(a, "endpoints", None) or env.get("LOOM_ENDPOINTS") or DEFAULT_ENDPOINTS
    a.ca_file = getattr(a, "ca_file", None) or env.get("LOOM_CA") or None
    a.cert_file = getattr(a, "cert_file", None) or env.get("LOOM_CERT") or None
    a.key_file = getattr(a, "key_file", None) or env.get("LOOM_KEY") or None
    a.timeout = getattr(a, "timeout", None) or 10.0
    a.output = getattr(a, "output", None) or "text"
    a.map = getattr(a, "map", None) or DEFAULT_MAP
    a.header = getattr(a, "header", None) or []
    a.server_name = getattr(a, "server_name", None)
    if a.timeout <= 0:
        raise UsageError("--timeout must be positive")


def _fail(code: int, label: str, message: str) -> int:
    line = " ".join(str(message).split())
    sys.stderr.write(f"loomctl: {label}: {line}\n" if label else f"loomctl: {line}\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    ctx: Ctx | None = None
    try:
        args = build_parser().parse_args(argv)
        _settle(args)
        if not hasattr(args, "func"):
            raise UsageError("no command given (see 'loomctl --help')")
        ctx = Ctx(args, sys.stdout)
        result = args.func(ctx, args)
        if result is not NOTHING:
            emit(result, args.output, sys.stdout)
        return EXIT_OK
    except UsageError as e:
        return _fail(EXIT_USAGE, "USAGE", str(e))
    except ConfigError as e:
        return _fail(EXIT_USAGE, "CONFIG", str(e))
    except RequestValidationError as e:
        return _fail(EXIT_USAGE, "BAD_REQUEST", e.message)
    except ConnectError as e:
        return _fail(EXIT_CONNECT, "CONNECT", str(e))
    except LoomError as e:
        return _fail(EXIT_FAILED, e.status.name, e.message)
    except ImportError as e:
        return _fail(EXIT_USAGE, "UNAVAILABLE", f"this command is not available: {e}")
    except OfflineError as e:
        return _fail(EXIT_FAILED, e.code, str(e))
    except FileNotFoundError as e:
        return _fail(EXIT_USAGE, "NOT_FOUND", f"{e.filename or e}: no such file or directory")
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    finally:
        if ctx is not None:
            ctx.close()


if __name__ == "__main__":
    sys.exit(main())
