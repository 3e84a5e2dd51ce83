"""loomctl: parsing, exit codes, one-line errors, output, against a real TLS server."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from loom.cli.loomctl import EXIT_CONNECT, EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from tests.client.fakeserver import FakeServer, Pki

Serve = Callable[..., FakeServer]
Cap = pytest.CaptureFixture[str]

pytestmark = pytest.mark.usefixtures("clean_loom_env")  # loomctl reads LOOM_* variables


def run(capsys: Cap, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, errs = capsys.readouterr()
    return code, out, errs


def one_error_line(errs: str, code: str) -> None:
    lines = errs.splitlines()
    assert len(lines) == 1, errs
    assert lines[0].startswith(f"loomctl: {code}: "), errs


def test_put_get_del_and_missing_key(pki: Pki, serve: Serve, capsys: Cap) -> None:
    s = serve()
    g = ["--endpoints", s.addr, "--ca", str(pki.ca_file)]
    assert run(capsys, *g, "put", "k", "héllo")[:2] == (EXIT_OK, "OK\n")
    assert run(capsys, *g, "get", "k")[:2] == (EXIT_OK, "héllo\n")
    code, out, _ = run(capsys, *g, "get", "k", "-o", "json")
    assert json.loads(out) == {"result": {"base64": "aMOpbGxv"}}
    assert run(capsys, *g, "del", "k")[:2] == (EXIT_OK, "deleted\n")
    code, out, errs = run(capsys, *g, "get", "k")
    assert (code, out) == (EXIT_FAILED, "")
    one_error_line(errs, "NOT_FOUND")
    assert "key 'k' not found in map 'default'" in errs


def test_map_name_and_env_configuration(pki: Pki, serve: Serve, capsys: Cap,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    s = serve()
    monkeypatch.setenv("LOOM_ENDPOINTS", s.addr)
    monkeypatch.setenv("LOOM_CA", str(pki.ca_file))
    assert run(capsys, "map", "put", "--name", "users", "k", "v")[0] == EXIT_OK
    assert run(capsys, "--map", "users", "get", "k")[:2] == (EXIT_OK, "v\n")
    assert run(capsys, "get", "k")[0] == EXIT_FAILED
    assert s.requests[0]["b"]["name"] == "users"


def test_server_refusal_exits_1(pki: Pki, serve: Serve, capsys: Cap) -> None:
    s = serve()
    code, _, errs = run(capsys, "--endpoints", s.addr, "--ca", str(pki.ca_file), "acl", "get")
    assert code == EXIT_FAILED
    one_error_line(errs, "FORBIDDEN")


def test_missing_client_certificate_exits_3(pki: Pki, serve: Serve, capsys: Cap) -> None:
    s = serve(require_client_cert=True)
    code, _, errs = run(capsys, "--endpoints", s.addr, "--ca", str(pki.ca_file), "ping")
    assert code == EXIT_CONNECT
    one_error_line(errs, "CONNECT")
    assert "requires a client certificate (pass --cert/--key)" in errs
    code, out, _ = run(capsys, "--endpoints", s.addr, "--ca", str(pki.ca_file), "--cert",
                       str(pki.client_cert), "--key", str(pki.client_key), "ping", "-o", "json")
    assert code == EXIT_OK
    assert json.loads(out)["result"]["pong"] is True


def test_connection_refused_exits_3(pki: Pki, capsys: Cap) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    addr = f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    code, _, errs = run(capsys, "--endpoints", addr, "--ca", str(pki.ca_file), "--timeout",
                        "2", "get", "k")
    assert code == EXIT_CONNECT
    one_error_line(errs, "CONNECT")


@pytest.mark.parametrize("argv", [
    ["frobnicate"],
    [],
    ["get"],
    ["counter", "add", "c", "notanumber"],
    ["--ca", "/nonexistent/ca.pem", "get", "k"],
    ["--ca", "CA", "--cert", "CA", "get", "k"],
    ["get", "k"],  # no CA configured
    ["--ca", "CA", "call", "MAP_GET", "--json", "{not json"],
    ["--ca", "CA", "call", "MAP_GET", "--json", "[1]"],
    ["--ca", "CA", "call", "MAP_GET", "--json", '{"name": "m", "key": "k", "x": 1}'],
    ["--ca", "CA", "call", "NOT_AN_OP"],
    ["--ca", "CA", "--map", "bad name!", "get", "k"],
])
def test_usage_and_configuration_errors_exit_2(pki: Pki, capsys: Cap, argv: list[str]) -> None:
    argv = [str(pki.ca_file) if a == "CA" else a for a in argv]
    # Nothing listens here: exit 2 proves nothing was attempted on the network.
    code, out, errs = run(capsys, "--endpoints", "127.0.0.1:9", *argv)
    assert code == EXIT_USAGE, errs
    assert out == ""
    assert len(errs.splitlines()) == 1, errs
    assert errs.startswith("loomctl: ")


def test_global_flags_after_the_command(pki: Pki, serve: Serve, capsys: Cap) -> None:
    s = serve()
    code, out, _ = run(capsys, "ping", "--endpoints", s.addr, "--ca", str(pki.ca_file),
                       "-o", "json")
    assert code == EXIT_OK
    assert json.loads(out)["result"]["node"] == "n1"


def test_call_escape_hatch_encodes_text_for_bytes(pki: Pki, serve: Serve, capsys: Cap) -> None:
    s = serve()
    g = ["--endpoints", s.addr, "--ca", str(pki.ca_file)]
    body = json.dumps({"name": "m", "key": "k", "value": "v"})
    assert run(capsys, *g, "call", "MAP_PUT", "--json", body)[0] == EXIT_OK
    assert s.requests[-1]["b"]["value"] == b"v"


def test_parser_builds_bodies(pki: Pki, serve: Serve, capsys: Cap) -> None:
    seen: list[dict[str, object]] = []

    def record(server: FakeServer, req: dict[str, object]) -> list[dict[str, object]]:
        seen.append(req)
        return [{"id": req["id"], "s": 0, "r": None}]

    s = serve(record)
    g = ["--endpoints", s.addr, "--ca", str(pki.ca_file)]
    cases: list[tuple[list[str], int, dict[str, object]]] = [
        (["list", "range", "l", "0", "-1"], 0x0407, {"name": "l", "start": 0, "stop": -1}),
        (["counter", "cas", "c", "1", "2"], 0x0606, {"name": "c", "expected": 1, "value": 2}),
        (["queue", "poll", "q", "--wait", "500"], 0x0202, {"name": "q", "timeout_ms": 500}),
        (["put", "k", "v", "--ttl", "1000"], 0x0101,
         {"name": "default", "key": "k", "value": b"v", "ttl_ms": 1000}),
        (["map", "ttl", "k", "--name", "m", "--set", "5000"], 0x010E,
         {"name": "m", "key": "k", "ttl_ms": 5000}),
        (["lock", "release", "x", "--session", "7"], 0x0703, {"name": "x", "session_id": 7}),
        (["struct", "stats", "MAP", "m"], 0x0F03, {"category": "MAP", "name": "m"}),
    ]
    for argv, op, body in cases:
        assert run(capsys, *g, *argv)[0] == EXIT_OK, argv
        assert (seen[-1]["op"], seen[-1]["b"]) == (op, body), argv


def test_lock_acquire_opens_a_session(pki: Pki, serve: Serve, capsys: Cap) -> None:
    def locks(server: FakeServer, req: dict[str, object]) -> list[dict[str, object]]:
        result = {0x0004: 42, 0x0701: 1001}.get(req["op"])  # type: ignore[call-overload]
        return [{"id": req["id"], "s": 0, "r": result}]

    s = serve(locks)
    code, out, _ = run(capsys, "--endpoints", s.addr, "--ca", str(pki.ca_file), "-o", "json",
                       "lock", "acquire", "x", "--session-ttl", "60000")
    assert code == EXIT_OK
    assert json.loads(out)["result"] == {"session_id": 42, "result": 1001}
    assert [r["op"] for r in s.requests] == [0x0004, 0x0701]
    assert s.requests[0]["b"] == {"ttl_ms": 60000}


def test_certs_dev(tmp_path: Path, capsys: Cap) -> None:
    out = tmp_path / "pki"
    code, text, _ = run(capsys, "certs", "dev", "--out", str(out))
    assert code == EXIT_OK
    assert (out / "ca.pem").is_file()
    assert str(out / "ca.pem") in text
    (out / "n1.pem").write_text("garbage")
    code, _, errs = run(capsys, "certs", "dev", "--out", str(out))
    assert code == EXIT_USAGE
    assert "--force" in errs
    assert run(capsys, "certs", "dev", "--out", str(out), "--force")[0] == EXIT_OK
