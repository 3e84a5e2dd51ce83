"""The direction of imports between Loom's packages, and the purity of the pure ones
(docs/architecture.md, "Layers and the direction of imports"), checked in one place.

Pure packages (wire, raft, state, security except its TLS modules, sim) import no event loop,
socket or thread; the deterministic ones (wire, raft, state, sim) not even a clock, the OS or
OS randomness, so a seeded simulation replays exactly. Every package imports only the layers
below it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

LOOM = Path(__file__).resolve().parents[1] / "loom"

# Which of our packages each package may import (besides itself).
MAY_IMPORT: dict[str, set[str]] = {
    "wire": set(),
    "raft": set(),
    "storage": {"raft"},  # raft/types.py is the persistence contract
    "state": {"wire"},
    "security": {"wire"},
    "sim": {"raft", "storage"},  # --disk wal runs the real storage code over FaultFS
    "client": {"wire", "security"},
    "http": {"security"},  # security/tlsstream.py only: shared by the node and the gateway
    "obs": set(),  # metric definitions; fed by the node, never importing it
    "node": {"wire", "raft", "storage", "state", "security", "http", "obs"},
    "gateway": {"wire", "security", "http", "obs"},  # a separate process: never node or below
    "cli": {"wire", "raft", "storage", "state", "security", "http", "obs", "node", "client"},
}
PURE = ("wire", "raft", "state", "security", "sim")
DETERMINISTIC = ("wire", "raft", "state", "sim")
IO = {"trio", "trio_util", "anyio", "asyncio", "socket", "ssl", "selectors", "threading",
      "subprocess", "outcome"}
NONDETERMINISTIC = {"time", "os", "secrets", "uuid", "datetime"}
# The shell side of a pure package: the TLS context factory and the TLS stream over a socket;
# the simulator's command line, which reads a clock to report seeds per second.
EXEMPT = {"security/tls.py", "security/tlsstream.py", "sim/__main__.py"}


def _imports(path: Path) -> set[str]:
    """Dotted names of the modules `path` imports (absolute imports; Loom uses no others)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            if node.module:
                names.add(node.module)
    return names


def _modules(pkg: str) -> list[Path]:
    return sorted((LOOM / pkg).rglob("*.py"))


def test_every_package_is_in_the_table() -> None:
    # A new package states its place in the layering here before it is used by another.
    known = {p.name for p in LOOM.iterdir() if (p / "__init__.py").is_file()}
    for pkg, allowed in MAY_IMPORT.items():
        assert pkg in known, pkg
        assert allowed <= known, (pkg, allowed - known)


@pytest.mark.parametrize("pkg", sorted(MAY_IMPORT))
def test_imports_go_only_downward(pkg: str) -> None:
    allowed = MAY_IMPORT[pkg] | {pkg}
    for path in _modules(pkg):
        ours = {n.split(".")[1] for n in _imports(path) if n.startswith("loom.")}
        bad = {o for o in ours if o in MAY_IMPORT and o not in allowed}
        assert not bad, f"loom/{path.relative_to(LOOM)} imports loom.{', loom.'.join(bad)}"


@pytest.mark.parametrize("pkg", PURE)
def test_pure_packages_do_no_io(pkg: str) -> None:
    forbidden = IO | (NONDETERMINISTIC if pkg in DETERMINISTIC else set())
    for path in _modules(pkg):
        rel = str(path.relative_to(LOOM))
        if rel in EXEMPT:
            continue
        bad = {n.split(".")[0] for n in _imports(path)} & forbidden
        assert not bad, f"loom/{rel} imports {bad}"


def test_pure_packages_load_no_event_loop() -> None:
    # Transitively too: importing them (as a test or the simulator does) loads no trio.
    modules = [f"loom.{p}" for p in PURE if p != "security"] + [
        "loom.security." + p.stem for p in _modules("security")
        if f"security/{p.name}" not in EXEMPT and p.stem != "__init__"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules) +
            "print(sorted(m for m in ('trio', 'anyio', 'asyncio') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout
