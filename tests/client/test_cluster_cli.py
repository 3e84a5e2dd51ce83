"""loomctl cluster status (merge logic, pure), members and leader commands."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import pytest

from loom.cli.loomctl import (
    EXIT_CONNECT,
    EXIT_OK,
    EXIT_USAGE,
    NodeAnswer,
    main,
    merge_status,
    status_json,
    status_table,
)
from loom.wire.errors import Status
from tests.client.fakeserver import FakeServer, Frame, Pki, err, ok

Serve = Callable[..., FakeServer]
Cap = pytest.CaptureFixture[str]

pytestmark = pytest.mark.usefixtures("clean_loom_env")  # loomctl reads LOOM_* variables


def member(node: str, port: int, reachable: bool | None = None, voter: bool = True,
           match: int | None = None) -> dict[str, Any]:
    return {"id": node, "voter": voter, "peer_addr": f"127.0.0.1:{port + 1000}",
            "client_addr": f"127.0.0.1:{port}", "reachable": reachable, "match_index": match}


def status(node: str, role: str, term: int = 3, leader: str | None = "n1",
           members: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"node": node, "role": role, "term": term, "commit_index": 10, "applied_index": 9,
            "leader": leader, "leader_addr": "127.0.0.1:6001" if leader else None,
            "members": members or []}


LEADER_MEMBERS = [member("n1", 6001, True, match=10), member("n2", 6002, True, match=10),
                  member("n3", 6003, False, match=4), member("n4", 6004, None, voter=False)]


# -- merge (pure) -------------------------------------------------------------------------------
def test_merge_lists_each_node_once_with_the_leaders_view_of_reachability() -> None:
    answers = [
        NodeAnswer("127.0.0.1:6002", status("n2", "follower", members=[
            {**m, "reachable": None} for m in LEADER_MEMBERS])),
        NodeAnswer("127.0.0.1:6001", status("n1", "leader", members=LEADER_MEMBERS)),
        NodeAnswer("localhost:6001", status("n1", "leader", members=LEADER_MEMBERS)),
        NodeAnswer("127.0.0.1:6003", None, "could not connect: refused"),
    ]
    rows = merge_status(answers)
    assert [(r["id"], r["role"], r["reachable"]) for r in rows] == [
        ("n1", "leader", True), ("n2", "follower", True), ("n3", "unreachable", False),
        ("n4", "not queried", None)]
    assert rows[0]["endpoint"] == "127.0.0.1:6001"
    assert rows[2]["error"] == "could not connect: refused"
    assert (rows[1]["term"], rows[1]["commit"], rows[1]["applied"], rows[1]["leader"]) == (
        3, 10, 9, "n1")


def test_merge_without_a_leader_and_with_unknown_endpoints() -> None:
    rows = merge_status([
        NodeAnswer("127.0.0.1:6001", status("n1", "candidate", term=7, leader=None)),
        NodeAnswer("10.0.0.9:6001", None, "timed out"),
    ])
    assert [(r["id"], r["role"], r["leader"], r["reachable"]) for r in rows] == [
        ("10.0.0.9:6001", "unreachable", None, None), ("n1", "candidate", None, None)]


def test_a_joining_node_says_so_in_its_role() -> None:
    rows = merge_status([NodeAnswer("a:1", {**status("n4", "learner"), "joining": True}),
                         NodeAnswer("b:1", {**status("n1", "leader"), "joining": False})])
    assert [(r["id"], r["role"]) for r in rows] == [("n1", "leader"), ("n4", "learner (joining)")]


def test_merge_takes_reachability_from_the_newest_leader() -> None:
    old = status("n1", "leader", term=2, members=[member("n2", 6002, False)])
    new = status("n2", "leader", term=5, leader="n2", members=[member("n1", 6001, False)])
    rows = merge_status([NodeAnswer("a:1", old), NodeAnswer("b:1", new)])
    assert [(r["id"], r["reachable"]) for r in rows] == [("n1", False), ("n2", True)]


def test_status_table_and_json() -> None:
    n1 = {**status("n1", "leader", members=LEADER_MEMBERS[:1]),
          "build": {"kind": "compiled", "compiler": "mypyc 1.0", "modules": ["loom.raft.core"],
                    "reason": "built from these sources"}}
    answers = [NodeAnswer("127.0.0.1:6001", n1), NodeAnswer("127.0.0.1:6002", None, "refused")]
    lines = status_table(merge_status(answers)).splitlines()
    assert lines[0].split() == ["ID", "ROLE", "TERM", "COMMIT", "APPLIED", "LEADER",
                                "REACHABLE", "BUILD"]
    assert lines[1].split() == ["127.0.0.1:6002", "unreachable", "-", "-", "-", "-", "-", "-"]
    assert lines[2].split() == ["n1", "leader", "3", "10", "9", "n1", "yes", "compiled"]
    assert status_json(answers) == [
        {"endpoint": "127.0.0.1:6001", **n1},
        {"endpoint": "127.0.0.1:6002", "role": "unreachable", "error": "refused"}]


# -- against servers ----------------------------------------------------------------------------
def run(capsys: Cap, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, errs = capsys.readouterr()
    return code, out, errs


def node(name: str, role: str) -> Callable[[FakeServer, Frame], list[Frame]]:
    def handler(server: FakeServer, req: Frame) -> list[Frame]:
        if req["op"] == 0x0E01:
            return [ok(req, status(name, role, members=LEADER_MEMBERS[:3]))]
        return [err(req, Status.NOT_LEADER, "follower", leader="n1")]
    return handler


def closed_port() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    addr = f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    return addr


def test_cluster_status_asks_every_endpoint(pki: Pki, serve: Serve, capsys: Cap) -> None:
    n1, n2 = serve(node("n1", "leader")), serve(node("n2", "follower"))
    down = closed_port()
    g = ["--endpoints", f"{n2.addr},{n1.addr},{down}", "--ca", str(pki.ca_file)]
    code, out, errs = run(capsys, *g, "cluster", "status")
    assert code == EXIT_OK, errs
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [r[:2] for r in rows] == [[down, "unreachable"], ["n1", "leader"],
                                     ["n2", "follower"], ["n3", "not"]]
    assert len(n1.requests) == len(n2.requests) == 1  # each node asked once, for itself

    code, out, _ = run(capsys, *g, "cluster", "status", "-o", "json")
    result = json.loads(out)["result"]
    assert [(r["endpoint"], r["role"]) for r in result] == [
        (n2.addr, "follower"), (n1.addr, "leader"), (down, "unreachable")]


def test_cluster_status_with_no_endpoint_answering_exits_3(pki: Pki, capsys: Cap) -> None:
    code, out, errs = run(capsys, "--endpoints", f"{closed_port()},{closed_port()}", "--ca",
                          str(pki.ca_file), "cluster", "status")
    assert (code, out) == (EXIT_CONNECT, "")
    assert errs.startswith("loomctl: CONNECT: ")


def admin_leader(server: FakeServer, req: Frame) -> list[Frame]:
    if req["op"] == 0x0E02:
        return [ok(req, {"members": [{"id": "n1", "voter": True, "peer_addr": "h:7001",
                                      "client_addr": "h:6001"},
                                     {"id": "n4", "voter": False, "peer_addr": "h:7004",
                                      "client_addr": None}]})]
    if req["op"] == 0x0E06:
        return [ok(req, {"leader": req["b"].get("to", "n2")})]
    return [ok(req, {"index": 42})]


def test_membership_commands_go_to_the_leader(pki: Pki, serve: Serve, capsys: Cap) -> None:
    leader = serve(admin_leader)
    follower = serve(lambda s, req: [err(req, Status.NOT_LEADER, "follower", leader="n1",
                                         leader_addr=leader.addr)])
    g = ["--endpoints", follower.addr, "--ca", str(pki.ca_file)]
    cases: list[tuple[list[str], int, dict[str, Any], str]] = [
        (["members", "add", "n4", "--peer-addr", "127.0.0.1:7004"], 0x0E03,
         {"node": "n4", "peer_addr": "127.0.0.1:7004", "learner": True, "readmit": False},
         "n4 added as a learner (log index 42)"),
        (["members", "add", "n5", "--peer-addr", "h5:7005", "--voter"], 0x0E03,
         {"node": "n5", "peer_addr": "h5:7005", "learner": False, "readmit": False},
         "n5 added as a voter (log index 42)"),
        (["members", "add", "n3", "--peer-addr", "h3:7003", "--readmit"], 0x0E03,
         {"node": "n3", "peer_addr": "h3:7003", "learner": True, "readmit": True},
         "n3 re-admitted as a learner (log index 42)"),
        (["members", "promote", "n4"], 0x0E04, {"node": "n4"}, "n4 promoted to voter (log "
                                                               "index 42)"),
        (["members", "remove", "n4"], 0x0E05, {"node": "n4"}, "n4 removed (log index 42)"),
        (["leader", "transfer", "--to", "n3"], 0x0E06, {"to": "n3"},
         "leadership transferred to n3"),
        (["leader", "transfer"], 0x0E06, {}, "leadership transferred to n2"),
    ]
    for argv, op, body, text in cases:
        code, out, errs = run(capsys, *g, *argv)
        assert (code, out) == (EXIT_OK, text + "\n"), (argv, errs)
        assert (leader.requests[-1]["op"], leader.requests[-1]["b"]) == (op, body)
        assert follower.requests[-1]["q"] == leader.requests[-1]["q"]  # one write, followed
    code, out, _ = run(capsys, *g, "members", "list")
    assert code == EXIT_OK
    assert [line.split() for line in out.splitlines()] == [
        ["ID", "VOTER", "PEER_ADDR", "CLIENT_ADDR"], ["n1", "yes", "h:7001", "h:6001"],
        ["n4", "no", "h:7004", "-"]]
    code, out, _ = run(capsys, *g, "-o", "json", "members", "remove", "n4")
    assert json.loads(out) == {"result": {"index": 42}}


@pytest.mark.parametrize("addr", ["h", "h:", ":7001", "h:x", "h:70000"])
def test_members_add_needs_host_and_port(pki: Pki, capsys: Cap, addr: str) -> None:
    code, _, errs = run(capsys, "--endpoints", "127.0.0.1:9", "--ca", str(pki.ca_file),
                        "members", "add", "n4", "--peer-addr", addr)
    assert code == EXIT_USAGE, errs
    assert "--peer-addr" in errs
