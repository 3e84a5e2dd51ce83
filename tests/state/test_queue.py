"""QUEUE: model-based, and exactly-once under interleaved producers/consumers with retries."""

from __future__ import annotations

from collections import deque
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from loom.state import Command
from loom.wire.errors import Status
from tests.state.helpers import Driver, state_part


class QueueModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.d = Driver()
        self.twin: Driver | None = None
        self.model: deque[bytes] = deque()
        self.capacity: int | None = None

    def do(self, op: str, **body: Any) -> Any:
        out = self.d.do(op, name="q", **body)
        if self.twin is not None:
            assert self.twin.do(op, name="q", **body) == out
        return out

    @rule(v=st.binary(max_size=3))
    def push(self, v: bytes) -> None:
        out = self.do("QUEUE_PUSH", value=v)
        if self.capacity is not None and len(self.model) >= self.capacity:
            assert out.status is Status.LIMIT_EXCEEDED
            assert out.message == f"queue q is full (capacity {self.capacity})"
        else:
            self.model.append(v)
            assert out.value == len(self.model)

    @rule()
    def poll(self) -> None:
        out = self.do("QUEUE_POLL")
        assert out.value == (self.model.popleft() if self.model else None)

    @rule()
    def poll_waiting(self) -> None:
        out = self.do("QUEUE_POLL", timeout_ms=100)
        if self.model:
            assert out.value == self.model.popleft()
        else:
            assert out.wait

    @rule(n=st.integers(1, 4))
    def drain(self, n: int) -> None:
        expect = [self.model.popleft() for _ in range(min(n, len(self.model)))]
        assert self.do("QUEUE_DRAIN", max=n).value == expect

    @rule()
    def clear(self) -> None:
        assert self.do("QUEUE_CLEAR").value == len(self.model)
        self.model.clear()

    @rule(cap=st.integers(1, 5))
    def create(self, cap: int) -> None:
        assert self.do("QUEUE_CREATE", capacity=cap).value == {"capacity": cap,
                                                               "size": len(self.model)}
        self.capacity = cap

    @precondition(lambda self: self.twin is None)
    @rule()
    def snapshot_restore(self) -> None:
        self.twin = self.d.restored()

    @invariant()
    def agree(self) -> None:
        assert self.d.read("QUEUE_SIZE", name="q") == len(self.model)
        assert self.d.read("QUEUE_PEEK", name="q") == (self.model[0] if self.model else None)
        if self.twin is not None:
            assert self.twin.sm.snapshot() == self.d.sm.snapshot()


QueueModel.TestCase.settings = settings(max_examples=150, stateful_step_count=50, deadline=None,
                                        suppress_health_check=[HealthCheck.too_slow])
TestQueueModel = QueueModel.TestCase


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_every_item_polled_exactly_once_with_retries(data: st.DataObject) -> None:
    """Producers push distinct items, consumers poll; any command may be delivered again (a
    client retry with the same client_id/seq, possibly much later). Every pushed item must be
    received exactly once and nothing more is pushed than was sent."""
    d = Driver()
    producers = [f"p{i}" for i in range(3)]
    consumers = [f"c{i}" for i in range(2)]
    seqs: dict[str, int] = {}
    sent: list[Command] = []
    pushed: set[bytes] = set()
    received: dict[tuple[str, int], Any] = {}
    for _ in range(data.draw(st.integers(5, 60))):
        kind = data.draw(st.sampled_from(["push", "poll", "retry", "time"]))
        if kind == "time":
            d.now += data.draw(st.integers(0, 10_000))
            continue
        if kind == "retry" and sent:
            c = data.draw(st.sampled_from(sent))
            out = d.apply_cmd(Command(c.op, c.body, d.now, c.client_id, c.seq))
        else:
            client = data.draw(st.sampled_from(producers if kind == "push" else consumers))
            seqs[client] = seqs.get(client, 0) + 1
            if kind == "push":
                item = f"{client}/{seqs[client]}".encode()
                pushed.add(item)
                c = d.cmd("QUEUE_PUSH", client, seqs[client], name="q", value=item)
            else:
                c = d.cmd("QUEUE_POLL", client, seqs[client], name="q")
            sent.append(c)
            out = d.apply_cmd(c)
        assert out.status is Status.OK
        key = (c.client_id, c.seq)
        if key in received:
            assert received[key] == out.value  # a retry gets the original outcome
        received[key] = out.value
    polled = [v for (cid, _), v in received.items() if cid.startswith("c") and v is not None]
    rest = d.ok("QUEUE_DRAIN", name="q", max=1000)
    assert len(polled) == len(set(polled))
    assert sorted(polled + rest) == sorted(pushed)


def test_capacity_refusal_changes_nothing() -> None:
    d = Driver()
    d.ok("QUEUE_CREATE", name="q", capacity=1)
    d.ok("QUEUE_PUSH", name="q", value=b"a")
    before = state_part(d.sm)
    out = d.do("QUEUE_PUSH", name="q", value=b"b")
    assert (out.status, out.message) == (Status.LIMIT_EXCEEDED, "queue q is full (capacity 1)")
    assert state_part(d.sm) == before


def test_waiting_outcome_is_not_deduplicated() -> None:
    d = Driver()
    c = d.cmd("QUEUE_POLL", "cl", 1, name="q", timeout_ms=1000)
    assert d.apply_cmd(c).wait
    d.ok("QUEUE_PUSH", name="q", value=b"x")
    assert d.apply_cmd(c).value == b"x"  # the node re-proposes the same command
    assert d.apply_cmd(c).value == b"x"  # and a later retry gets that outcome
    assert d.read("QUEUE_SIZE", name="q") == 0
