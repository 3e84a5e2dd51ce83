"""The audit log of a real node (SECURITY-CATALOGUE H1-H4)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from loom.node.audit import FileSink
from loom.node.config import AuditConfig, ConfigError, Limits, to_toml
from loom.node.server import Node
from loom.security.auditverify import RunReport, verify_files
from tests.conftest import PKI, MemorySink, NodeFactory, RawConn, make_config, tls_client_ctx
from tests.node.conftest import (
    BAD_REQUEST,
    FORBIDDEN,
    OK,
    WRITER_P,
    Dial,
    audit_flushed,
    frame,
    raw_request,
    records,
)

FIELDS = {"ts", "node", "seq", "client_id", "principal", "roles", "command", "result",
          "duration_ms"}
SECRET = b"SECRET-VALUE-7f3a9c"
LOOMD = [sys.executable, "-m", "loom.cli.loomd"]
LOOMCTL = [sys.executable, "-m", "loom.cli.loomctl"]


async def test_one_record_per_write_outcome(node: Node, dial: Dial) -> None:
    admin = await dial(node, "admin")
    writer = await dial(node, "writer")
    who = (await admin.request("WHOAMI"))["r"]["connection"]
    expected: list[tuple[str, str, str | None]] = []  # (command, result, key)

    async def go(conn: Any, op: str, result: str, audit_key: str | None = None,
                 **body: Any) -> dict[str, Any]:
        r = await conn.request(op, **body)
        expected.append((op, result, audit_key))
        return r

    r = await go(admin, "MAP_PUT", "ok", "k1", name="m", key="k1", value=b"v")
    assert r["s"] == OK
    r = await go(writer, "MAP_DELETE", "denied", "k1", name="m", key="k1")
    assert r["s"] == FORBIDDEN
    s = (await go(admin, "SESSION_OPEN", "ok"))["r"]["session_id"]
    r = await go(admin, "LOCK_UNLOCK", "conflict", None, name="L", session_id=s)
    assert r["s"] == 5, r
    r = await go(admin, "LIST_SET", "not_found", None, name="l", index=3, value=b"x")
    assert r["s"] == 4, r
    r = await go(admin, "COUNTER_ADD", "bad_request", None, name="c", delta=True)
    assert r["s"] == BAD_REQUEST
    # Reads are not modifications: no record (audit_reads is off).
    assert (await admin.request("MAP_GET", name="m", key="k1"))["s"] == OK
    assert (await admin.request("PING"))["s"] == OK
    await audit_flushed(node)
    recs = records(node)
    assert [(x["command"], x["result"]) for x in recs] == [(c, r) for c, r, _ in expected]
    for rec, (_, _, key) in zip(recs, expected, strict=True):
        missing = FIELDS - set(rec)
        assert not missing, (missing, rec)
        assert rec["node"] == "n1"
        assert isinstance(rec["duration_ms"], int | float) and rec["duration_ms"] >= 0
        if key is not None:
            assert rec["key"] == key and rec["structure"] == "m", rec
    assert [x["seq"] for x in recs] == list(range(1, len(recs) + 1))
    assert recs[0]["client_id"] == who
    assert recs[1]["principal"] == WRITER_P
    assert recs[1]["roles"] == ["data-writer", "reader"]


async def test_no_values_in_records(node: Node, dial: Dial) -> None:
    admin = await dial(node, "admin")
    writer = await dial(node, "writer")
    v = SECRET
    for conn in (admin, writer):
        await conn.request("MAP_PUT", name="m", key="k", value=v)
        await conn.request("MAP_PUT_ALL", name="m", entries={"a": v, "b": v})
        await conn.request("MAP_COMPARE_AND_SET", name="m", key="k", expected=v, value=v)
        await conn.request("QUEUE_PUSH", name="q", value=v)
        await conn.request("ATOMIC_REF_SET", name="r", value=v)
        await conn.request("TOPIC_PUBLISH", name="t", value=v)
        await conn.request("BATCH_EXECUTE", ops=[
            {"op": "MAP_PUT", "b": {"name": "m", "key": "k", "value": v}}])
        await conn.request("MAP_PUT", name="m", key="k", value=v, colour=v.decode())
        await conn.request("MAP_PUT", name="m", key="k", value=v.decode())
    await audit_flushed(node)
    text = "\n".join(node.sink.lines)  # type: ignore[attr-defined]
    assert len(node.sink.lines) >= 18  # type: ignore[attr-defined]
    assert SECRET.decode() not in text
    assert SECRET.hex() not in text
    assert "U0VDUkVU" not in text  # base64 of the value's start


async def test_control_characters_escaped_one_record_one_line(node: Node, dial: Dial) -> None:
    admin = await dial(node, "admin")
    keys = ["a\u0085b", "line\u2028sep", "para\u2029sep", "rtl\u202eoverride", "bom\ufeff",
            "é-ü", "zero\u200bwidth"]
    for k in keys:
        r = await admin.request("MAP_PUT", name="m", key=k, value=b"v")
        assert r["s"] == OK, (k, r)
    for bad in ["new\nline", "cr\rlf", "nul\x00", "esc\x1b[2J", "del\x7f"]:
        r = await admin.request("MAP_PUT", name="m", key=bad, value=b"v")
        assert r["s"] == BAD_REQUEST, (bad, r)
    await audit_flushed(node)
    lines: list[str] = node.sink.lines  # type: ignore[attr-defined]
    assert len(lines) == len(keys) + 5
    for line in lines:
        assert "\n" not in line and "\r" not in line
        assert line.isascii(), line  # every non-ASCII character escaped
        assert all(0x20 <= ord(ch) < 0x7F for ch in line), line
    got = [json.loads(x).get("key") for x in lines[: len(keys)]]
    assert got == keys
    for line in lines[len(keys):]:
        assert json.loads(line)["result"] == "bad_request"


async def test_client_supplied_ids_cannot_replace_client_id(node: Node, dial: Dial) -> None:
    admin = await dial(node, "admin", hello=False)
    r = await admin.request("HELLO", client_name="tests", min_version=1, max_version=1,
                            client_id="c1")
    assert r["s"] == OK
    conn_id = r["r"]["connection"]
    # A request id, a sequence number and forwarding headers do not change who is recorded.
    r = await raw_request(admin, frame("MAP_PUT", {"name": "m", "key": "k", "value": b"v"},
                                       rid=424242, q=77))
    assert r is not None and r["s"] == OK
    for h in ({"X-Request-Id": "c999"}, {"X-Forwarded-For": "10.9.9.9"},
              {"X-Client-Id": "c999"}):
        r = await raw_request(admin, frame("MAP_PUT", {"name": "m", "key": "k", "value": b"v"},
                                           rid=5, headers=h))
        assert r is not None and r["s"] in (BAD_REQUEST, 2), r
    r = await raw_request(admin, frame("MAP_PUT", {"name": "m", "key": "k", "value": b"v",
                                                   "client_id": "c999"}, rid=6))
    assert r is not None and r["s"] == BAD_REQUEST
    await audit_flushed(node)
    recs = records(node)
    assert len(recs) == 5
    assert {x["client_id"] for x in recs} == {conn_id}
    text = "\n".join(node.sink.lines)  # type: ignore[attr-defined]
    assert "c999" not in text and "10.9.9.9" not in text and "424242" not in text


# -- H2/H3: overflow and the priority lane -------------------------------------------------------
class BlockingSink(MemorySink):
    """A sink whose writes wait until released (as a stalled disk or pipe would)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.entered = threading.Event()

    def write_lines(self, lines: list[str]) -> None:
        self.entered.set()
        if not self.release.wait(timeout=60):
            raise OSError("test sink was never released")
        super().write_lines(lines)


async def _wait_entered(sink: BlockingSink) -> None:
    for _ in range(500):
        if sink.entered.is_set():
            return
        await trio.sleep(0.01)
    raise AssertionError("the drainer never reached the sink")


def _check_coverage(node: Node, recs: list[dict[str, Any]]) -> set[int]:
    present = {x["seq"] for x in recs}
    covered: set[int] = set()
    for x in recs:
        for lo, hi in x.get("dropped", []):
            rng = set(range(lo, hi + 1))
            assert not rng & present, f"a record reported dropped is present: {lo}..{hi}"
            assert all(s < x["seq"] for s in rng), x
            covered |= rng
    top = max(present)
    assert present | covered == set(range(1, top + 1)), "a seq is neither present nor dropped"
    missing = top - len(present)
    assert missing == len(covered)
    assert missing == node.audit.statistics().dropped
    return covered


async def test_overflow_makes_loss_visible(start_node: NodeFactory, dial: Dial) -> None:
    sink = BlockingSink()
    node = await start_node(sink=sink, audit=AuditConfig(sink="off", queue_size=4,
                                                         priority_queue_size=4))
    try:
        admin = await dial(node, "admin")
        writer = await dial(node, "writer")
        assert (await writer.request("MAP_PUT", name="m", key="first", value=b"v"))["s"] == OK
        await _wait_entered(sink)
        for i in range(500):
            r = await writer.request("MAP_PUT", name="m", key=f"k{i}", value=b"v")
            assert r["s"] == OK, r  # writes never wait for the audit sink
        assert node.audit.statistics().dropped > 0
        # Security events still get through the priority lane while data records drop.
        r = await writer.request("MAP_DELETE", name="m", key="k1")
        assert r["s"] == FORBIDDEN
        denied_seq = node.audit.statistics().emitted
        assert (await admin.request("ACL_GET"))["s"] == OK
        admin_seq = node.audit.statistics().emitted
    finally:
        sink.release.set()
    await audit_flushed(node)
    # One more record carries the ranges dropped since the last one that got through.
    assert (await writer.request("MAP_PUT", name="m", key="last", value=b"v"))["s"] == OK
    await audit_flushed(node)
    recs = records(node)
    dropped = _check_coverage(node, recs)
    assert len(dropped) > 400
    by_seq = {x["seq"]: x for x in recs}
    assert by_seq[denied_seq]["command"] == "MAP_DELETE"
    assert by_seq[denied_seq]["result"] == "denied"
    assert by_seq[admin_seq]["command"] == "ACL_GET"
    st = node.audit.statistics()
    assert st.emitted == len(recs) + st.dropped
    assert (await admin.request("NODE_STATS"))["r"]["audit"]["dropped"] == st.dropped


async def test_no_drops_at_nominal_load(start_node: NodeFactory, dial: Dial) -> None:
    node = await start_node(audit=AuditConfig(sink="off", queue_size=64,
                                              priority_queue_size=16))
    w = await dial(node, "writer")
    for i in range(200):
        assert (await w.request("MAP_PUT", name="m", key=f"k{i}", value=b"v"))["s"] == OK
    await audit_flushed(node)
    recs = records(node)
    assert [x["seq"] for x in recs] == list(range(1, 201))
    assert not any("dropped" in x for x in recs)
    assert node.audit.statistics().dropped == 0


# -- Every loss in-band, on every path: real files, each result checked by `audit verify` ------
def _verify(*paths: Path) -> RunReport:
    """`loomctl audit verify` on the files (exit 0 asserted) and the one run they hold."""
    out = subprocess.run([*LOOMCTL, "audit", "verify", *map(str, paths)],
                         check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    (run,) = verify_files(paths).runs
    return run


@contextmanager
def _tmpfs(d: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at `d` (needs root), unmounted on the way out."""
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                        str(d)], check=False, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the disk-full test (root needed): {r.stderr}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False, capture_output=True, timeout=30)


async def _writes(conn: Any, n: int, prefix: str) -> None:
    for i in range(n):
        assert (await conn.request("MAP_PUT", name="m", key=f"{prefix}{i}", value=b"v"))["s"] \
            == OK


async def test_disk_full_turns_exactly_the_lost_records_into_ranges(
        pki: PKI, tmp_path: Path, dial: Dial) -> None:
    with _tmpfs(tmp_path / "fs", "64k") as fs:
        filler = fs / "filler"
        filler.write_bytes(b"\0" * (52 << 10))  # about 12 KiB left: 35 records or so
        path = fs / "audit.log"
        node = Node(make_config(pki, tmp_path, audit=AuditConfig(sink="off", queue_size=4096)),
                    audit_sink=FileSink(path, max_bytes=1 << 30, backups=0))
        async with trio.open_nursery() as n:
            await n.start(node.run)
            w = await dial(node, "writer")
            await _writes(w, 150, "a")  # the disk fills up part-way (a short write, then ENOSPC)
            await audit_flushed(node)
            full = node.audit.statistics()
            assert full.dropped > 50 and full.written > 10, full
            filler.unlink()
            await _writes(w, 20, "b")  # the first of these carries the ranges lost at the sink
            await audit_flushed(node)
            await w.aclose()
            node.shutdown()
        st = node.audit.statistics()
        run = _verify(path)
        # The file holds exactly the records counted written; the ranges exactly those counted
        # dropped (no Python buffer between the two counts), and nothing is left to report.
        assert (run.present, run.dropped) == (st.written, st.dropped), (run, st)
        assert run.first == 1 and run.last == st.emitted
        assert st.lost_at_shutdown == 0
        assert not any('"audit_lost"' in x for x in path.read_text().splitlines())


async def test_disk_full_until_shutdown_is_reported_at_the_end(
        pki: PKI, tmp_path: Path, dial: Dial, caplog: pytest.LogCaptureFixture) -> None:
    with _tmpfs(tmp_path / "fs", "64k") as fs:
        (fs / "filler").write_bytes(b"\0" * (52 << 10))
        path = fs / "audit.log"
        node = Node(make_config(pki, tmp_path, audit=AuditConfig(sink="off", queue_size=4096)),
                    audit_sink=FileSink(path, max_bytes=1 << 30, backups=0))
        async with trio.open_nursery() as n:
            await n.start(node.run)
            w = await dial(node, "writer")
            await _writes(w, 150, "a")
            await audit_flushed(node)
            _fill(fs / "filler2")  # not a byte left, even for a final record
            await w.aclose()
            node.shutdown()
        st = node.audit.statistics()
        report = verify_files([path])
        (run,) = report.runs
        assert report.bad_lines == 0 and not run.present_and_dropped
        assert (run.present, st.emitted) == (st.written, st.written + st.dropped)
        logged = [r.getMessage() for r in caplog.records
                  if "final record could not be written" in r.getMessage()]
        if not logged:  # it fit in the slack of the file's last page: the file says it all
            assert run.last == st.emitted
            _verify(path)
            return
        # The final record is lost too: the log names exactly what the file does not hold.
        ranges = json.loads(logged[0].split("seq ranges ")[1])
        assert [tuple(r) for r in ranges] == list(run.missing), (ranges, run.missing)
        assert run.last < st.emitted == ranges[-1][1]  # the final record's own seq included


def _fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(10_000):  # bounded: the tmpfs is 64 KiB
            os.write(fd, b"\0" * 512)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_file_sink_refuses_a_fifo(pki: PKI, tmp_path: Path) -> None:
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    cfg = make_config(pki, tmp_path, audit=AuditConfig(sink="file", path=fifo))
    with pytest.raises(ConfigError, match="FIFO"):  # no reader: refused, not hung
        Node(cfg)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(ConfigError, match="FIFO"):  # with a reader: refused all the same
            Node(cfg)
    finally:
        os.close(rfd)
    # loomd says so in one line and exits 2, at once.
    conf = tmp_path / "loomd.toml"
    conf.write_text(to_toml(cfg), encoding="utf-8")
    out = subprocess.run([*LOOMD, "--config", str(conf)], check=False, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "is a FIFO" in out.stderr and "audit.path" in out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_sigterm_with_a_stopped_fifo_reader_exits_and_accounts_for_every_record(
        pki: PKI, tmp_path: Path) -> None:
    """loomd's stdout sink streams into a FIFO whose reader is stopped (SIGSTOP): writes go on,
    SIGTERM ends the process within the grace period, and every record the reader never got
    is reported: in a final record if it fit in the pipe, else in the exit log line."""
    port = _free_port()
    cfg = make_config(pki, tmp_path, client_listen=f"127.0.0.1:{port}",
                      audit=AuditConfig(sink="stdout", queue_size=64, priority_queue_size=16),
                      limits=Limits(shutdown_grace_s=1))
    conf = tmp_path / "loomd.toml"
    conf.write_text(to_toml(cfg), encoding="utf-8")
    fifo, out, err = tmp_path / "audit.fifo", tmp_path / "audit.out", tmp_path / "loomd.err"
    os.mkfifo(fifo)
    with open(out, "wb") as out_f, open(err, "wb") as err_f:
        reader = await trio.lowlevel.open_process(["cat", str(fifo)], stdout=out_f)
        with trio.fail_after(30):  # opens once cat has the FIFO open for reading
            wfd = await trio.to_thread.run_sync(os.open, fifo, os.O_WRONLY)
        proc = await trio.lowlevel.open_process([*LOOMD, "--config", str(conf)], stdout=wfd,
                                                stderr=err_f)
        os.close(wfd)
    w = None
    try:
        for _ in range(300):  # bounded: up to ~15 s for the interpreter to start
            assert proc.poll() is None, err.read_text()
            try:
                tcp = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            w = RawConn(trio.SSLStream(tcp, tls_client_ctx(pki, "writer"),
                                       server_hostname="localhost"))
            assert (await w.hello())["s"] == OK
            break
        assert w is not None, "loomd never accepted a connection"
        await _writes(w, 20, "a")
        reader.send_signal(signal.SIGSTOP)
        await _writes(w, 1500, "b")  # fills the pipe, then the lane: drops while stalled
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):  # before the fix: never, while the reader stays stopped
            rc = await proc.wait()
        assert rc == 0, err.read_text()
    finally:
        if w is not None:
            await trio.aclose_forcefully(w.stream)
        reader.send_signal(signal.SIGCONT)
        if proc.returncode is None:
            proc.kill()
        with trio.move_on_after(10) as cs:
            cs.shield = True
            await proc.wait()
            await reader.wait()
    log_text = err.read_text()
    assert "grace deadline passed" in log_text, log_text
    stopped = re.search(r"audit: (\d+) records written, (\d+) dropped, (\d+) of them lost",
                        log_text)
    assert stopped is not None and int(stopped[3]) > 0, log_text
    report = verify_files([out])
    (run,) = report.runs
    assert report.bad_lines == 0 and not run.present_and_dropped and not run.duplicates
    assert run.present == int(stopped[1])
    if run.missing:  # the final record did not fit: the exit log names exactly what is missing
        m = re.search(r"run (\w+), seq ranges (\[.*\])", log_text)
        assert m is not None and m[1] == run.run, log_text
        assert [tuple(r) for r in json.loads(m[2])] == list(run.missing), (m[2], run.missing)
    else:
        assert '"event":"audit_lost"' in out.read_text()
        _verify(out)


async def test_rotated_files_together_account_for_every_record(
        pki: PKI, tmp_path: Path, dial: Dial) -> None:
    path = tmp_path / "audit" / "audit.log"
    node = Node(make_config(pki, tmp_path, audit=AuditConfig(sink="off", queue_size=16)),
                audit_sink=FileSink(path, max_bytes=2048, backups=1000))
    async with trio.open_nursery() as n:
        await n.start(node.run)
        w = await dial(node, "writer")
        # Pipelined: the 16-record lane overflows, so ranges cross file boundaries.
        for batch in range(10):
            await w.send_raw(b"".join(frame("MAP_PUT", {"name": "m", "key": f"k{batch}-{i}",
                                                        "value": b"v"}, rid=i + 1)
                                      for i in range(50)))
            for _ in range(50):
                r = await w.recv()
                assert r is not None and r["s"] == OK, r
        await audit_flushed(node)
        await w.aclose()
        node.shutdown()
    files = sorted(path.parent.iterdir())
    st = node.audit.statistics()
    assert len(files) > 3  # rotated many times
    assert st.dropped > 0
    run = _verify(*files)
    assert (run.first, run.last) == (1, st.emitted)
    assert (run.present, run.dropped) == (st.written, st.dropped)
    # One file short: the verifier names the records that are gone.
    middle = path.with_name("audit.log.2")
    rep = verify_files([f for f in files if f != middle])
    assert not rep.ok and rep.runs[0].missing
