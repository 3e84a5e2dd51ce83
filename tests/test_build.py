"""The build decision (loom/buildinfo.py): a compiled module never shadows an edited source.

These run on a copy of the package's sources in a temporary directory, with stand-in
extension files: `decide` only looks at names and digests, and the import hook is checked
by importing from the copy in a child process (the stand-ins are not loadable, so a module
that comes back at all came from its `.py`).
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest

from loom import buildinfo
from loom.buildinfo import COMPILED, decide, digest, python_tag, source_path
from loom.state import Command, StateMachine
from loom.wire.errors import Status

ROOT = Path(__file__).resolve().parent.parent
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def fake_build(tmp_path: Path) -> Path:
    """A copy of loom/ with a manifest matching its sources and a stand-in extension for
    every compiled module (not a loadable one: a test that loads it fails loudly)."""
    pkg = tmp_path / "loom"
    shutil.copytree(ROOT / "loom", pkg, ignore=shutil.ignore_patterns(
        "*.so", "*.pyd", "__pycache__", "_native.json", "static"))
    for m in COMPILED:
        src = source_path(m, pkg)
        src.with_name(src.stem + SUFFIX).write_bytes(b"not an extension")
    doc = {"compiler": "mypyc 0", "python": python_tag(),
           "modules": {m: digest(source_path(m, pkg)) for m in COMPILED}}
    (pkg / "_native.json").write_text(json.dumps(doc))
    return pkg


def test_a_build_matching_its_sources_is_compiled(tmp_path: Path) -> None:
    info = decide(fake_build(tmp_path), environ={})
    assert (info.kind, info.modules, info.compiler) == ("compiled", COMPILED, "mypyc 0")
    assert info.summary() == f"compiled (mypyc 0, {len(COMPILED)} modules)"


def test_an_edited_source_makes_the_whole_build_pure(tmp_path: Path) -> None:
    pkg = fake_build(tmp_path)
    src = source_path("loom.state.map", pkg)
    src.write_text(src.read_text() + "# edited\n")
    info = decide(pkg, environ={})
    assert (info.kind, info.modules) == ("pure", ())
    assert info.reason == "stale: loom/state/map.py changed since the build (run make)"


def test_the_environment_selects_pure_python(tmp_path: Path) -> None:
    pkg = fake_build(tmp_path)
    assert decide(pkg, environ={"LOOM_PURE_PYTHON": "1"}).reason == "LOOM_PURE_PYTHON=1"
    assert decide(pkg, environ={"LOOM_PURE_PYTHON": "0"}).kind == "compiled"


@pytest.mark.parametrize("damage", ["no manifest", "other python", "missing extension",
                                    "other module list", "garbled manifest"])
def test_every_doubt_means_pure(tmp_path: Path, damage: str) -> None:
    pkg = fake_build(tmp_path)
    manifest = pkg / "_native.json"
    doc = json.loads(manifest.read_text())
    if damage == "no manifest":
        manifest.unlink()
    elif damage == "other python":
        manifest.write_text(json.dumps({**doc, "python": "cpython-00-elsewhere"}))
    elif damage == "missing extension":
        src = source_path("loom.raft.core", pkg)
        src.with_name(src.stem + SUFFIX).unlink()
    elif damage == "other module list":
        manifest.write_text(json.dumps({**doc, "modules": {COMPILED[0]: "0"}}))
    else:
        manifest.write_text("{")
    info = decide(pkg, environ={})
    assert info.kind == "pure" and info.reason, damage


def test_a_stale_build_imports_the_sources(tmp_path: Path) -> None:
    """In a process that finds the copy first, with a source edited after the build: every
    compiled module is loaded from its `.py` (the stand-in extensions would fail to load),
    and the process reports the pure build and why."""
    pkg = fake_build(tmp_path)
    src = source_path("loom.raft.quorum", pkg)
    src.write_text(src.read_text() + "EDITED = True\n")
    code = ("import importlib, json, loom\n"
            "from loom.buildinfo import COMPILED, build_info\n"
            "mods = [importlib.import_module(m) for m in COMPILED]\n"
            "from loom.raft import quorum\n"
            "print(json.dumps([loom.__file__, quorum.EDITED, build_info().to_dict(),\n"
            "                  sorted({m.__file__.rsplit('.', 1)[1] for m in mods})]))\n")
    env = {k: v for k, v in os.environ.items() if k != buildinfo.PURE_ENV}
    env["PYTHONPATH"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    origin, edited, info, suffixes = json.loads(out)
    assert origin == str(pkg / "__init__.py")
    assert edited is True and suffixes == ["py"]
    assert info["kind"] == "pure" and "loom/raft/quorum.py changed" in info["reason"]


def test_loomd_version_names_the_build() -> None:
    out = subprocess.run([sys.executable, "-m", "loom.cli.loomd", "--version"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    info = buildinfo.build_info()
    lines = out.splitlines()
    assert lines[0].startswith("loomd ") and lines[1] == f"build: {info.summary()}"
    if info.kind == "compiled":
        assert lines[2] == "compiled modules: " + ", ".join(COMPILED)
    pure = subprocess.run([sys.executable, "-m", "loom.cli.loomd", "--version"], cwd=ROOT,
                          env={**os.environ, "LOOM_PURE_PYTHON": "1"},
                          capture_output=True, text=True, timeout=60, check=True).stdout
    assert pure.splitlines()[1:] == ["build: pure Python (LOOM_PURE_PYTHON=1)"]


def test_a_malformed_entry_is_refused_alike() -> None:
    """The boundary both builds rely on: a wrong type in the envelope is a ValueError from
    decode; in the body, a BAD_REQUEST answer that changes nothing."""
    for fields in (["MAP_PUT", {}, True, "", 0], ["MAP_PUT", [], 1, "", 0],
                   [1, {}, 1, "", 0], ["MAP_PUT", {}, 1, "", 0, "", 1.0]):
        with pytest.raises(ValueError, match="wrong type"):
            Command.decode(cbor2.dumps(fields))
    sm = StateMachine()
    before = sm.statistics()
    out = sm.apply(Command("MAP_PUT", {"name": 7, "key": "k", "value": b"v"}, 5), 1)
    assert out.status is Status.BAD_REQUEST and "MAP_PUT.name" in out.message
    out = sm.apply(Command("MEMBER_ADDRESS", {1: "x"}, 5), 2)  # type: ignore[dict-item]
    assert out.status is Status.BAD_REQUEST
    assert sm.statistics() == before and sm.applied_index == 2
    out = sm.apply(Command("MAP_PUT", {"name": "m", "key": "k", "value": b"v"}, 6), 3)
    assert out.status is Status.OK
