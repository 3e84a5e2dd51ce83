"""The HTTP door on a real 3-process cluster: redirects to the leader's HTTP address, and an
Idempotency-Key that makes a POST apply once across a leader kill (SIGKILL)."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from loom.http import ClientResponse, HTTPClient
from loom.security.tls import client_context
from tests.cluster.conftest import FAST_RAFT
from tests.conftest import PKI
from tests.doorcluster import HttpCluster


async def send(http: HTTPClient, method: str, url: str, key: str) -> ClientResponse:
    with trio.fail_after(10):
        return await http.request(method, url, headers=[("idempotency-key", key)])


async def post_until_answered(c: HttpCluster, http: HTTPClient, path: str, key: str
                              ) -> tuple[ClientResponse, int]:
    """POST with the key to live nodes, following 307s, retrying what has no answer (503, a
    broken connection): safe only because the key makes the POST idempotent. Bounded."""
    redirects = 0
    with trio.fail_after(30):
        for attempt in range(200):
            live = c.live()
            url = c.url(live[attempt % len(live)], path)
            for _ in range(3):
                try:
                    r = await send(http, "POST", url, key)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError,
                        trio.TooSlowError):
                    break
                if r.status == 307:
                    redirects += 1
                    url = r.header_values("location")[0].decode()
                    continue
                if r.status in (503, 504):
                    break
                return r, redirects
            await trio.sleep(0.1)
    raise AssertionError("no answer")


async def test_redirect_to_leader_and_idempotent_post_across_leader_kill(
        hcluster: HttpCluster, pki: PKI) -> None:
    c = hcluster
    leader = await c.wait_leader()
    follower = next(n for n in c.ids if n != leader)
    async with HTTPClient(client_context(pki.ca, *pki.pair("admin"))) as http:
        # Peers learn each other's HTTP address from PEER_HELLO: a follower redirects.
        path = "/v1/counters/hits/increment"
        with trio.fail_after(10):
            while True:
                r = await send(http, "POST", c.url(follower, path), "first")
                if r.status == 307:
                    break
                assert r.status == 503, r.body  # the address is learned shortly after start
                await trio.sleep(0.1)
        assert r.header_values("location") == [c.url(leader, path).encode()]
        r = await send(http, "GET", c.url(follower, "/readyz"), "-")
        assert r.status == 200
        r, _ = await post_until_answered(c, http, path, "first")
        assert r.status == 200 and json.loads(r.body) == {"result": 1}

        # A POST whose leader dies under it: its outcome is unknown to the client.
        async def doomed() -> None:
            try:
                await send(http, "POST", c.url(leader, path), "second")
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError,
                    trio.TooSlowError):
                pass

        async with trio.open_nursery() as n:
            n.start_soon(doomed)
            await trio.sleep(0.02)
            await c.kill(leader)
        new_leader = await c.wait_leader(among=[x for x in c.ids if x != leader])
        assert new_leader != leader
        # Retried with the same key, it applies at most once and answers one outcome.
        second, _ = await post_until_answered(c, http, path, "second")
        assert second.status == 200 and json.loads(second.body) == {"result": 2}
        again, _ = await post_until_answered(c, http, path, "second")
        assert json.loads(again.body) == {"result": 2}
        first, _ = await post_until_answered(c, http, path, "first")  # the first outcome
        assert json.loads(first.body) == {"result": 1}
        r = await send(http, "GET", c.url(new_leader, "/v1/counters/hits"), "-")
        assert json.loads(r.body) == {"result": 2}


async def test_not_leader_is_503_naming_the_leader_when_its_http_address_is_unknown(
        pki: PKI, tmp_path: Path, nursery: trio.Nursery) -> None:
    c = HttpCluster(pki, tmp_path / "cluster", nursery, ("n1", "n2", "n3"), FAST_RAFT, False,
                    without_http=("n3",))
    try:
        await c.start()
        await c.wait_leader()
        admin = c.client()
        with trio.fail_after(30):
            while (await c.wait_leader()) != "n3":
                await admin.call("LEADER_TRANSFER", to="n3")
                await trio.sleep(0.2)
        async with HTTPClient(client_context(pki.ca, *pki.pair("admin"))) as http:
            r = await send(http, "POST", c.url("n1", "/v1/counters/c/increment"), "k")
            assert r.status == 503, r.body
            p = json.loads(r.body)
            assert p["code"] == "NOT_LEADER" and p["leader"] == "n3"
            assert p["leader_http_addr"] is None
            assert p["leader_addr"] == c.nodes["n3"].client_addr  # the binary address
            assert r.header_values("retry-after") == [b"1"]
            # Stale reads are served by the follower itself.
            r = await send(http, "GET", c.url("n1", "/v1/counters/c?stale=true"), "-")
            assert r.status == 200
            # Without a majority no leader is known: not ready, still alive, nothing more said.
            await c.kill("n3")
            await c.kill("n2")
            with trio.fail_after(15):
                while (r := await send(http, "GET", c.url("n1", "/readyz"), "-")).status == 200:
                    await trio.sleep(0.1)
            assert r.status == 503 and json.loads(r.body) == {"ready": False}
            r = await send(http, "GET", c.url("n1", "/healthz"), "-")
            assert r.status == 200 and json.loads(r.body) == {"status": "ok"}
    finally:
        await c.aclose()
        c.dump_logs()
