"""`loom-gateway`: `loom-gateway [run] CONFIG` serves; `loom-gateway check CONFIG` validates.

Exit codes: 0 after a clean stop (SIGTERM, SIGINT) or a usable file for `check`; 2 for a
configuration that cannot be used (the message names the key), at start or by `check`.
Signals while running: SIGTERM / SIGINT stop gracefully; SIGHUP reloads the file (a file that
cannot be used, or that changes what needs a restart, is logged and the running state kept).
"""

from __future__ import annotations

import argparse
import logging
import signal
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from loom.gateway.app import Gateway, listener_context, upstream_context
from loom.gateway.config import ConfigError, load
from loom.obs.logging import configure as configure_logging
from loom.security.tls import TLSConfigError

__all__ = ["main"]

log = logging.getLogger("loom.gateway")
COMMANDS = ("run", "check")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loom-gateway", description="The authenticating edge of "
                                "a Loom cluster (docs/gateway.md).")
    p.add_argument("command", choices=COMMANDS, help="run (the default) or check")
    p.add_argument("config", type=Path, help="the gateway configuration (YAML, or .toml)")
    p.add_argument("--allow-insecure-guest", action="store_true",
                   help="let AUTH_TYPE=noop serve a listener that is not on loopback")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="auto", choices=["auto", "json", "text"],
                   help="operational log lines: json, text, or auto (json under systemd's "
                        "journal, where JOURNAL_STREAM is set; the default)")
    return p


def check(path: Path, allow_insecure_guest: bool) -> list[str]:
    """Every problem that would stop `run` from starting, without listening or connecting:
    the schema, the TLS files of listeners and upstreams, guest mode on a public address."""
    try:
        config = load(path, allow_insecure_guest=allow_insecure_guest)
        for x in config.listeners:
            listener_context(x)
        for u in config.upstreams:
            upstream_context(u)
    except (ConfigError, TLSConfigError, ssl.SSLError, OSError) as e:
        return [str(e)]
    return [f"warning: {w}" for w in config.warnings]


async def _serve(path: Path, allow_insecure_guest: bool) -> None:
    config = load(path, allow_insecure_guest=allow_insecure_guest)
    for w in config.warnings:
        log.warning("%s", w)
    gateway = Gateway(config)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(gateway.run)
            log.info("loom-gateway ready (%s)", ", ".join(
                f"{n}={p}" for n, p in gateway.ports.items()))

            async def watch() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        try:
                            gateway.reload(load(path, allow_insecure_guest=allow_insecure_guest))
                        except (ConfigError, TLSConfigError, ssl.SSLError, OSError) as e:
                            log.error("reload refused, running state kept: %s", e)
                        continue
                    log.info("%s: stopping", signal.Signals(signum).name)
                    gateway.shutdown()
                    return

            nursery.start_soon(watch)
    log.info("loom-gateway stopped")


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in and args_in[0] not in COMMANDS and not args_in[0].startswith("-"):
        args_in.insert(0, "run")
    args = _parser().parse_args(args_in)
    configure_logging(node="gateway", level=args.log_level, fmt=args.log_format)
    if args.command == "check":
        problems = check(args.config, args.allow_insecure_guest)
        errors = [p for p in problems if not p.startswith("warning: ")]
        for p in problems:
            sys.stderr.write(f"{args.config}: {p}\n")
        if not errors:
            sys.stdout.write(f"{args.config}: ok\n")
        return 2 if errors else 0
    try:
        trio.run(_serve, args.config, args.allow_insecure_guest)
    except (ConfigError, TLSConfigError) as e:
        sys.stderr.write(f"loom-gateway: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
