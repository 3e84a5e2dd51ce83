"""`loomctl audit tail`: a real node's audit file, read by the real command, filtered, followed
while the node writes, and followed across a rotation."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from pathlib import Path

import pytest
import trio

from loom.cli.loomctl.audittail import tail
from loom.node.config import AuditConfig
from loom.node.server import Node
from tests.conftest import PKI, make_config
from tests.node.conftest import Dial

LOOMCTL = [sys.executable, "-m", "loom.cli.loomctl"]
READER = "spiffe://loom.dev/client/reader"


async def _lines_until(stream: trio.abc.ReceiveStream, n: int, buf: bytearray) -> list[str]:
    with trio.fail_after(20):
        while buf.count(b"\n") < n:
            data = await stream.receive_some(65536)
            assert data, f"loomctl exited early: {bytes(buf)!r}"
            buf += data
    return bytes(buf).decode().splitlines()


@pytest.mark.timeout(60)
async def test_tail_filters_and_follows_a_real_nodes_audit_file(
        pki: PKI, tmp_path: Path, nursery: trio.Nursery, dial: Dial) -> None:
    path = tmp_path / "audit.log"
    node = Node(make_config(pki, tmp_path, audit=AuditConfig(sink="file", path=path)))
    await nursery.start(node.run)
    admin = await dial(node, "admin", hello=True)
    reader = await dial(node, "reader", hello=True)
    for i in range(3):
        assert (await admin.request("MAP_PUT", name="m", key=f"k{i}", value=b"v"))["s"] == 0
        assert (await reader.request("MAP_PUT", name="m", key=f"r{i}", value=b"v"))["s"] == 3
    with trio.fail_after(10):  # the drainer writes within about 5 ms of a record
        while path.read_bytes().count(b"\n") < 6:
            await trio.sleep(0.02)

    r = await trio.run_process([*LOOMCTL, "audit", "tail", str(path), "--lines", "2",
                                "--result", "denied"], capture_stdout=True, capture_stderr=True)
    lines = r.stdout.decode().splitlines()
    assert len(lines) == 2, r
    assert all(READER in x for x in lines), lines
    assert "MAP_PUT m/r1 denied" in lines[0] and "MAP_PUT m/r2 denied" in lines[1], lines

    proc = await trio.lowlevel.open_process(
        [*LOOMCTL, "-o", "json", "audit", "tail", str(path), "--lines", "0", "--follow",
         "--principal", READER, "--interval", "0.05"], stdout=-1)
    try:
        assert proc.stdout is not None
        buf = bytearray()
        with trio.fail_after(30):  # until the command, started in its own time, follows
            while not buf.count(b"\n"):
                assert (await reader.request("MAP_PUT", name="m", key="late",
                                             value=b"v"))["s"] == 3
                assert (await admin.request("MAP_PUT", name="m", key="late",
                                            value=b"v"))["s"] == 0
                with trio.move_on_after(0.3):
                    await _lines_until(proc.stdout, 1, buf)
        await trio.sleep(0.3)
        for line in bytes(buf).decode().splitlines():
            rec = json.loads(line)  # -o json: the record's own line
            assert rec["principal"] == READER and rec["key"] == "late", rec  # admin: filtered
            assert rec["result"] == "denied"
    finally:
        proc.terminate()
        await proc.wait()


def test_follow_crosses_a_rotation_and_skips_what_is_not_a_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"

    def rec(seq: int) -> str:
        return json.dumps({"event": "request", "ts": "t", "node": "n1", "seq": seq,
                           "principal": "p", "command": "MAP_PUT", "structure": "m",
                           "key": str(seq), "result": "ok"}) + "\n"

    path.write_text(rec(1) + "not json\n" + rec(2))
    out = io.StringIO()
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(tail(
        path, out, count=1, follow=True, principal=None, result=None, json_output=False,
        interval_s=0.02, stop_after_s=1.5)))
    t.start()
    time.sleep(0.3)
    with path.open("a") as f:
        f.write(rec(3)[:20])  # a line being written: held until its newline
    time.sleep(0.2)
    with path.open("a") as f:
        f.write(rec(3)[20:])
    time.sleep(0.2)
    path.rename(tmp_path / "audit.log.1")  # what the file sink does when it rotates
    path.write_text(rec(4))
    t.join(timeout=10)
    assert not t.is_alive()
    lines = out.getvalue().splitlines()
    assert [x.split()[2] for x in lines] == ["#2", "#3", "#4"], lines
    assert lines[0] == "t n1 #2 p MAP_PUT m/2 ok" and result == [3]
