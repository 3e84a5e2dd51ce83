"""AsyncClient against a real TLS 1.3 server: pipelining, leader following, pushes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from loom.client import ConnectError, IndeterminateError, RetryPolicy, open_client
from loom.wire.errors import LimitExceeded, NotFound, Status
from tests.client.conftest import on_both_backends
from tests.client.fakeserver import FakeServer, Frame, Pki, err, ok

Serve = Callable[..., FakeServer]
FAST = RetryPolicy(attempts=5, base=0.001, cap=0.002)


def opts(pki: Pki, **kw: Any) -> dict[str, Any]:
    return {"ca": pki.ca_file, "retry": FAST, **kw}


@on_both_backends
async def test_concurrent_calls_match_out_of_order_answers(pki: Pki, serve: Serve) -> None:
    def reverse_eight(server: FakeServer, req: Frame) -> list[Frame]:
        held: list[Frame] = server.state.setdefault("held", [])
        held.append(req)
        if len(held) < 8:
            return []
        server.state["held"] = []
        return [ok(r, r["b"]["key"]) for r in reversed(held)]

    s = serve(reverse_eight)
    results: dict[int, Any] = {}
    async with open_client([s.addr], **opts(pki)) as c:
        async def one(i: int) -> None:
            results[i] = await c.map_get("m", f"k{i}")

        async with anyio.create_task_group() as n:
            for i in range(8):
                n.start_soon(one, i)
    assert results == {i: f"k{i}" for i in range(8)}
    assert len(s.hellos) == 1  # one connection carried all of them


@on_both_backends
async def test_errors_and_leader_following(pki: Pki, serve: Serve) -> None:
    leader = serve()
    f = serve(lambda server, req: [err(req, Status.NOT_LEADER, "no", leader_addr=leader.addr)])
    async with open_client([f.addr], **opts(pki)) as c:
        await c.map_put("m", "k", b"v")
        assert await c.map_get("m", "k") == b"v"
        assert c.hello is not None
        with pytest.raises(NotFound):
            await _raise_not_found(c)
    assert f.requests[0]["q"] == leader.requests[0]["q"]


async def _raise_not_found(c: Any) -> None:
    value = await c.map_get("m", "absent")
    if value is None:
        raise NotFound("absent")


@on_both_backends
async def test_missing_client_certificate(pki: Pki, serve: Serve) -> None:
    s = serve(require_client_cert=True)
    with pytest.raises(ConnectError, match="requires a client certificate"):
        async with open_client([s.addr], **opts(pki)):
            pass
    async with open_client([s.addr], **opts(pki, cert=pki.client_cert,
                                            key=pki.client_key)) as c:
        assert (await c.ping())["pong"] is True


@on_both_backends
async def test_lost_write_resent_or_indeterminate(pki: Pki, serve: Serve) -> None:
    def drop_first(server: FakeServer, req: Frame) -> list[Frame] | None:
        n = server.state["n"] = server.state.get("n", 0) + 1
        return None if n == 1 else [ok(req, 1)]

    s = serve(drop_first)
    async with open_client([s.addr], **opts(pki)) as c:
        assert await c.counter_increment("c") == 1
    assert [r["q"] for r in s.requests] == [1, 1]

    dead = serve(lambda server, req: None)
    async with open_client([dead.addr], **opts(pki, resend_unknown_writes=False)) as c:
        with pytest.raises(IndeterminateError, match="may or may not"):
            await c.counter_increment("c")


@on_both_backends
async def test_client_deadline_makes_unanswered_write_indeterminate(
        pki: Pki, serve: Serve) -> None:
    s = serve(lambda server, req: [])
    async with open_client([s.addr], **opts(pki, timeout=0.3)) as c:
        with pytest.raises(IndeterminateError):
            await c.map_put("m", "k", b"v")


@on_both_backends
async def test_subscription_delivers_pushes_in_order(pki: Pki, serve: Serve) -> None:
    def topic(server: FakeServer, req: Frame) -> list[Frame]:
        if req["op"] == 0x0502:
            rid = req["id"]
            pushes = [{"id": rid, "s": 0, "p": {"seq": i, "value": b"m%d" % i}}
                      for i in range(1, 4)]
            gap = {"id": rid, "s": 0, "p": {"gap": {"from": 4, "to": 9}}}
            return [ok(req, {"subscription": rid}), *pushes, gap]
        return [ok(req, True)]

    s = serve(topic)
    got: list[Any] = []
    async with open_client([s.addr], **opts(pki)) as c, c.subscribe("news") as sub:
        async for msg in sub:
            got.append(msg)
            if len(got) == 4:
                break
        assert sub.last_seq == 3
    assert [m.get("seq") for m in got[:3]] == [1, 2, 3]
    assert got[3] == {"gap": {"from": 4, "to": 9}}
    assert s.requests[-1]["op"] == 0x0503  # unsubscribed on exit
    assert s.requests[-1]["b"]["subscription"] == s.requests[0]["id"]


@on_both_backends
async def test_slow_subscriber_overflow_is_reported(pki: Pki, serve: Serve) -> None:
    def flood(server: FakeServer, req: Frame) -> list[Frame]:
        if req["op"] == 0x0502:
            return [ok(req, None)] + [{"id": req["id"], "s": 0, "p": {"seq": i}}
                                      for i in range(1, 6)]
        return [ok(req, True)]

    s = serve(flood)
    async with open_client([s.addr], **opts(pki)) as c, c.subscribe("t", buffer=2) as sub:
        # The reader routes everything already sent; wait until it saw the overflow.
        while not sub.ended:
            await anyio.sleep(0.01)
        with pytest.raises(LimitExceeded, match="from_seq=1"):
            async for _ in sub:
                pass
