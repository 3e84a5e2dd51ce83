"""Leader following, retries and exactly-once writes against real TLS servers (fakeserver).

Each scripted server plays one node of a cluster: a follower answering NOT_LEADER, a node in an
election answering UNAVAILABLE, an overloaded one answering BUSY, or one that drops the
connection after a write arrived.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from loom.client import Client, IndeterminateError, RetryPolicy, open_client
from loom.client import protocol as p
from loom.client.errors import ConfigError
from loom.wire.errors import Busy, Status
from tests.client.conftest import on_both_backends
from tests.client.fakeserver import FakeServer, Frame, Pki, err, ok

Serve = Callable[..., FakeServer]
INCREMENT = 0x0603


@dataclass(slots=True)
class Recording(RetryPolicy):
    """Fast backoff that records every delay it chose."""

    delays: list[float] = field(default_factory=list)

    def delay_for(self, e: BaseException | None, n: int) -> float:
        d = RetryPolicy.delay_for(self, e, n)
        self.delays.append(d)
        return d


def fast(attempts: int = 5) -> Recording:
    return Recording(attempts=attempts, base=0.001, cap=0.002, rng=random.Random(7))


def sync_client(pki: Pki, *servers: FakeServer, **kw: Any) -> Client:
    kw.setdefault("retry", fast())
    return Client([s.addr for s in servers], ca=pki.ca_file, **kw)


def first_then(first: Callable[[Frame], list[Frame] | None]
               ) -> Callable[[FakeServer, Frame], list[Frame] | None]:
    """A handler answering the first request with `first`, every later one OK(n)."""
    def handler(server: FakeServer, req: Frame) -> list[Frame] | None:
        n = server.state["n"] = server.state.get("n", 0) + 1
        return first(req) if n == 1 else [ok(req, n)]
    return handler


def always_ok(server: FakeServer, req: Frame) -> list[Frame]:
    return [ok(req, 1)]


def same_write(*servers: FakeServer) -> None:
    """Every attempt of the write carried one seq, under one client id."""
    writes = [r for s in servers for r in s.requests if r["op"] == INCREMENT]
    assert len({r["q"] for r in writes}) == 1, writes
    ids = {h["b"]["client_id"] for s in servers for h in s.hellos}
    assert len(ids) == 1, ids


# -- NOT_LEADER -------------------------------------------------------------------------------
def test_sync_follows_the_leader_named_by_a_follower(pki: Pki, serve: Serve) -> None:
    leader = serve()
    f1 = serve(lambda s, req: [err(req, Status.NOT_LEADER, "follower", leader="n3",
                                   leader_addr=leader.addr)])
    f2 = serve(lambda s, req: [err(req, Status.NOT_LEADER, "follower", leader="n3",
                                   leader_addr=leader.addr)])
    with sync_client(pki, f1, f2, leader) as c:
        c.map_put("m", "k", "v")
        assert c.address == leader.addr
        assert c.map_get("m", "k") == b"v"
    assert len(f1.requests) == 1 and not f2.requests  # the hint was followed straight away
    assert f1.requests[0]["q"] == leader.requests[0]["q"]
    assert {h["b"]["client_id"] for h in f1.hellos + leader.hellos} == {c.client_id}


def test_sync_not_leader_then_ok_on_the_same_node(pki: Pki, serve: Serve) -> None:
    s = serve(first_then(lambda req: [err(req, Status.NOT_LEADER, "election", leader=None,
                                          leader_addr=None)]))
    with sync_client(pki, s) as c:
        assert c.counter_increment("c") == 2
    same_write(s)
    assert len(s.hellos) == 2  # the refusing connection was left for a fresh one


@on_both_backends
async def test_async_not_leader_then_ok_moves_to_the_next_endpoint(
        pki: Pki, serve: Serve) -> None:
    refusing = serve(lambda s, req: [err(req, Status.NOT_LEADER, "election")])
    good = serve(always_ok)
    async with open_client([refusing.addr, good.addr], ca=pki.ca_file, retry=fast()) as c:
        assert await c.counter_increment("c") == 1
        for _ in range(3):
            await c.ping()
    assert len(refusing.requests) == 1
    assert len(good.requests) == 4
    same_write(refusing, good)


@on_both_backends
async def test_async_follows_leader_hint_with_many_calls_in_flight(
        pki: Pki, serve: Serve) -> None:
    leader = serve()
    follower = serve(lambda s, req: [err(req, Status.NOT_LEADER, "follower", leader="n2",
                                         leader_addr=leader.addr)])
    async with (open_client([follower.addr], ca=pki.ca_file, retry=fast()) as c,
                anyio.create_task_group() as n):
        for i in range(20):
            n.start_soon(c.map_put, "m", f"k{i}", b"v")
    follower_seqs = sorted(r["q"] for r in follower.requests)
    leader_seqs = sorted(r["q"] for r in leader.requests)
    assert leader_seqs == list(range(1, 21))
    assert set(follower_seqs) <= set(leader_seqs)
    assert len(leader.hellos) == 1  # one connection to the leader, however many were refused


# -- UNAVAILABLE and BUSY ---------------------------------------------------------------------
def test_sync_unavailable_then_ok(pki: Pki, serve: Serve) -> None:
    s = serve(first_then(lambda req: [err(req, Status.UNAVAILABLE, "election in progress")]))
    with sync_client(pki, s) as c:
        assert c.counter_increment("c") == 2
    same_write(s)


@on_both_backends
async def test_async_unavailable_then_ok(pki: Pki, serve: Serve) -> None:
    s = serve(first_then(lambda req: [err(req, Status.UNAVAILABLE, "election in progress")]))
    async with open_client([s.addr], ca=pki.ca_file, retry=fast()) as c:
        assert await c.counter_increment("c") == 2
    same_write(s)


def test_sync_busy_honours_retry_after(pki: Pki, serve: Serve) -> None:
    s = serve(first_then(lambda req: [err(req, Status.BUSY, "shed", retry_after_ms=40)]))
    policy = fast()
    with sync_client(pki, s, retry=policy) as c:
        assert c.counter_increment("c") == 2
    assert policy.delays and policy.delays[0] >= 0.04
    assert len(s.hellos) == 1  # BUSY keeps the connection
    same_write(s)


@on_both_backends
async def test_async_busy_honours_retry_after(pki: Pki, serve: Serve) -> None:
    s = serve(first_then(lambda req: [err(req, Status.BUSY, "shed", retry_after_ms=40)]))
    policy = fast()
    async with open_client([s.addr], ca=pki.ca_file, retry=policy) as c:
        assert await c.counter_increment("c") == 2
    assert policy.delays and policy.delays[0] >= 0.04
    same_write(s)


def test_sync_busy_past_the_deadline_reports_busy(pki: Pki, serve: Serve) -> None:
    s = serve(lambda srv, req: [err(req, Status.BUSY, "shed", retry_after_ms=60_000)])
    with sync_client(pki, s, timeout=2.0) as c, pytest.raises(Busy):
        c.counter_increment("c")
    assert len(s.requests) == 1  # no retry could have been answered in time


@on_both_backends
async def test_async_busy_past_the_deadline_reports_busy(pki: Pki, serve: Serve) -> None:
    s = serve(lambda srv, req: [err(req, Status.BUSY, "shed", retry_after_ms=60_000)])
    async with open_client([s.addr], ca=pki.ca_file, retry=fast(), timeout=2.0) as c:
        with pytest.raises(Busy):
            await c.counter_increment("c")
    assert len(s.requests) == 1


# -- connections lost after a write was sent ----------------------------------------------------
def test_sync_lost_write_is_resent_to_another_node_with_the_same_seq(
        pki: Pki, serve: Serve) -> None:
    dropping = serve(lambda srv, req: None)
    good = serve(always_ok)
    with sync_client(pki, dropping, good) as c:
        assert c.counter_increment("c") == 1
    assert len(dropping.requests) == 1 and len(good.requests) == 1
    same_write(dropping, good)


@on_both_backends
async def test_async_lost_write_is_resent_to_another_node_with_the_same_seq(
        pki: Pki, serve: Serve) -> None:
    dropping = serve(lambda srv, req: None)
    good = serve(always_ok)
    async with open_client([dropping.addr, good.addr], ca=pki.ca_file, retry=fast()) as c:
        assert await c.counter_increment("c") == 1
    assert len(dropping.requests) == 1 and len(good.requests) == 1
    same_write(dropping, good)


def non_map_first(srv: FakeServer, req: Frame) -> list[Frame]:
    """The first write is answered with a CBOR list: a protocol violation, not an answer."""
    n = srv.state["n"] = srv.state.get("n", 0) + 1
    return [[1, 2]] if n == 1 else [ok(req, 1)]  # type: ignore[list-item]


def test_sync_non_map_answer_to_a_write_is_resent(pki: Pki, serve: Serve) -> None:
    # One policy in both clients: the broken stream ends like a lost connection, and the write
    # is sent again with its seq (it used to raise INTERNAL here and be retried by AsyncClient).
    s = serve(non_map_first)
    with sync_client(pki, s) as c:
        assert c.counter_increment("c") == 1
    assert len(s.hellos) == 2
    same_write(s)


@on_both_backends
async def test_async_non_map_answer_to_a_write_is_resent(pki: Pki, serve: Serve) -> None:
    s = serve(non_map_first)
    async with open_client([s.addr], ca=pki.ca_file, retry=fast()) as c:
        assert await c.counter_increment("c") == 1
    assert len(s.hellos) == 2
    same_write(s)


def test_sync_lost_everywhere_is_indeterminate(pki: Pki, serve: Serve) -> None:
    a, b = serve(lambda srv, req: None), serve(lambda srv, req: None)
    with sync_client(pki, a, b, retry=fast(3)) as c, \
            pytest.raises(IndeterminateError, match="may or may not"):
        c.counter_increment("c")
    assert len(a.requests) + len(b.requests) == 3
    same_write(a, b)


@on_both_backends
async def test_async_lost_everywhere_is_indeterminate(pki: Pki, serve: Serve) -> None:
    a, b = serve(lambda srv, req: None), serve(lambda srv, req: None)
    async with open_client([a.addr, b.addr], ca=pki.ca_file, retry=fast(3)) as c:
        with pytest.raises(IndeterminateError, match="may or may not"):
            await c.counter_increment("c")
    assert len(a.requests) + len(b.requests) == 3
    same_write(a, b)


def test_sync_lost_write_then_refused_stays_indeterminate(pki: Pki, serve: Serve) -> None:
    # Lost once (it may have been applied), then refused until retries run out.
    def lost_then_unavailable(srv: FakeServer, req: Frame) -> list[Frame] | None:
        n = srv.state["n"] = srv.state.get("n", 0) + 1
        return None if n == 1 else [err(req, Status.UNAVAILABLE, "election")]

    s = serve(lost_then_unavailable)
    with sync_client(pki, s, retry=fast(3)) as c, pytest.raises(IndeterminateError):
        c.counter_increment("c")
    same_write(s)


def test_sync_lost_read_is_not_indeterminate(pki: Pki, serve: Serve) -> None:
    s = serve(lambda srv, req: None)
    with sync_client(pki, s, retry=fast(2)) as c, pytest.raises(Exception) as ei:
        c.map_get("m", "k")
    assert not isinstance(ei.value, IndeterminateError)


# -- the write window ---------------------------------------------------------------------------
def test_write_window_bounds_the_span_of_outstanding_seqs() -> None:
    w = p.WriteWindow(4)
    assert [w.issue() for _ in range(4)] == [1, 2, 3, 4]
    assert not w.can_issue()
    for s in (2, 3, 4):
        w.finish(s)
    assert not w.can_issue()  # seq 1 still unsettled: 5 would put it 4 behind
    w.finish(1)
    assert w.can_issue() and w.issue() == 5
    assert w.outstanding == 1 and w.oldest == 5


def test_write_window_must_stay_inside_the_server_dedup_window() -> None:
    assert p.MAX_WRITE_WINDOW < p.SERVER_DEDUP_WINDOW == 64
    p.WriteWindow(p.MAX_WRITE_WINDOW)
    for bad in (0, 64, 1000):
        with pytest.raises(ConfigError):
            p.WriteWindow(bad)


def test_retry_after_is_honoured_beyond_the_backoff_cap() -> None:
    pol = RetryPolicy(base=0.01, cap=0.1, rng=random.Random(3))
    assert pol.delay_for(Busy("x", retry_after_ms=1500), 0) >= 1.5
    assert p.retry_after(Busy("x", retry_after_ms=10**9)) == p.MAX_RETRY_AFTER
    assert p.retry_after(Busy("x")) == 0.0


@on_both_backends
async def test_async_writes_in_flight_stay_inside_the_window(pki: Pki, serve: Serve) -> None:
    silent = serve(lambda srv, req: [])  # never answers
    async with open_client([silent.addr], ca=pki.ca_file, retry=fast(), timeout=30,
                           max_writes_in_flight=8) as c:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as n:
                for i in range(100):
                    n.start_soon(c.map_put, "m", f"k{i}", b"v")
                while len(silent.requests) < 8:
                    await anyio.sleep(0.01)
                await anyio.sleep(0.1)  # room for any write beyond the window to show up
                assert c.writes_in_flight == 8
                assert len(silent.requests) == 8
                n.cancel_scope.cancel()
        assert c.writes_in_flight == 0  # cancelled calls give their seqs back
    assert sorted(r["q"] for r in silent.requests) == list(range(1, 9))


def test_sync_pipeline_sends_writes_in_window_sized_chunks(pki: Pki, serve: Serve) -> None:
    silent = serve(lambda srv, req: [])
    with sync_client(pki, silent, max_writes_in_flight=8, timeout=0.5) as c, \
            pytest.raises(IndeterminateError):
        c.pipeline([("MAP_PUT", {"name": "m", "key": f"k{i}", "value": b"v"})
                    for i in range(20)])
    assert 0 < len(silent.requests) <= 8

    good = serve()
    with sync_client(pki, good, max_writes_in_flight=8) as c:
        calls: list[tuple[str | int, dict[str, Any]]] = [
            ("MAP_PUT", {"name": "m", "key": f"k{i}", "value": b"v"}) for i in range(20)]
        calls.append(("MAP_GET", {"name": "m", "key": "k19"}))
        out = c.pipeline(calls)
    assert out[:20] == [None] * 20 and out[20] == b"v"
    assert [r["q"] for r in good.requests if "q" in r] == list(range(1, 21))


def test_sync_pipeline_resends_writes_lost_with_the_connection(pki: Pki, serve: Serve) -> None:
    def drop_once(srv: FakeServer, req: Frame) -> list[Frame] | None:
        if not srv.state.get("dropped"):
            srv.state["dropped"] = True
            return None
        return [ok(req, req["q"])]

    s = serve(drop_once)
    with sync_client(pki, s) as c:
        out = c.pipeline([("COUNTER_INCREMENT", {"name": f"c{i}"}) for i in range(3)])
    assert out == [1, 2, 3]
