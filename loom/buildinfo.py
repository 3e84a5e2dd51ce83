"""Which build of Loom this process runs: compiled (mypyc) or pure Python, and why.

One source tree serves both. `scripts/build_native.py` compiles the modules in `COMPILED`
with mypyc into extension modules beside their sources (`loom/raft/core.cpython-311-....so`
next to `core.py`) and writes `MANIFEST`: the SHA-256 of each compiled module's source, the
mypyc version and the Python it was built for. An extension module is found before the `.py`
beside it, so an edited source would silently lose to its stale extension; this module makes
that impossible. It is imported by `loom/__init__.py`, that is before any compiled module can
be, and decides once per process:

- `LOOM_PURE_PYTHON=1` in the environment selects the pure build (for debugging);
- no manifest, or a manifest for another Python, or any source whose digest differs from the
  manifest's, or a compiled module without an extension: the pure build, and `REASON` says why;
- otherwise the compiled build.

All or nothing: mypyc compiles the modules as one group whose calls between modules bypass
the module objects, so one stale module makes the whole group untrustworthy. When the decision
is "pure" and extension files are present, an import hook placed first on `sys.meta_path`
loads each module in `COMPILED` from its `.py`, so the extensions are never loaded.

Hashing the sources (about 300 KB) costs well under a millisecond, once per process.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

PURE_ENV = "LOOM_PURE_PYTHON"
ROOT = Path(__file__).resolve().parent  # the loom package directory
MANIFEST = ROOT / "_native.json"

# The modules compiled by scripts/build_native.py: pure (no I/O, no trio), mypy --strict, and on
# the request path (measured: docs/architecture.md, "Compiled build"). Package `__init__`
# modules stay Python. loom/raft/messages.py stays Python: mypyc's dataclasses do not keep
# `KIND: ClassVar[str] = ...` a class variable, and it is not where the time goes.
COMPILED: tuple[str, ...] = (
    "loom.raft.confchange", "loom.raft.config", "loom.raft.core", "loom.raft.log",
    "loom.raft.progress", "loom.raft.quorum", "loom.raft.readonly", "loom.raft.ready",
    "loom.raft.types",
    "loom.wire.catalog", "loom.wire.codec", "loom.wire.framed",
    "loom.wire.schema", "loom.wire.session",
    "loom.state.atomics", "loom.state.base", "loom.state.collections", "loom.state.command",
    "loom.state.dedupe", "loom.state.limits", "loom.state.locks", "loom.state.machine",
    "loom.state.map", "loom.state.members", "loom.state.queue", "loom.state.sessions",
    "loom.state.topic",
    "loom.storage.codec", "loom.storage.records",
)


@dataclass(frozen=True, slots=True)
class BuildInfo:
    """kind: "compiled" or "pure". modules: the modules running compiled (empty when pure).
    compiler: "mypyc <version>" when compiled, else "". reason: why this build (one line)."""

    kind: str
    modules: tuple[str, ...]
    compiler: str
    reason: str

    def summary(self) -> str:
        """One line for `loomd --version` and the logs."""
        if self.kind == "compiled":
            return f"compiled ({self.compiler}, {len(self.modules)} modules)"
        return f"pure Python ({self.reason})"

    def to_dict(self) -> dict[str, object]:
        """What CLUSTER_STATUS and NODE_STATS carry as "build"."""
        return {"kind": self.kind, "compiler": self.compiler, "modules": list(self.modules),
                "reason": self.reason}


def source_path(module: str, root: Path = ROOT) -> Path:
    return root.joinpath(*module.split(".")[1:]).with_suffix(".py")


def extension_paths(module: str, root: Path = ROOT) -> list[Path]:
    """The extension files present for `module` (normally zero or one)."""
    src = source_path(module, root)
    return [p for suffix in importlib.machinery.EXTENSION_SUFFIXES
            if (p := src.with_name(src.stem + suffix)).exists()]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def python_tag() -> str:
    return f"{sys.implementation.cache_tag}-{sys.platform}"


def decide(root: Path = ROOT, environ: dict[str, str] | None = None) -> BuildInfo:
    """Which build to run, from the environment, the manifest and the sources. No side effect."""
    env = os.environ if environ is None else environ
    if env.get(PURE_ENV, "") not in ("", "0"):
        return BuildInfo("pure", (), "", f"{PURE_ENV}={env[PURE_ENV]}")
    manifest = root / MANIFEST.name
    try:
        doc = json.loads(manifest.read_text())
        modules: dict[str, str] = doc["modules"]
        compiler = str(doc["compiler"])
        built_for = str(doc["python"])
    except FileNotFoundError:
        return BuildInfo("pure", (), "", "no compiled build (make builds one where a C "
                                         "compiler exists)")
    except (ValueError, KeyError, TypeError, OSError) as exc:
        return BuildInfo("pure", (), "", f"unreadable {manifest.name}: {exc}")
    if built_for != python_tag():
        return BuildInfo("pure", (), "", f"compiled for {built_for}, running {python_tag()}")
    if sorted(modules) != sorted(COMPILED):
        return BuildInfo("pure", (), "", "compiled for another module list (run make)")
    for module in COMPILED:
        src = source_path(module, root)
        if not extension_paths(module, root):
            return BuildInfo("pure", (), "", f"no extension for {module} (run make)")
        try:
            same = digest(src) == modules[module]
        except OSError:
            same = False
        if not same:
            rel = src.relative_to(root.parent)
            return BuildInfo("pure", (), "", f"stale: {rel} changed since the build (run make)")
    return BuildInfo("compiled", COMPILED, compiler, "built from these sources")


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Loads the modules in COMPILED from their `.py` files, ignoring extensions beside them."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in COMPILED:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname, self.root))


def _install(info: BuildInfo, root: Path = ROOT) -> None:
    if info.kind == "pure" and any(extension_paths(m, root) for m in COMPILED):
        sys.meta_path.insert(0, _SourceFirst(root))


BUILD = decide()
_install(BUILD)


def build_info() -> BuildInfo:
    """The build this process runs, checked against what was actually imported: a module
    listed as compiled that came from a `.py` (imported before this check could act) makes
    it "pure" with that reason."""
    if BUILD.kind == "compiled":
        for name in BUILD.modules:
            mod = sys.modules.get(name)
            origin = getattr(mod, "__file__", None) or ""
            if mod is not None and origin.endswith(".py"):
                return BuildInfo("pure", (), "", f"{name} was imported from its source")
    return BUILD
