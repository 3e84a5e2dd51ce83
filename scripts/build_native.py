"""Build Loom's compiled modules with mypyc, or say why the build stays pure Python.

    .venv/bin/python scripts/build_native.py [--root DIR] [--clean] [--jobs N]

The modules are those in `loom.buildinfo.COMPILED`; each becomes an extension beside its
source, and `loom/_native.json` records the SHA-256 of every source the build read (what
`loom/buildinfo.py` checks at import). Up to date (same sources, same Python, same list):
nothing to do, so `make` can run this every time. Otherwise the old extensions and manifest
are removed first, so a failed or refused build leaves the pure build, never a stale one.

Pure Python, said on one line and exit status 0: with LOOM_PURE_PYTHON=1, without a C
compiler, without Python's headers, mypyc or setuptools, or when the compilation fails (then
its output is shown). `--clean` removes the build (as `make clean` does). `--root DIR` builds
the copy of the `loom` package under DIR (tests build a scratch copy this way).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from loom import buildinfo  # noqa: E402  (the module list and the manifest format)


def clean(root: Path) -> int:
    """Remove every compiled file of the package under root; returns how many."""
    pkg = root / "loom"
    removed = 0
    for path in [*pkg.rglob("*.so"), *pkg.rglob("*.pyd"), pkg / buildinfo.MANIFEST.name]:
        if path.exists():
            path.unlink()
            removed += 1
    shutil.rmtree(root / "build" / "native", ignore_errors=True)
    return removed


def missing_tool() -> str | None:
    """Why this machine cannot compile, or None."""
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "").split()
    if not cc or shutil.which(cc[0]) is None:
        return f"no C compiler ({cc[0] if cc else 'CC unset'} not found)"
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").exists():
        return f"no Python headers ({include}/Python.h; Debian: python3-dev)"
    try:
        import mypyc.build  # noqa: F401
        import setuptools  # type: ignore[import-untyped,unused-ignore]  # noqa: F401
    except ImportError as exc:
        return f"cannot import {exc.name} (pip install -e '.[dev]')"
    return None


def up_to_date(root: Path) -> bool:
    return buildinfo.decide(root / "loom", environ={}).kind == "compiled"


def compile_modules(root: Path, jobs: int) -> str:
    """Compile in place under root; returns the compiler's name and version. Raises on failure."""
    import mypyc
    from mypyc.build import mypycify
    from setuptools import Distribution  # type: ignore[import-untyped,unused-ignore]

    paths = [str(buildinfo.source_path(m, root / "loom").relative_to(root))
             for m in buildinfo.COMPILED]
    target = root / "build" / "native"
    old = Path.cwd()
    os.chdir(root)  # mypyc names modules from paths relative to the working directory
    try:
        # group "loom.native": the runtime shared by the modules is loom/native__mypyc*.so,
        # inside the package (an editable install puts only the package on the path).
        exts = mypycify(paths, opt_level="3", group_name="loom.native",
                        target_dir=str(target / "c"))
        dist = Distribution({"name": "loom-native", "ext_modules": exts})
        cmd = dist.get_command_obj("build_ext")
        cmd.inplace = True
        cmd.build_temp = str(target / "tmp")
        cmd.parallel = jobs
        dist.run_command("build_ext")
    finally:
        os.chdir(old)
    version = getattr(mypyc, "__version__", None)
    if version is None:
        from mypy.version import __version__ as version
    return f"mypyc {version}"


def write_manifest(root: Path, compiler: str, digests: dict[str, str]) -> None:
    doc = {"compiler": compiler, "python": buildinfo.python_tag(), "modules": digests}
    tmp = root / "loom" / (buildinfo.MANIFEST.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    tmp.replace(root / "loom" / buildinfo.MANIFEST.name)


def build(root: Path, jobs: int) -> int:
    pure_env = os.environ.get(buildinfo.PURE_ENV, "")
    if pure_env not in ("", "0"):
        clean(root)
        print(f"build: pure Python ({buildinfo.PURE_ENV}={pure_env})")
        return 0
    if up_to_date(root):
        print(f"build: compiled, up to date ({len(buildinfo.COMPILED)} modules; "
              f"{buildinfo.PURE_ENV}=1 selects pure Python)")
        return 0
    clean(root)
    why = missing_tool()
    if why is not None:
        print(f"build: pure Python ({why})")
        return 0
    # The digests of the sources as read now: an edit during the build makes it stale.
    digests = {m: buildinfo.digest(buildinfo.source_path(m, root / "loom"))
               for m in buildinfo.COMPILED}
    print(f"build: compiling {len(digests)} modules with mypyc (a minute or more)...", flush=True)
    start = time.monotonic()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            compiler = compile_modules(root, jobs)
    except (Exception, SystemExit) as exc:
        clean(root)
        print(out.getvalue()[-4000:], file=sys.stderr)
        print(f"build: pure Python (the compilation failed: {exc})", file=sys.stderr)
        return 0
    write_manifest(root, compiler, digests)
    info = buildinfo.decide(root / "loom", environ={})
    if info.kind != "compiled":
        print(f"build: pure Python ({info.reason})")
        return 0
    print(f"build: compiled with {compiler} in {time.monotonic() - start:.0f} s "
          f"({len(digests)} modules; {buildinfo.PURE_ENV}=1 selects pure Python)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=REPO,
                    help="the directory holding the loom package (default: this checkout)")
    ap.add_argument("--clean", action="store_true", help="remove the compiled build")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="C files compiled at once")
    args = ap.parse_args()
    root = args.root.resolve()
    if not (root / "loom" / "__init__.py").exists():
        ap.error(f"no loom package under {root}")
    if args.clean:
        print(f"build: removed {clean(root)} compiled files")
        return 0
    return build(root, max(1, args.jobs))


if __name__ == "__main__":
    sys.exit(main())
