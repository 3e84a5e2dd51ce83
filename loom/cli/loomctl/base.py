"""What every loomctl command shares: the exit codes, the errors that choose them, the
per-invocation context (one client, opened on the first request) and small helpers."""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from loom.client.errors import ConfigError, ConnectError
from loom.client.protocol import format_endpoint, parse_endpoints, prepare
from loom.client.sync import Client

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONNECT = 0, 1, 2, 3
DEFAULT_ENDPOINTS = "127.0.0.1:6001"
DEFAULT_MAP = "default"
NOTHING = object()  # a command that printed its own output
PROBE_TIMEOUT_S = 1.0  # the TCP probe that tells "nothing listens" from "slow to answer"


class UsageError(Exception):
    """Bad command line or input; nothing was sent (exit 2)."""


class OfflineError(Exception):
    """An offline tool (certs, wal, keys) failed (exit 1); `code` names the failure."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Declined(Exception):
    """The server answered, but the command did not get what it asked for (a lock or permits
    not acquired): `result` is still printed, and loomctl exits 1 naming `code`."""

    def __init__(self, code: str, message: str, result: Any) -> None:
        super().__init__(message)
        self.code = code
        self.result = result


Handler = Callable[["Ctx", argparse.Namespace], Any]


@dataclass
class Ctx:
    args: argparse.Namespace
    out: TextIO
    _client: Client | None = field(default=None)

    def client(self) -> Client:
        """The client, connected (or failed fast: see `fail_fast`). Commands validate their
        request first (`call` does), so a bad request is refused before anything is sent."""
        if self._client is None:
            client = self.make_client(self.args.endpoints)
            self._client = client
            fail_fast(client, self.args.endpoints)
        return self._client

    def make_client(self, endpoints: str, **overrides: Any) -> Client:
        a = self.args
        if not a.ca_file:
            raise ConfigError("no CA certificate: pass --ca or set LOOM_CA")
        headers = dict(_kv(h) for h in a.header or [])
        opts: dict[str, Any] = {
            "ca": a.ca_file, "cert": a.cert_file, "key": a.key_file,
            "key_passphrase_file": a.key_passphrase_file, "client_name": "loomctl",
            "timeout": a.timeout, "headers": headers or None, "server_hostname": a.server_name,
            "connect_timeout": min(a.timeout, 5.0), **overrides}
        return Client(endpoints, **opts)

    def call(self, op: str, **body: Any) -> Any:
        return self.call_body(op, body)

    def call_body(self, op: str, body: dict[str, Any]) -> Any:
        stale = getattr(self.args, "stale", False)
        mt, _ = prepare(op, body)  # local validation: nothing invalid is ever sent
        if stale and mt.is_write:  # the catalog: a type that changes state cannot be stale
            raise UsageError(f"--stale applies to reads only, not {mt.name}")
        return self.client().call_body(op, body, stale=stale)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def fail_fast(client: Client, endpoints: str) -> None:
    """Connect once to the first endpoint that answers. When none does and every endpoint
    refuses the connection or does not resolve, nothing is listening: say so now instead of
    retrying until --timeout. Other failures (a slow handshake, a node restarting) are left to
    the client's retries; a certificate refused is raised at once by the client itself."""
    try:
        client.ensure_connected()
    except ConnectError as e:
        if e.permanent:
            raise
        reasons = [_nothing_listens(h, p) for h, p in parse_endpoints(endpoints)]
        if all(r is not None for r in reasons):
            raise ConnectError("nothing to connect to: " + "; ".join(
                r for r in reasons if r is not None) + " (is loomd running? see --endpoints)",
                permanent=True) from None


def _nothing_listens(host: str, port: int) -> str | None:
    """Why nothing can listen at host:port (does not resolve, refused), or None."""
    where = format_endpoint((host, port))
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return f"{where}: does not resolve ({e.strerror or e})"
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as s:
            s.settimeout(PROBE_TIMEOUT_S)
            try:
                s.connect(sockaddr)
            except ConnectionRefusedError:
                continue
            except OSError:
                return None  # unreachable or slow: not provably down, retrying may help
            return None  # something accepts connections there
    return f"{where}: connection refused"


def _kv(text: str) -> tuple[str, str]:
    k, sep, v = text.partition("=")
    if not sep or not k:
        raise UsageError(f"--header expects NAME=VALUE, got {text!r}")
    return k, v


def ok(r: Any) -> Any:
    return "OK" if r is None else r


def unwrap(r: Any, *names: str) -> Any:
    """`r[name]` for the first name present when the server wraps a value in a map."""
    if isinstance(r, dict):
        for n in names:
            if n in r:
                return r[n]
    return r


def read_input(path: str) -> bytes:
    """The bytes of FILE, or of stdin for '-'."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror or e}") from None


def value_arg(a: argparse.Namespace, name: str = "value") -> bytes:
    """VALUE from the command line; '-' reads stdin's bytes; --file reads a file."""
    if getattr(a, "file", None):
        return read_input(a.file)
    v = getattr(a, name)
    if v == "-":
        return sys.stdin.buffer.read()
    if v is None:
        raise UsageError(f"a {name.upper()} (or --file) is required")
    return str(v).encode("utf-8")


def op(name: str, *fields: str, wrap: Callable[[Any], Any] = lambda r: r,
       value: str | None = None) -> Handler:
    """A command that sends `name` with body fields taken from same-named arguments
    ("timeout_ms=wait": body field timeout_ms from argument wait)."""
    def run(c: Ctx, a: argparse.Namespace) -> Any:
        body = {f.split("=")[0]: getattr(a, f.split("=")[-1]) for f in fields}
        if value is not None:
            body[value] = value_arg(a)
        return wrap(c.call(name, **body))
    return run


def offline(fn: Handler) -> Handler:
    """Offline tools: their own failures become one line and exit 1 (OSError: exit 2)."""
    def run(c: Ctx, a: argparse.Namespace) -> Any:
        try:
            return fn(c, a)
        except (ImportError, UsageError, FileNotFoundError, OfflineError, Declined):
            raise
        except Exception as e:  # the tool's own error types are not known here
            code = "".join("_" + ch if ch.isupper() else ch.upper()
                           for ch in type(e).__name__).lstrip("_")
            raise OfflineError(code, str(e) or type(e).__name__) from e
    return run
