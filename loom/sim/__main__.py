"""`python -m loom.sim --seeds N [--first-seed K] [--time-limit S] [--mutant NAME] [--disk D]`

Runs N seeded whole-cluster simulations (stopping early at the time limit), exits 1 at the
first violation with the seed, the message, the event trace before it and a command that
reproduces it exactly; ends with one summary line: the seed range, seeds run, violations and
time. `--mutant list` names the planted bugs; `--mutant all` runs each of them over the same
N seeds from K and says at which seed each was caught (exit 1 if one survived).
`--disk wal` persists every node through the real `loom.storage` on a fault-injecting file
system, `--disk sim` through the simulated disk; the default `mix` puts every fourth seed on
the WAL.
(This module is the only one in loom.sim that reads a clock, and only to report speed and
honour --time-limit; simulations never see it.)
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable

from loom.sim.cluster import DISK_MODES
from loom.sim.mutants import MUTANTS
from loom.sim.runner import run_seeds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loom.sim", description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=100)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=None, help="seconds")
    ap.add_argument("--mutant", default=None)
    ap.add_argument("--disk", choices=DISK_MODES, default="mix")
    ap.add_argument("--trace", action="store_true", help="print the event trace on failure")
    args = ap.parse_args(argv)
    if args.mutant == "list":
        for name, what in MUTANTS.items():
            print(f"{name:20} {what}")
        return 0
    if args.mutant is not None and args.mutant not in MUTANTS and args.mutant != "all":
        print(f"unknown mutant {args.mutant!r}; try --mutant list", file=sys.stderr)
        return 2
    # torn tails and fail-stops are what the fault injection is for: keep them off stderr
    storage_log = logging.getLogger("loom.storage")
    level = storage_log.level
    storage_log.setLevel(logging.CRITICAL + 1)
    try:
        return _run_all(args) if args.mutant == "all" else _run(args)
    finally:
        storage_log.setLevel(level)


def _run(args: argparse.Namespace) -> int:
    start = time.monotonic()
    stop: Callable[[], bool] | None = None
    if args.time_limit is not None:
        deadline: float = start + args.time_limit
        stop = lambda: time.monotonic() >= deadline  # noqa: E731
    ran, fail = run_seeds(args.first_seed, args.seeds, args.mutant, stop, args.disk)
    elapsed = max(time.monotonic() - start, 1e-9)
    if fail is not None:
        print(f"VIOLATION at seed {fail.seed}" + (f" (mutant {fail.mutant})" if fail.mutant
                                                  else ""))
        print(fail.message)
        print("event trace before the violation (most recent last):")
        print(fail.trace)
        print(f"reproduce: {fail.command()}")
    cut = (" (stopped by --time-limit)" if fail is None and ran < args.seeds else "")
    print(f"seeds {args.first_seed}..{args.first_seed + args.seeds - 1}: {ran} run{cut}, "
          f"{0 if fail is None else 1} violations, {elapsed:.1f}s, {ran / elapsed:.1f} seeds/s"
          + (f", mutant {args.mutant}" if args.mutant else ""))
    return 1 if fail is not None else 0


def _run_all(args: argparse.Namespace) -> int:
    """Each planted bug over the same seeds: where it was first caught, or that it was not."""
    survived = 0
    for name in MUTANTS:
        start = time.monotonic()
        ran, fail = run_seeds(args.first_seed, args.seeds, name, None, args.disk)
        took = time.monotonic() - start
        if fail is None:
            survived += 1
            print(f"{name:20} SURVIVED {ran} seeds from {args.first_seed} ({took:.1f}s)")
        else:
            print(f"{name:20} caught at seed {fail.seed}, seed {ran} of the range "
                  f"({took:.1f}s): {fail.message.splitlines()[0][:90]}")
    print(f"{len(MUTANTS) - survived} of {len(MUTANTS)} planted bugs caught within "
          f"{args.seeds} seeds from {args.first_seed}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
