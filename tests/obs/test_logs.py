"""Operational logs: the JSON-lines schema, the choice of format, and a real loomd's stderr."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from loom.node.config import ConfigError, load
from loom.obs import logging as obslog
from tests.conftest import PKI

SCHEMA = {"ts", "level", "logger", "node", "msg"}


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_auto_is_json_under_the_journal_and_text_on_a_terminal() -> None:
    assert obslog.resolve_format("auto", {"JOURNAL_STREAM": "8:12345"}) == "json"
    assert obslog.resolve_format("auto", {}) == "text"
    assert obslog.resolve_format("text", {"JOURNAL_STREAM": "8:12345"}) == "text"
    assert obslog.resolve_format("json", {}) == "json"
    with pytest.raises(ValueError, match="auto, json, text"):
        obslog.resolve_format("xml", {})


def test_a_json_line_carries_the_schema_and_structured_fields(restore_root: None) -> None:
    out = io.StringIO()
    chosen = obslog.configure(node="n7", level="debug", fmt="auto",
                              environ={"JOURNAL_STREAM": "8:1"}, stream=out)
    assert chosen == "json"
    log = logging.getLogger("loom.peer")
    log.warning("link to %s lost", "n2", extra={"peer": "n2", "attempt": 3, "raw": b"\x00"})
    try:
        raise RuntimeError("disk \"gone\"\nsecond line")
    except RuntimeError:
        log.exception("fsync failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # a traceback stays inside its line
    first, second = (json.loads(x) for x in lines)
    assert first.keys() >= SCHEMA
    assert first["level"] == "WARNING" and first["logger"] == "loom.peer"
    assert first["node"] == "n7" and first["msg"] == "link to n2 lost"
    assert first["peer"] == "n2" and first["attempt"] == 3 and isinstance(first["raw"], str)
    assert first["ts"].endswith("+00:00")
    assert second["level"] == "ERROR" and 'RuntimeError: disk "gone"' in second["exc_info"]
    # Nothing else a record carries by default leaks into the line.
    assert not {"pathname", "thread", "process", "args"} & first.keys()


def test_text_stays_for_a_terminal(restore_root: None) -> None:
    out = io.StringIO()
    assert obslog.configure(node="n1", fmt="text", environ={}, stream=out) == "text"
    logging.getLogger("loom.raft").info("became leader at term %d", 4)
    logging.getLogger("loom.raft").debug("not shown at info")
    line = out.getvalue()
    assert line.count("\n") == 1 and " INFO loom.raft: became leader at term 4" in line


def test_the_log_section_is_validated(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[log]\nformat = "json"\n')
    assert load(cfg).log.format == "json"
    cfg.write_text('[log]\nformat = "yaml"\n')
    with pytest.raises(ConfigError, match=r"log\.format"):
        load(cfg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.timeout(90)
def test_every_line_of_a_real_loomds_stderr_is_one_json_record(pki: PKI, tmp_path: Path) -> None:
    port = _free_port()
    flags = ["--node-id", "n1", "--data-dir", str(tmp_path / "data"),
             "--client-listen", f"127.0.0.1:{port}", "--tls-ca", str(pki.ca),
             "--tls-cert", str(pki.dir / "n1.pem"), "--tls-key", str(pki.dir / "n1.key"),
             "--audit-sink", "off", "--log-level", "debug", "--log-format", "json"]
    err = tmp_path / "stderr"
    with err.open("w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "loom.cli.loomd", *flags], stderr=f)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=0.2)
                break
            except OSError:
                time.sleep(0.05)
        with s:  # garbage instead of a TLS hello: a refused handshake, logged
            s.sendall(b"GET / HTTP/1.1\r\n\r\n")
            try:
                s.recv(100)
            except OSError:
                pass
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    lines = err.read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 2, lines
    records = [json.loads(x) for x in lines]  # every line parses, or the test fails here
    for r in records:
        assert r.keys() >= SCHEMA, r
        assert r["node"] == "n1" and r["level"] in {"DEBUG", "INFO", "WARNING", "ERROR"}, r
    acl = [r for r in records if r["logger"] == "loomd" and "ACL:" in r["msg"]]
    assert acl and acl[0]["level"] == "WARNING", records
    assert len({r["logger"] for r in records}) >= 2, records


@pytest.mark.timeout(60)
def test_every_line_of_a_real_gateways_stderr_is_one_json_record(pki: PKI,
                                                                 tmp_path: Path) -> None:
    from tests.gateway.proxy_support import gateway_config, write_config

    up = {"kind": "http", "endpoints": ["https://127.0.0.1:9"], "tls": {"ca_file": str(pki.ca)}}
    path = write_config(tmp_path, gateway_config(pki, tmp_path, upstream=up))
    err = tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if k != "AUTH_TYPE"}
    with err.open("w") as f:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "loom-gateway"),
                                 "--log-format", "json", "run", str(path)], stderr=f, env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "loom-gateway ready" not in err.read_text():
            assert proc.poll() is None, err.read_text()
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    records = [json.loads(x) for x in err.read_text(encoding="utf-8").splitlines()]
    assert records, "no log line"
    for r in records:
        assert r.keys() >= SCHEMA and r["node"] == "gateway", r
    msgs = [r["msg"] for r in records]
    assert any(m.startswith("loom-gateway ready") for m in msgs), msgs
    assert "loom-gateway stopped" in msgs, msgs
