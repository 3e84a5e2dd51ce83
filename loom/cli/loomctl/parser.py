"""The argparse parser, built from the command table (tree.py), and the global options.

A row is a `Group` (a command with subcommands, and options they all take, such as `map
--name`) or a `Cmd` whose path is "COMMAND" or "GROUP SUBCOMMAND". Positionals are written
'key', 'delta:int', 'value?' (optional) or 'keys+' (one or more); options as argparse keyword
dictionaries keyed by their destination ('if_absent' is --if-absent)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from loom.cli.loomctl.base import DEFAULT_ENDPOINTS, DEFAULT_MAP, Handler, UsageError

Opts = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    help: str
    opts: Opts = field(default_factory=dict)  # given before or after the subcommand


@dataclass(frozen=True, slots=True)
class Cmd:
    path: str
    help: str
    run: Handler
    args: tuple[str, ...] = ()
    opts: Opts = field(default_factory=dict)


def cmd(path: str, help: str, run: Handler, *args: str, **opts: Mapping[str, Any]) -> Cmd:
    return Cmd(path, help, run, args, opts)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


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
    g.add_argument("--key-passphrase-file", dest="key_passphrase_file", metavar="FILE",
                   help="file (mode 0600) holding the passphrase of an encrypted --key "
                        "(env LOOM_KEY_PASSPHRASE_FILE); never the passphrase itself", **d)
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


def _positional(p: argparse.ArgumentParser, spec: str) -> None:
    name, _, kind = spec.partition(":")
    nargs = {"?": "?", "+": "+"}.get(name[-1:])
    name = name.rstrip("?+")
    kw: dict[str, Any] = {"metavar": name.upper()}
    if kind == "int":
        kw["type"] = int
    if nargs:
        kw["nargs"] = nargs
    p.add_argument(name, **kw)


def _options(p: argparse.ArgumentParser, opts: Opts, suppress: bool) -> None:
    for dest, kw in opts.items():
        extra: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
        # a trailing '_' spells a Python keyword: 'with_' is --with
        p.add_argument("--" + dest.rstrip("_").replace("_", "-"), dest=dest, **{**kw, **extra})


def build_parser(tree: Sequence[Group | Cmd]) -> argparse.ArgumentParser:
    root = _Parser(prog="loomctl", description="Command-line client for Loom.",
                   epilog="Exit codes: 0 ok, 1 refused/failed by the server, "
                          "2 usage or configuration, 3 connection or TLS.")
    _globals(root, suppress=False)
    top = root.add_subparsers(title="commands", metavar="COMMAND")
    groups: dict[str, tuple[argparse._SubParsersAction[_Parser], Group]] = {}
    for row in tree:
        if isinstance(row, Group):
            assert row.name not in groups, f"group {row.name} twice"
            g = top.add_parser(row.name, help=row.help, description=row.help)
            _options(g, row.opts, suppress=False)
            subs = g.add_subparsers(title="subcommands", metavar="SUBCOMMAND", required=True)
            groups[row.name] = (subs, row)
            continue
        words = row.path.split()
        assert len(words) in (1, 2), row.path
        parent, group = (top, None) if len(words) == 1 else groups[words[0]]
        p = parent.add_parser(words[-1], help=row.help, description=row.help)
        _globals(p, suppress=True)
        for spec in row.args:
            _positional(p, spec)
        if group is not None:
            # The group's options may also follow the subcommand; given before it, the
            # subcommand must not overwrite them with its own default.
            _options(p, group.opts, suppress=True)
        _options(p, row.opts, suppress=False)
        p.set_defaults(func=row.run)
    return root


def settle(a: argparse.Namespace) -> None:
    """Fill global options from the environment and defaults."""
    env = os.environ
    a.endpoints = getattr(a, "endpoints", None) or env.get("LOOM_ENDPOINTS") or DEFAULT_ENDPOINTS
    a.ca_file = getattr(a, "ca_file", None) or env.get("LOOM_CA") or None
    a.cert_file = getattr(a, "cert_file", None) or env.get("LOOM_CERT") or None
    a.key_file = getattr(a, "key_file", None) or env.get("LOOM_KEY") or None
    a.key_passphrase_file = (getattr(a, "key_passphrase_file", None)
                             or env.get("LOOM_KEY_PASSPHRASE_FILE") or None)
    a.timeout = getattr(a, "timeout", None) or 10.0
    a.output = getattr(a, "output", None) or "text"
    a.map = getattr(a, "map", None) or DEFAULT_MAP
    a.header = getattr(a, "header", None) or []
    a.server_name = getattr(a, "server_name", None)
    if a.timeout <= 0:
        raise UsageError("--timeout must be positive")
