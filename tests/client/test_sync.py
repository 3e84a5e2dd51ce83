"""The blocking client against a real TLS 1.3 server (tests/client/fakeserver.py)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest

from loom.client import Client, ConnectError, IndeterminateError, RetryPolicy
from loom.client.errors import CLIENT_CERT_REQUIRED, ConfigError
from loom.wire.errors import Busy, Forbidden, NotLeader, Status
from tests.client.fakeserver import FakeServer, Frame, Pki, err, ok

Serve = Callable[..., FakeServer]
FAST = RetryPolicy(attempts=5, base=0.001, cap=0.002)


def client(pki: Pki, *servers: FakeServer, **kw: Any) -> Client:
    kw.setdefault("retry", FAST)
    return Client([s.addr for s in servers], ca=pki.ca_file, **kw)


def test_put_get_delete_roundtrip(pki: Pki, serve: Serve) -> None:
    s = serve()
    with client(pki, s) as c:
        assert c.map_put("m", "k", "v") is None
        assert c.map_get("m", "k") == b"v"
        assert c.map_delete("m", "k") is True
        assert c.hello is not None
        assert c.hello.node == "n1"
    assert s.hellos[0]["b"]["client_name"] == "loom-py"
    writes = [r for r in s.requests if r["op"] in (0x0101, 0x0103)]
    assert [r["q"] for r in writes] == [1, 2]
    assert all("q" not in r for r in s.requests if r["op"] == 0x0102)


def test_server_errors_raise_their_class(pki: Pki, serve: Serve) -> None:
    with client(pki, serve()) as c, pytest.raises(Forbidden, match="may not ACL_GET"):
        c.call("ACL_GET")


def test_missing_client_certificate_is_explained(pki: Pki, serve: Serve) -> None:
    s = serve(require_client_cert=True)
    with pytest.raises(ConnectError, match="requires a client certificate") as ei:
        Client.connect([s.addr], ca=pki.ca_file, retry=FAST)
    assert CLIENT_CERT_REQUIRED in str(ei.value)
    with Client.connect([s.addr], ca=pki.ca_file, cert=pki.client_cert,
                        key=pki.client_key) as c:
        assert c.ping() == {"pong": True, "node": "n1"}


def test_connect_refused_and_missing_files() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(ConfigError, match="not found"):
        Client([f"127.0.0.1:{port}"], ca="/nonexistent/ca.pem")


def test_connect_refused(pki: Pki) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(ConnectError, match="could not connect"):
        Client.connect([f"127.0.0.1:{port}"], ca=pki.ca_file, retry=FAST)


def test_not_leader_is_followed_with_the_same_seq(pki: Pki, serve: Serve) -> None:
    leader = serve()

    def follower(server: FakeServer, req: Frame) -> list[Frame]:
        return [err(req, Status.NOT_LEADER, "not the leader", leader="n2",
                    leader_addr=leader.addr)]

    f = serve(follower)
    with client(pki, f) as c:
        c.map_put("m", "k", "v")
        assert c.address == leader.addr
        assert c.map_get("m", "k") == b"v"
    assert f.requests[0]["q"] == leader.requests[0]["q"] == 1


def test_not_leader_without_hint_tries_the_next_endpoint(pki: Pki, serve: Serve) -> None:
    f = serve(lambda server, req: [err(req, Status.NOT_LEADER, "election in progress")])
    good = serve()
    with client(pki, f, good) as c:
        c.map_put("m", "k", "v")
    assert len(good.requests) == 1


def test_busy_is_retried_then_reported(pki: Pki, serve: Serve) -> None:
    def busy_once(server: FakeServer, req: Frame) -> list[Frame]:
        n = server.state["n"] = server.state.get("n", 0) + 1
        return [err(req, Status.BUSY, "shed")] if n == 1 else [ok(req, 5)]

    s = serve(busy_once)
    with client(pki, s) as c:
        assert c.counter_increment("c") == 5
    assert [r["q"] for r in s.requests] == [1, 1]

    always = serve(lambda server, req: [err(req, Status.BUSY, "shed")])
    with client(pki, always) as c, pytest.raises(Busy):
        c.counter_increment("c")
    assert len(always.requests) == FAST.attempts


def test_lost_write_is_resent_with_the_same_seq(pki: Pki, serve: Serve) -> None:
    def drop_first(server: FakeServer, req: Frame) -> list[Frame] | None:
        n = server.state["n"] = server.state.get("n", 0) + 1
        return None if n == 1 else [ok(req, 1)]

    s = serve(drop_first)
    with client(pki, s) as c:
        assert c.counter_increment("c") == 1
    assert [r["q"] for r in s.requests] == [1, 1]
    assert len(s.hellos) == 2


def test_lost_write_is_indeterminate(pki: Pki, serve: Serve) -> None:
    s = serve(lambda server, req: None)
    with (client(pki, s, resend_unknown_writes=False) as c,
          pytest.raises(IndeterminateError, match="may or may not have been applied")):
        c.counter_increment("c")
    with client(pki, s) as c, pytest.raises(IndeterminateError):
        c.counter_increment("c")


def test_unanswered_write_times_out_as_indeterminate(pki: Pki, serve: Serve) -> None:
    s = serve(lambda server, req: [])
    with client(pki, s) as c:
        with pytest.raises(IndeterminateError):
            c.call("MAP_PUT", name="m", key="k", value=b"v", timeout=0.2)
        with pytest.raises(Exception, match="no answer") as ei:
            c.call("MAP_GET", name="m", key="k", timeout=0.2)
        assert not isinstance(ei.value, IndeterminateError)


def test_pipeline_matches_out_of_order_answers(pki: Pki, serve: Serve) -> None:
    def reverse_five(server: FakeServer, req: Frame) -> list[Frame]:
        held: list[Frame] = server.state.setdefault("held", [])
        held.append(req)
        if len(held) < 5:
            return []
        server.state["held"] = []
        return [ok(r, r["b"]["key"]) for r in reversed(held)]

    s = serve(reverse_five)
    with client(pki, s) as c:
        calls = [("MAP_GET", {"name": "m", "key": f"k{i}"}) for i in range(5)]
        assert c.pipeline(calls) == [f"k{i}" for i in range(5)]


def test_pipeline_returns_errors_in_place_and_retries_not_leader(
        pki: Pki, serve: Serve) -> None:
    def mixed(server: FakeServer, req: Frame) -> list[Frame]:
        key = req["b"]["key"]
        if key == "missing":
            return [err(req, Status.NOT_FOUND, "no such key")]
        if key == "moved" and not server.state.get("moved"):
            server.state["moved"] = True
            return [err(req, Status.NOT_LEADER, "not leader")]
        return [ok(req, key)]

    s = serve(mixed)
    with client(pki, s) as c:
        out = c.pipeline([("MAP_GET", {"name": "m", "key": k})
                          for k in ("a", "missing", "moved")])
    assert out[0] == "a"
    assert out[2] == "moved"
    assert type(out[1]).__name__ == "NotFound"
    assert not isinstance(out[1], NotLeader)


def test_pipeline_that_never_reaches_a_server_raises(pki: Pki) -> None:
    # It used to return a None "result" for every call when no endpoint ever answered.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Client([f"127.0.0.1:{port}"], ca=pki.ca_file, retry=FAST) as c, \
            pytest.raises(ConnectError, match="could not connect"):
        c.pipeline([("MAP_GET", {"name": "m", "key": "k"})])


def test_pipeline_decides_like_call(pki: Pki, serve: Serve) -> None:
    # One policy: a write the server answered TIMEOUT for is indeterminate, in a pipeline too;
    # a read's TIMEOUT is the server's error; a definite refusal is the item's result at once.
    def answers(server: FakeServer, req: Frame) -> list[Frame]:
        key = req["b"]["key"]
        if key == "slow":
            return [err(req, Status.TIMEOUT, "not applied in time")]
        if key == "denied":
            return [err(req, Status.FORBIDDEN, "no")]
        return [ok(req, None)]

    s = serve(answers)
    with client(pki, s) as c:
        out = c.pipeline([("MAP_PUT", {"name": "m", "key": "slow", "value": b"v"}),
                          ("MAP_GET", {"name": "m", "key": "slow"}),
                          ("MAP_PUT", {"name": "m", "key": "denied", "value": b"v"}),
                          ("MAP_PUT", {"name": "m", "key": "fine", "value": b"v"})])
    assert isinstance(out[0], IndeterminateError)
    assert type(out[1]).__name__ == "Timeout"
    assert isinstance(out[2], Forbidden)
    assert out[3] is None
    assert len(s.requests) == 4  # nothing was retried
