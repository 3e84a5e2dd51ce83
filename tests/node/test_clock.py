"""SECURITY-CATALOGUE I8: wall-clock jumps on the leader must not move time in the log."""

from __future__ import annotations

import time

import pytest

from loom.node.clock import ProposalClock
from tests.conftest import PKI, NodeFactory, connect


class Fake:
    def __init__(self) -> None:
        self.wall, self.mono, self.log = 1_000_000, 50.0, 0

    def clock(self) -> ProposalClock:
        return ProposalClock(lambda: self.log, lambda: self.wall, lambda: self.mono)


def test_wall_clock_steps_while_leading_change_nothing() -> None:
    f = Fake()
    c = f.clock()
    f.mono += 2.0
    f.wall += 600_000  # +10 min step
    assert c.now_ms() == 1_002_000
    f.wall -= 1_200_000  # -20 min step
    f.mono += 1.0
    assert c.now_ms() == 1_003_000


def test_anchor_never_goes_below_the_log_clock() -> None:
    f = Fake()
    f.log = 5_000_000  # the log already carries later times (an earlier leader's clock)
    c = f.clock()
    assert c.now_ms() == 5_000_000
    f.wall, f.log = 9_000_000, 6_000_000
    c.anchor()  # becoming leader again takes a fresh reading
    assert c.now_ms() == 9_000_000


@pytest.mark.parametrize("jump_ms", [600_000, -600_000, 100, -100])
async def test_ttl_and_sessions_survive_a_wall_clock_jump_on_the_leader(
        jump_ms: int, start_node: NodeFactory, pki: PKI, monkeypatch: pytest.MonkeyPatch) -> None:
    node = await start_node()
    c = await connect(node, pki)
    assert (await c.request("MAP_PUT", name="m", key="k", value=b"v", ttl_ms=60_000))["s"] == 0
    sid = (await c.request("SESSION_OPEN", ttl_ms=60_000))["r"]["session_id"]
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() + jump_ms * 1_000_000)
    # Writes keep flowing (stamped by the proposal clock), and nothing expired early.
    assert (await c.request("MAP_PUT", name="m", key="other", value=b"v"))["s"] == 0
    assert (await c.request("MAP_GET", name="m", key="k"))["r"] == b"v"
    assert (await c.request("SESSION_HEARTBEAT", session_id=sid))["s"] == 0
    ttl = (await c.request("MAP_GET_TTL", name="m", key="k"))["r"]
    assert 0 < ttl <= 60_000
    await c.aclose()
