"""`loomd`: run a node (`loomd --config F` or flags), or print a config (`loomd init ...`).

Exit codes: 0 clean shutdown (SIGTERM), 2 bad configuration (one line naming the key) or an
empty data directory it may not found a cluster on (see loom.node.bootstrap), 1 a fatal
runtime error.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from pathlib import Path
from typing import Any

import trio

from loom import __version__
from loom.buildinfo import build_info
from loom.cli.startcheck import acl_notice, check_node_certificate
from loom.node.config import ConfigError, NodeConfig, load, to_toml
from loom.node.testhooks import ENV as TEST_HOOKS_ENV
from loom.node.testhooks import from_environ
from loom.obs.logging import configure as configure_logging
from loom.storage.errors import StorageError

EXAMPLE_ACL: dict[str, Any] = {
    "guest_roles": ["guest"],
    "roles": {
        "guest": {"grants": [{"types": ["PING"]}]},
        "reader": {"grants": [{"types": ["class:read"]}]},
        "data-writer": {"grants": [{"types": ["MAP_PUT", "QUEUE_PUSH", "COUNTER_INCREMENT"]}]},
        "admin": {"grants": [{"types": ["*"]}]},
    },
    "principals": {
        "spiffe://loom.dev/client/admin": ["admin"],
        "spiffe://loom.dev/client/writer": ["data-writer", "reader"],
        "spiffe://loom.dev/client/reader": ["reader"],
    },
}


COMMANDS = {
    "run": ("loomd", "Run a Loom node (the default command: `loomd [run] ...`)."),
    "init": ("loomd init", "Print a complete config file for these flags (with an example ACL "
                           "policy when the flags and --config give none), to start from: "
                           "loomd init --node-id n1 ... > loomd.toml"),
}
RESTORE_HELP = ("Seed a new member's empty data directory from a backup ('loomctl snapshot "
                "save'), as etcdutl snapshot restore does: run it on every member of the new "
                "cluster with the same FILE, --peers and --cluster-name, then start them.")


def _parser(command: str = "run") -> argparse.ArgumentParser:
    prog, description = COMMANDS[command]
    p = argparse.ArgumentParser(
        prog=prog, description=description,
        epilog=None if command == "init" else
        "Commands: run (default), init, restore (see 'loomd init --help', 'loomd restore "
        "--help').")
    p.add_argument("--config", type=Path, help="TOML config file; flags override it")
    p.add_argument("--node-id")
    p.add_argument("--data-dir")
    p.add_argument("--client-listen", metavar="HOST:PORT")
    p.add_argument("--peer-listen", metavar="HOST:PORT")
    p.add_argument("--http-listen", metavar="HOST:PORT",
                   help="serve the HTTP API on this address too (TLS 1.3; off when absent)")
    p.add_argument("--peers", metavar="ID=HOST:PORT,...",
                   help="every founding member and its peer address, this node included")
    p.add_argument("--cluster-name")
    p.add_argument("--join", action="store_true", default=None,
                   help="start empty and wait to be added with 'loomctl members add' "
                        "(instead of founding a cluster from --peers)")
    p.add_argument("--initial-cluster-state", choices=["new", "existing"], default="existing",
                   help="new: on an empty data directory, found the cluster of --peers (every "
                        "founder's first start only). existing (default): an empty data "
                        "directory without --join is refused, since a member that lost its "
                        "data must not come back as a founder. Ignored once the node has a log")
    p.add_argument("--tls-ca")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--tls-key-passphrase-file", metavar="FILE",
                   help="file (mode 0600) holding the passphrase of an encrypted --tls-key; "
                        "never the passphrase itself")
    p.add_argument("--require-client-auth", action=argparse.BooleanOptionalAction, default=None,
                   help="require a client certificate (default: yes)")
    p.add_argument("--allow-insecure-guest-bind", action="store_true", default=None,
                   help="allow guests (no client certificate) on a non-loopback address")
    p.add_argument("--audit-sink", choices=["stdout", "file", "off"])
    p.add_argument("--audit-path")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["auto", "json", "text"],
                   help="operational log lines: json, text, or auto (json under systemd's "
                        "journal, where JOURNAL_STREAM is set; the default)")
    if command == "run":
        p.add_argument("--enable-test-hooks", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--version", action="store_true",
                   help="print the version and the build (compiled or pure Python, which "
                        "modules) and exit")
    return p


def version_text() -> str:
    """`loomd --version`: the version, then the build (loom/buildinfo.py)."""
    info = build_info()
    lines = [f"loomd {__version__}", f"build: {info.summary()}"]
    if info.modules:
        lines.append("compiled modules: " + ", ".join(info.modules))
    return "\n".join(lines) + "\n"


def _overrides(a: argparse.Namespace) -> dict[str, Any]:
    return {
        "node_id": a.node_id, "data_dir": a.data_dir, "client_listen": a.client_listen,
        "peer_listen": a.peer_listen, "http.listen": a.http_listen, "peers": a.peers,
        "cluster_name": a.cluster_name,
        "join": a.join,
        "tls.ca": a.tls_ca, "tls.cert": a.tls_cert, "tls.key": a.tls_key,
        "tls.key_passphrase_file": a.tls_key_passphrase_file,
        "require_client_auth": a.require_client_auth,
        "allow_insecure_guest_bind": a.allow_insecure_guest_bind,
        "audit.sink": a.audit_sink, "audit.path": a.audit_path, "log_level": a.log_level,
        "log.format": a.log_format,
    }


def _split_command(argv: list[str]) -> tuple[str, list[str]]:
    """`loomd init ...` / `loomd run ...` / `loomd ...` (run)."""
    if argv and argv[0] in COMMANDS:
        return argv[0], argv[1:]
    return "run", argv


def restore_main(argv: list[str]) -> int:
    """`loomd restore FILE --data-dir D --node-id N --peers ... --cluster-name NAME`."""
    from loom.node.restore import RestoreError, parse_peers, restore

    p = argparse.ArgumentParser(prog="loomd restore", description=RESTORE_HELP)
    p.add_argument("file", type=Path, metavar="FILE", help="the backup")
    p.add_argument("--data-dir", type=Path, required=True, help="the new member's (empty)")
    p.add_argument("--node-id", required=True)
    p.add_argument("--peers", required=True, metavar="ID=HOST:PORT,...",
                   help="every member of the new cluster and its peer address")
    p.add_argument("--cluster-name", required=True,
                   help="the new cluster's name (not the old one's): the restored directory "
                        "only ever starts under it")
    p.add_argument("--keyring", type=Path, metavar="FILE",
                   help="the encryption-at-rest keyring: reads an encrypted backup, and "
                        "encrypts the new data directory")
    p.add_argument("--pkcs11-module", metavar="LIB",
                   help="a wrapped keyring: the PKCS#11 library its key-encryption key is in")
    p.add_argument("--kek-pin-file", type=Path, metavar="FILE",
                   help="a wrapped keyring: the file (mode 0600) holding the token's PIN")
    a = p.parse_args(argv)
    try:
        pin = None
        if a.kek_pin_file is not None:
            from loom.security.tls import KeyPassphrase, TLSConfigError

            try:
                pin = KeyPassphrase(a.kek_pin_file, what="KEK PIN").read()
            except TLSConfigError as e:
                raise RestoreError(str(e)) from None
        r = restore(a.file, data_dir=a.data_dir, node_id=a.node_id, peers=parse_peers(a.peers),
                    cluster_name=a.cluster_name, keyring=a.keyring, kek_pin=pin,
                    pkcs11_module=a.pkcs11_module)
    except RestoreError as e:
        print(f"loomd restore: {e}", file=sys.stderr)
        return 1
    print(f"restored {a.file} into {r.data_dir} for {r.node_id}: snapshot at index {r.index}, "
          f"term {r.term}, {r.state_bytes} bytes of state; members {', '.join(r.voters)}; "
          f"cluster {r.cluster_name!r}{' (encrypted)' if r.encrypted else ''}. Start every "
          "member with these --peers and this cluster_name.")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["restore"]:
        return restore_main(argv[1:])
    command, rest = _split_command(argv)
    args = _parser(command).parse_args(rest)
    args.command = command
    if args.version:
        sys.stdout.write(version_text())
        return 0
    try:
        cfg = load(args.config, _overrides(args))
        if args.command == "init":
            if not cfg.acl:
                from dataclasses import replace

                cfg = replace(cfg, acl=EXAMPLE_ACL)
            sys.stdout.write(to_toml(cfg))
            return 0
        configure_logging(node=cfg.node_id, level=cfg.log_level, fmt=cfg.log.format)
        from loom.node.server import Node

        check_node_certificate(cfg)
        from loom.node.restore import check_cluster_name

        if (why := check_cluster_name(cfg.data_dir, cfg.cluster_name)) is not None:
            raise ConfigError(why)
        # after the checks above: a refused start says one line, the reason
        logging.getLogger("loomd").info("loomd %s, build: %s", __version__,
                                        build_info().summary())
        warn, notice = acl_notice(cfg, has_log=(cfg.data_dir / "raft").is_dir())
        logging.getLogger("loomd").log(logging.WARNING if warn else logging.INFO, "%s", notice)
        hooks = from_environ(os.environ, enabled=args.enable_test_hooks)
        if hooks is not None:
            logging.getLogger("loomd").warning(
                "TEST-ONLY FAULT HOOKS IN FORCE (%s): %s; never run this in production",
                TEST_HOOKS_ENV, hooks.describe())
        node = Node(cfg, config_path=args.config,
                    initial_cluster_state=args.initial_cluster_state, test_hooks=hooks)
        # Everything alive now (code, configuration, the recovered log and state) lives about
        # as long as the process: frozen, a full collection no longer walks it. On the
        # benchmark machine that took full collections under load from 15-19 ms to under 4 ms.
        # Reference counting still frees these objects when the log is compacted.
        gc.freeze()
    except ConfigError as e:
        print(f"loomd: {e}", file=sys.stderr)
        return 2
    except StorageError as e:  # corrupt or locked data directory: never skipped, never guessed
        print(f"loomd: storage: {e}", file=sys.stderr)
        return 1
    try:
        trio.run(_run, node)
    except KeyboardInterrupt:
        pass
    except StorageError as e:  # a failed fsync: durability can no longer be promised
        print(f"loomd: storage: {e}; stopping (restart recovers from the log)", file=sys.stderr)
        return 1
    except OSError as e:  # a port in use, an address this host does not have
        print(f"loomd: cannot listen: {e.strerror or e}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as eg:
        storage_err, _ = eg.split(StorageError)
        if storage_err is not None:
            print(f"loomd: storage: {storage_err.exceptions[0]}; stopping (restart recovers "
                  "from the log)", file=sys.stderr)
            return 1
        oserr, _ = eg.split(OSError)
        if oserr is None:
            raise
        first = oserr.exceptions[0]
        print(f"loomd: cannot listen: {getattr(first, 'strerror', None) or first}",
              file=sys.stderr)
        return 1
    return 0


async def _run(node: Any) -> None:
    await node.run()


def config_for(cfg: NodeConfig) -> str:
    return to_toml(cfg)


if __name__ == "__main__":
    sys.exit(main())
