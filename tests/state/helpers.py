"""A small driver around StateMachine for tests: auto log index, explicit log time."""

from __future__ import annotations

from typing import Any

import cbor2

from loom.state import Command, Outcome, StateLimits, StateMachine
from loom.wire.catalog import BY_NAME, validate_body
from loom.wire.errors import Status

T0 = 1_800_000_000_000


class Driver:
    def __init__(self, limits: StateLimits | None = None, sm: StateMachine | None = None) -> None:
        self.limits = limits or StateLimits()
        self.sm = sm or StateMachine(self.limits)
        self.index = self.sm.applied_index
        self.now = T0

    def cmd(self, op: str, client: str = "", seq: int = 0, principal: str = "",
            **body: Any) -> Command:
        # Bodies go through the catalog's validation, as the node would do before proposing.
        return Command(op, validate_body(BY_NAME[op], body), self.now, client, seq, principal)

    def apply_cmd(self, c: Command) -> Outcome:
        self.index += 1
        return self.sm.apply(c, self.index)

    def do(self, op: str, client: str = "", seq: int = 0, principal: str = "",
           **body: Any) -> Outcome:
        return self.apply_cmd(self.cmd(op, client, seq, principal, **body))

    def ok(self, op: str, **body: Any) -> Any:
        out = self.do(op, **body)
        assert out.status is Status.OK and not out.wait, out
        return out.value

    def read(self, op: str, **body: Any) -> Any:
        out = self.sm.read(self.cmd(op, **body))
        assert out.status is Status.OK, out
        return out.value

    def restored(self) -> Driver:
        d = Driver(self.limits, StateMachine.restore(self.sm.snapshot(), self.limits))
        d.index, d.now = self.index, self.now
        return d


def state_part(sm: StateMachine) -> Any:
    """The snapshot without applied index and clock: what a refused command must not change."""
    return cbor2.loads(sm.snapshot())[3:]
