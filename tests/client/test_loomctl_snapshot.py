"""loomctl snapshot save against a scripted server: chunks in order make the file; a chunk
that does not match the announced SHA-256 leaves no file behind; an existing file needs
--force."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from loom.cli.loomctl import EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from loom.wire.catalog import BY_NAME
from tests.client.fakeserver import FakeServer, Frame, Pki, ok

Serve = Callable[..., FakeServer]
Cap = pytest.CaptureFixture[str]
SAVE = BY_NAME["SNAPSHOT_SAVE"].opcode
pytestmark = pytest.mark.usefixtures("clean_loom_env")

BLOB = bytes(range(256)) * 40  # 10,240 bytes, sent in chunks of 4,000


def saver(blob: bytes, digest: str) -> Callable[[FakeServer, Frame], list[Frame]]:
    def handle(server: FakeServer, req: Frame) -> list[Frame]:
        assert req["op"] == SAVE, req
        b = req["b"]
        off = b.get("offset", 0)
        part = {"offset": off, "data": blob[off:off + 4000]}
        if "snapshot" not in b:
            return [ok(req, {"snapshot": "abc", "node": "n1", "index": 7, "term": 2,
                             "size": len(blob), "sha256": digest, "encrypted": False, **part})]
        assert b["snapshot"] == "abc"
        return [ok(req, part)]
    return handle


def run(capsys: Cap, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, errs = capsys.readouterr()
    return code, out, errs


def test_chunks_make_the_file(pki: Pki, serve: Serve, capsys: Cap, tmp_path: Path) -> None:
    s = serve(saver(BLOB, hashlib.sha256(BLOB).hexdigest()))
    g = ["--endpoints", s.addr, "--ca", str(pki.ca_file)]
    out = tmp_path / "b.snap"
    code, text, errs = run(capsys, *g, "snapshot", "save", str(out))
    assert code == EXIT_OK, errs
    assert out.read_bytes() == BLOB and out.stat().st_mode & 0o777 == 0o600
    assert "index 7, term 2, 10240 bytes from n1" in text
    assert [r["b"].get("offset", 0) for r in s.requests] == [0, 4000, 8000]
    assert run(capsys, *g, "snapshot", "save", str(out))[0] == EXIT_USAGE  # exists
    assert run(capsys, *g, "snapshot", "save", str(out), "--force")[0] == EXIT_OK


def test_a_damaged_transfer_leaves_nothing(pki: Pki, serve: Serve, capsys: Cap,
                                          tmp_path: Path) -> None:
    s = serve(saver(BLOB, hashlib.sha256(BLOB + b"x").hexdigest()))
    out = tmp_path / "b.snap"
    code, _, errs = run(capsys, "--endpoints", s.addr, "--ca", str(pki.ca_file), "snapshot",
                        "save", str(out))
    assert code == EXIT_FAILED and "arrived damaged" in errs, errs
    assert list(tmp_path.iterdir()) == []
