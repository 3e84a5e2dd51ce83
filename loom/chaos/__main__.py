"""python -m loom.chaos --runs N --seconds S [--seed K] [--nemesis LIST] [--workload LIST]

Runs N seeded chaos runs one after the other (seeds K, K+1, ...), prints one line per run and a
summary (faults by kind, operations checked per workload, indeterminate operations, anomalies,
the slowest recovery), and exits 1 if any run found an anomaly, after printing the one command
that repeats each failing run. A failing run's directory keeps its history, logs and data.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import trio

from loom.chaos.nemesis import all_nemeses
from loom.chaos.run import RunReport, run_one
from loom.chaos.workloads import all_workloads
from loom.node.testhooks import MUTANTS


def _list(kind: str, known: list[str]) -> argparse.Action | object:
    def parse(s: str) -> list[str]:
        names = known if s == "all" else [x.strip() for x in s.split(",") if x.strip()]
        bad = [x for x in names if x not in known]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown {kind} {bad}; known: {', '.join(known)}")
        return names
    return parse


def parser() -> argparse.ArgumentParser:
    nem, wl = list(all_nemeses()), list(all_workloads())
    p = argparse.ArgumentParser(prog="python -m loom.chaos", description=__doc__.split("\n\n")[1])
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--seconds", type=float, default=30.0, help="fault time per run")
    p.add_argument("--seed", type=int, default=None, help="first seed (default: from the clock)")
    p.add_argument("--nemesis", type=_list("nemesis", nem), default=nem,  # type: ignore[arg-type]
                   help=f"comma-separated, or all (default): {','.join(nem)}")
    p.add_argument("--workload", type=_list("workload", wl), default=wl,  # type: ignore[arg-type]
                   help=f"comma-separated, or all (default): {','.join(wl)}")
    p.add_argument("--dir", type=Path, default=None,
                   help="where runs live (failing ones are kept); default: a new temp dir")
    p.add_argument("--keep", action="store_true", help="keep passing runs' directories too")
    p.add_argument("--json", type=Path, default=None, help="also write the summary as JSON")
    p.add_argument("--stop-on-anomaly", action="store_true",
                   help="stop after the first run that found an anomaly")
    p.add_argument("--mutant", choices=MUTANTS, default="",
                   help="every node runs with this planted bug (a test-only hook): the run "
                        "must find an anomaly")
    p.add_argument("--network", choices=("auto", "netns", "proxy"), default="auto",
                   help="partitions by network namespaces (root, `ip netns`), by fault proxies, "
                        "or auto (default): namespaces when the machine allows them")
    return p


def repeat_command(args: argparse.Namespace, seed: int) -> str:
    return (f"{sys.executable} -m loom.chaos --runs 1 --seconds {args.seconds:g} --seed {seed} "
            f"--nemesis {','.join(args.nemesis)} --workload {','.join(args.workload)} "
            f"--network {args.network}{f' --mutant {args.mutant}' if args.mutant else ''} "
            f"--keep")


def summarize(reports: list[RunReport]) -> dict[str, object]:
    faults: Counter[str] = Counter()
    checked: Counter[str] = Counter()
    indeterminate: Counter[str] = Counter()
    notes: list[str] = []
    for r in reports:
        faults.update(r.faults)
        for res in r.results:
            checked[res.workload] += res.checked
            indeterminate[res.workload] += res.indeterminate
            notes += [f"seed {r.seed}: {n}" for n in res.notes]
    return {
        "runs": len(reports), "network": sorted({r.network for r in reports}),
        "failed_runs": [r.seed for r in reports if r.anomalies],
        "faults": dict(sorted(faults.items())), "faults_total": sum(faults.values()),
        "checked": dict(checked), "indeterminate": dict(indeterminate),
        "anomalies": sum(len(r.anomalies) for r in reports),
        "slowest_recovery_s": round(max((r.recovery_s for r in reports), default=0.0), 3),
        "slowest_converge_s": round(max((r.converge_s for r in reports), default=0.0), 3),
        "notes": notes,
    }


async def main_async(args: argparse.Namespace) -> int:
    base = args.dir or Path(tempfile.mkdtemp(prefix="loom-chaos-"))
    base.mkdir(parents=True, exist_ok=True)
    first = args.seed if args.seed is not None else int(time.time()) % 1_000_000
    reports = []
    for i in range(args.runs):
        seed = first + i
        t0 = time.monotonic()
        r = await run_one(seed, args.seconds, base, args.nemesis, args.workload, keep=args.keep,
                          network=args.network, mutant=args.mutant)
        if i == 0:
            print(f"network: {r.network}", flush=True)
        reports.append(r)
        ops = sum(x.checked for x in r.results)
        print(f"run {i + 1}/{args.runs} seed {seed}: {r.size} nodes, lease_reads "
              f"{'on' if r.lease_reads else 'off'}, {sum(r.faults.values())} faults, "
              f"{ops} ops checked, recovery {r.recovery_s:.2f} s, "
              f"{'OK' if not r.anomalies else 'FAIL'} ({time.monotonic() - t0:.0f} s)", flush=True)
        for a in r.anomalies:
            print(f"  anomaly: {a}", flush=True)
        if r.anomalies:
            print(f"  kept: {r.dir}\n  repeat: {repeat_command(args, seed)}", flush=True)
            if args.stop_on_anomaly:
                break
    s = summarize(reports)
    print(json.dumps(s, indent=2))
    if args.json:
        args.json.write_text(json.dumps(s, indent=2) + "\n", encoding="utf-8")
    return 1 if s["failed_runs"] else 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.runs < 1 or args.seconds <= 0:
        parser().error("--runs must be >= 1 and --seconds > 0")
    return trio.run(_until_terminated, args)


async def _until_terminated(args: argparse.Namespace) -> int:
    """main_async, cancelled by SIGTERM as Ctrl-C would: the runs' `finally` blocks stop
    every process and delete every namespace they made."""
    rc = 143  # unless main_async returns
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as n:
            async def watch() -> None:
                async for _ in signals:
                    print("terminated: stopping every process of the run", file=sys.stderr)
                    n.cancel_scope.cancel()
                    return
            n.start_soon(watch)
            rc = await main_async(args)
            n.cancel_scope.cancel()
    return rc


if __name__ == "__main__":
    sys.exit(main())
