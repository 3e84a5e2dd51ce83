"""loomctl: parsing, exit codes, one-line errors, output, against a real TLS server."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from loom.cli.loomctl import EXIT_CONNECT, EXIT_FAILED, EXIT_OK, EXIT_USAGE, main
from loom.wire.errors import Status
from tests.client.fakeserver import FakeServer, Frame, Pki, err, ok

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
    assert json.loads(out)["result"] == {"session_id": 42, "fencing_token": 1001}
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


def _recorder(results: dict[int, object]) -> tuple[list[Frame], Callable[..., list[Frame]]]:
    seen: list[Frame] = []

    def record(server: FakeServer, req: Frame) -> list[Frame]:
        seen.append(req)
        return [ok(req, results.get(req["op"]))]

    return seen, record


def test_lock_and_semaphore_not_acquired_exit_1(pki: Pki, serve: Serve, capsys: Cap) -> None:
    # SESSION_OPEN answers 42; LOCK_TRY_LOCK null (held); SEMAPHORE_ACQUIRE false (timed out).
    seen, record = _recorder({0x0004: 42, 0x0702: None, 0x0802: False})
    s = serve(record)
    g = ["--endpoints", s.addr, "--ca", str(pki.ca_file)]
    code, out, errs = run(capsys, *g, "lock", "try", "x")
    assert (code, out) == (EXIT_FAILED, "acquired: false\n"), errs
    one_error_line(errs, "NOT_ACQUIRED")
    assert [r["op"] for r in seen] == [0x0004, 0x0702, 0x0006]  # its session is closed
    code, out, errs = run(capsys, *g, "-o", "json", "semaphore", "acquire", "s", "--wait", "50")
    assert code == EXIT_FAILED and json.loads(out) == {"result": {"acquired": False}}
    assert seen[-2]["b"] == {"name": "s", "session_id": 42, "permits": 1, "timeout_ms": 50}
    one_error_line(errs, "NOT_ACQUIRED")


def test_map_name_before_the_subcommand_and_in_help(pki: Pki, serve: Serve, capsys: Cap) -> None:
    s = serve()
    g = ["--endpoints", s.addr, "--ca", str(pki.ca_file)]
    assert run(capsys, *g, "map", "--name", "m1", "put", "k", "v")[:2] == (EXIT_OK, "OK\n")
    assert run(capsys, *g, "map", "get", "--name", "m1", "k")[:2] == (EXIT_OK, "v\n")
    assert s.requests[0]["b"]["name"] == "m1"
    with pytest.raises(SystemExit):
        main(["map", "--help"])
    assert "--name NAME" in capsys.readouterr().out


def test_map_operations_that_had_only_call(pki: Pki, serve: Serve, capsys: Cap,
                                           tmp_path: Path) -> None:
    seen, record = _recorder({})
    s = serve(record)
    g = ["--endpoints", s.addr, "--ca", str(pki.ca_file)]
    ops = tmp_path / "ops.json"
    ops.write_text(json.dumps([{"op": "MAP_PUT", "b": {"name": "m", "key": "a", "value": "1"}},
                               {"op": "COUNTER_INCREMENT", "b": {"name": "c"}}]))
    cases: list[tuple[list[str], int, dict[str, object]]] = [
        (["map", "replace", "k", "v", "--ttl", "9"], 0x0105,
         {"name": "default", "key": "k", "value": b"v", "ttl_ms": 9}),
        (["map", "--name", "m", "cas", "k", "new", "--expected", "old"], 0x010C,
         {"name": "m", "key": "k", "expected": b"old", "value": b"new"}),
        (["map", "remove-if", "k", "--expected", "old"], 0x010D,
         {"name": "default", "key": "k", "expected": b"old"}),
        (["map", "get-all", "a", "b"], 0x010A, {"name": "default", "keys": ["a", "b"]}),
        (["map", "put-all", "a=1", "b=2=3"], 0x010B,
         {"name": "default", "entries": {"a": b"1", "b": b"2=3"}}),
        (["batch", str(ops)], 0x0007,
         {"ops": [{"op": "MAP_PUT", "b": {"name": "m", "key": "a", "value": b"1"}},
                  {"op": "COUNTER_INCREMENT", "b": {"name": "c"}}]}),
    ]
    for argv, op, body in cases:
        code, _, errs = run(capsys, *g, *argv)
        assert code == EXIT_OK, (argv, errs)
        assert (seen[-1]["op"], seen[-1]["b"]) == (op, body), argv
    code, _, errs = run(capsys, *g, "map", "get-and-delete", "k")  # answers null: absent
    assert code == EXIT_FAILED and seen[-1]["op"] == 0x0111
    one_error_line(errs, "NOT_FOUND")
    assert run(capsys, *g, "map", "put-all", "novalue")[0] == EXIT_USAGE


def test_topic_subscribe_shows_losses_and_waits_in_ms(pki: Pki, serve: Serve,
                                                      capsys: Cap) -> None:
    def topic(server: FakeServer, req: Frame) -> list[Frame]:
        rid = req["id"]
        return [ok(req, None),
                {"id": rid, "s": 0, "p": {"topic": "t", "seq": 1, "value": b"a"}},
                {"id": rid, "s": 0, "p": {"topic": "t", "seq": 5, "value": b"b",
                                          "lost": [2, 4]}}]

    s = serve(topic)
    g = ["--endpoints", s.addr, "--ca", str(pki.ca_file), "topic", "subscribe", "t"]
    code, out, errs = run(capsys, *g, "--count", "2")
    assert (code, out) == (EXIT_OK, "a\nb\n"), errs
    one_error_line(errs, "LOST")
    assert "messages 2-4" in errs
    t0 = time.monotonic()
    code, out, errs = run(capsys, *g, "--count", "3", "--wait", "300")  # the third never comes
    assert code == EXIT_FAILED and "TIMEOUT" in errs
    assert 0.25 < time.monotonic() - t0 < 5


def test_every_endpoint_refused_fails_fast(pki: Pki, capsys: Cap) -> None:
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    t0 = time.monotonic()
    code, _, errs = run(capsys, "--endpoints", f"127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}",
                        "--ca", str(pki.ca_file), "get", "k")
    assert time.monotonic() - t0 < 3  # retrying until --timeout took about 9 s
    assert code == EXIT_CONNECT
    one_error_line(errs, "CONNECT")
    assert errs.count("connection refused") == 2, errs
    # A name that cannot resolve (RFC 6761) is as final; the resolver sets the pace here.
    code, _, errs = run(capsys, "--endpoints", f"127.0.0.1:{ports[0]},no-such-host.invalid:1",
                        "--ca", str(pki.ca_file), "get", "k")
    assert code == EXIT_CONNECT
    one_error_line(errs, "CONNECT")
    assert "no-such-host.invalid:1: does not resolve" in errs, errs


def test_members_learner_flag_and_removing_a_non_member(pki: Pki, serve: Serve,
                                                        capsys: Cap) -> None:
    def members(server: FakeServer, req: Frame) -> list[Frame]:
        if req["op"] == 0x0E02:  # MEMBER_LIST
            return [ok(req, {"members": [{"id": "n1"}, {"id": "n2"}]})]
        if req["op"] == 0x0E05:  # MEMBER_REMOVE of a node the log does not know
            return [err(req, Status.CONFLICT, "no-op change")]
        return [ok(req, {"index": 7})]

    s = serve(members)
    g = ["--endpoints", s.addr, "--ca", str(pki.ca_file)]
    code, out, _ = run(capsys, *g, "members", "add", "n4", "--peer-addr", "h:7004", "--learner")
    assert (code, out) == (EXIT_OK, "n4 added as a learner (log index 7)\n")
    assert s.requests[-1]["b"]["learner"] is True
    assert run(capsys, *g, "members", "add", "n4", "--peer-addr", "h:7004", "--learner",
               "--voter")[0] == EXIT_USAGE
    code, _, errs = run(capsys, *g, "members", "remove", "n9")
    assert code == EXIT_FAILED
    one_error_line(errs, "CONFLICT")
    assert "n9 is not a member of the cluster (members: n1, n2)" in errs


def test_wal_tools_find_the_log_in_a_data_dir_and_never_pass_unchecked(
        tmp_path: Path, capsys: Cap) -> None:
    from loom.raft.types import Entry, EntryType, HardState
    from loom.storage import Storage, StorageOptions, admin

    ring = tmp_path / "keyring.json"
    admin.create_keyring(str(ring))
    data_dir = tmp_path / "n1"  # a node's data_dir: the log is under raft/ (as loomd keeps it)
    s, _ = Storage.open(str(data_dir / "raft"),
                        StorageOptions(segment_size=1 << 20, max_record_size=8 << 10,
                                       snapshot_chunk_size=4 << 10, keyring_path=str(ring)))
    s.save(HardState(1, "n1", 0),
           [Entry(1, i, EntryType.NORMAL, b"x" * 10) for i in range(1, 6)], True)
    s.close()

    code, out, errs = run(capsys, "-o", "json", "wal", "inspect", str(data_dir), "--keyring",
                          str(ring))
    assert code == EXIT_OK, errs
    assert json.loads(out)["result"]["last_index"] == 5
    code, out, errs = run(capsys, "-o", "json", "wal", "verify", str(data_dir), "--keyring",
                          str(ring))
    assert code == EXIT_OK and json.loads(out)["result"]["authenticated"] is True, errs

    code, out, errs = run(capsys, "-o", "json", "wal", "verify", str(data_dir))
    assert code == EXIT_FAILED  # checked by CRC only: not a pass
    assert json.loads(out)["result"]["ok"] is False
    one_error_line(errs, "NOT_AUTHENTICATED")

    empty = tmp_path / "empty"
    empty.mkdir()
    for tool in ("inspect", "verify"):
        code, out, errs = run(capsys, "wal", tool, str(empty))
        assert (code, out) == (EXIT_FAILED, ""), tool
        one_error_line(errs, "NO_LOG")
