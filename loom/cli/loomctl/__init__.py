"""loomctl: the command-line client for Loom (docs/cli.md).

Exit codes: 0 success; 1 the server refused or failed the request (the error code is printed),
or a command did not get what it asked for (a lock not acquired, a log not verified);
2 usage or configuration error (nothing was sent); 3 could not connect or TLS failed.

The package: `tree.py` is the command table, `parser.py` builds argparse from it, `base.py`
holds the context and the errors that choose the exit code, and the handlers live in `data.py`,
`cluster.py` and `offline.py`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from loom.cli.loomctl.base import (
    EXIT_CONNECT,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    NOTHING,
    Ctx,
    Declined,
    OfflineError,
    UsageError,
)
from loom.cli.loomctl.cluster import NodeAnswer, merge_status, status_json, status_table
from loom.cli.loomctl.parser import build_parser as _build
from loom.cli.loomctl.parser import settle
from loom.cli.loomctl.tree import TREE
from loom.cli.output import emit
from loom.client.errors import ConfigError, ConnectError, RequestValidationError
from loom.wire.errors import LoomError

__all__ = ["EXIT_CONNECT", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "NodeAnswer", "build_parser",
           "main", "merge_status", "status_json", "status_table"]


def build_parser() -> argparse.ArgumentParser:
    return _build(TREE)


def _fail(code: int, label: str, message: str) -> int:
    line = " ".join(str(message).split())
    sys.stderr.write(f"loomctl: {label}: {line}\n" if label else f"loomctl: {line}\n")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    ctx: Ctx | None = None
    output = "text"
    try:
        args = build_parser().parse_args(argv)
        settle(args)
        output = args.output
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
    except Declined as e:
        emit(e.result, output, sys.stdout)
        return _fail(EXIT_FAILED, e.code, str(e))
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
