"""The client's per-endpoint circuit breaker: its states under an injected clock, and both
shells beside an endpoint that blackholes traffic (accepts TCP, never answers)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import anyio
import pytest

from loom.client import BreakerPolicy, BreakerState, Client, RetryPolicy, open_client
from loom.client import protocol as p
from tests.client.conftest import on_both_backends
from tests.client.fakeserver import FakeServer, Frame, Pki, kv_handler

Serve = Callable[..., FakeServer]
FAST = RetryPolicy(attempts=5, base=0.001, cap=0.002)
A, B = ("a", 1), ("b", 1)


# -- the sans-IO core ----------------------------------------------------------------------------
def test_opens_after_repeated_failures_then_one_trial_closes_it() -> None:
    r = p.Router([A, B], BreakerPolicy(failures=2, open_s=1.0, max_open_s=3.0))
    r.dialing(A, 0.0)
    r.dial_failed(A, 0.0)
    assert r.candidates(0.0) == [A, B]  # one failure: still closed
    r.dial_failed(A, 0.1)
    assert r.candidates(0.5) == [B]  # open: left out while the window lasts
    st = r.statistics(0.5)
    assert st.endpoints[0].state is BreakerState.OPEN and st.endpoints[0].opened == 1
    assert st.endpoints[0].retry_in_s == pytest.approx(0.6) and st.skipped == 1
    assert st.endpoints[1].state is BreakerState.CLOSED
    # The window passed: offered again, after every closed endpoint.
    assert r.candidates(1.1) == [B, A]
    r.dialing(A, 1.1)
    assert r.statistics(1.1).endpoints[0].state is BreakerState.HALF_OPEN
    assert r.candidates(1.2) == [B]  # one trial at a time
    r.dial_failed(A, 1.2)  # the trial failed: open again, for twice as long
    assert r.candidates(3.1) == [B] and r.candidates(3.2) == [B, A]
    r.dialing(A, 3.2)
    r.dial_failed(A, 3.2)
    assert r.statistics(3.2).endpoints[0].retry_in_s == pytest.approx(3.0)  # max_open_s
    r.dialing(A, 6.3)
    r.connected(A)  # the trial succeeded: closed, and the window back to open_s
    assert r.candidates(6.3) == [A, B]
    st = r.statistics(6.3).endpoints[0]
    assert st.state is BreakerState.CLOSED and st.consecutive_failures == 0 and st.opened == 3


def test_a_success_resets_the_count_and_timeouts_count() -> None:
    r = p.Router([A, B], BreakerPolicy(failures=2))
    r.dial_failed(A, 0.0)
    r.connected(A)
    r.dial_failed(A, 0.0)
    assert r.candidates(0.0) == [A, B]
    r.timed_out(A, 0.0)  # a request with no answer before the deadline counts too
    assert r.candidates(0.0) == [B]


def test_an_abandoned_trial_is_due_again_and_all_open_is_a_retryable_failure() -> None:
    r = p.Router([A], BreakerPolicy(failures=1, open_s=1.0))
    r.dial_failed(A, 0.0)
    assert r.candidates(0.5) == []
    e = p.connect_failure([])
    assert not e.permanent and "circuit breaker is open" in str(e)
    r.dialing(A, 1.0)
    r.abandoned(A)  # the caller's deadline, not the endpoint: no new window
    assert r.candidates(1.0) == [A]


def test_the_named_leader_is_tried_first_once_its_window_passed() -> None:
    """A follower answering NOT_LEADER names a leader whose breaker is open: when its window
    passes, its trial comes before the healthy follower, which has just said it cannot serve
    (placed last, the trial would never come while the follower accepts connections)."""
    r = p.Router([A, B], BreakerPolicy(failures=1, open_s=1.0))
    r.dialing(A, 0.0)
    r.dial_failed(A, 0.0)  # the leader A went away
    assert r.candidates(0.5) == [B]
    assert r.refused(B, p.NotLeader("not the leader", leader_addr="a:1"))
    assert r.candidates(0.5) == [B]  # A's window still lasts
    assert r.candidates(1.0) == [A, B]  # then A's trial first
    r.dialing(A, 1.0)
    r.connected(A)
    assert r.candidates(1.0) == [A, B]


def test_policy_validated() -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(failures=0)
    with pytest.raises(ValueError):
        BreakerPolicy(open_s=5.0, max_open_s=1.0)


# -- both shells beside a blackhole ---------------------------------------------------------------
class Blackhole:
    """Accepts connections and never sends a byte (a hung host, a dead proxy)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()
        for c in self.accepted:
            c.close()


@pytest.fixture
def blackhole() -> Iterator[Blackhole]:
    b = Blackhole()
    yield b
    b.close()


def dropping(server: FakeServer, req: Frame) -> list[Frame] | None:
    """kv_handler, except that MAP_GET of key "drop" drops the connection unanswered (once)."""
    b = req.get("b", {})
    if req["op"] == 0x0102 and b.get("key") == "drop" and not server.state.get("dropped"):
        server.state["dropped"] = True
        return None
    return kv_handler(server, req)


CONNECT = 1.0
POLICY = BreakerPolicy(failures=1, open_s=30.0)


@on_both_backends
async def test_async_client_skips_an_open_blackholed_endpoint(
        pki: Pki, serve: Serve, blackhole: Blackhole) -> None:
    healthy = serve(dropping)
    t0 = time.monotonic()
    async with open_client([blackhole.addr, healthy.addr], ca=pki.ca_file, retry=FAST,
                           connect_timeout=CONNECT, timeout=10.0, breaker=POLICY) as c:
        await c.map_put("m", "k", "v")  # waits once on the blackhole, then the healthy node
        assert time.monotonic() - t0 >= CONNECT * 0.9
        st = c.statistics()
        assert st.endpoints[0].state is BreakerState.OPEN, st
        assert st.endpoints[1].state is BreakerState.CLOSED
        # The healthy connection drops; the redial skips the open endpoint entirely.
        t0 = time.monotonic()
        assert await c.map_get("m", "drop") is None
        assert await c.map_get("m", "k") == b"v"
        assert time.monotonic() - t0 < CONNECT / 2
        st = c.statistics()
        assert st.skipped >= 1 and st.endpoints[0].opened == 1
        assert len(healthy.hellos) == 2
        with anyio.fail_after(5):
            await c.map_get("m", "k")


def test_sync_client_skips_an_open_blackholed_endpoint(
        pki: Pki, serve: Serve, blackhole: Blackhole) -> None:
    healthy = serve(dropping)
    with Client([blackhole.addr, healthy.addr], ca=pki.ca_file, retry=FAST,
                connect_timeout=CONNECT, timeout=10.0, breaker=POLICY) as c:
        t0 = time.monotonic()
        c.map_put("m", "k", "v")
        assert time.monotonic() - t0 >= CONNECT * 0.9
        st = c.statistics()
        assert st.endpoints[0].state is BreakerState.OPEN, st
        t0 = time.monotonic()
        assert c.map_get("m", "drop") is None
        assert c.map_get("m", "k") == b"v"
        assert time.monotonic() - t0 < CONNECT / 2
        st = c.statistics()
        assert st.skipped >= 1 and st.endpoints[0].state is BreakerState.OPEN
        assert st.endpoints[1].state is BreakerState.CLOSED and len(healthy.hellos) == 2
