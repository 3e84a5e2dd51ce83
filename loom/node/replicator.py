"""The seam between the request path and the log: `submit` (a callback) or `propose`/`read`.

The dispatcher only ever calls this interface; `loom/node/raftlog.py` implements it with the
Raft driver (a single node is a cluster of one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from loom.state.command import Command, Outcome
from loom.state.machine import StateMachine
from loom.wire.errors import LoomError

StructureId = tuple[str, str]


# Called exactly once per submitted command: (outcome, None), or (None, error) when it was
# refused, timed out (outcome unknown for a write) or the node stopped first.
OnDone = Callable[[Outcome | None, LoomError | None], None]


class Replicator(Protocol):
    def submit(self, cmd: Command, *, read: bool, on_done: OnDone,
               stale: bool = False) -> None: ...
    async def propose(self, cmd: Command) -> Outcome: ...
    async def read(self, cmd: Command, *, stale: bool = False) -> Outcome: ...
    def state(self) -> StateMachine: ...
    def changed_event(self, structure: StructureId) -> trio.Event: ...
    def statistics(self) -> dict[str, Any]: ...
    def cluster_status(self) -> dict[str, Any]: ...
    async def admin(self, what: str, **kw: Any) -> Any: ...


@dataclass(frozen=True, slots=True)
class Applied:
    index: int
    cmd: Command
    outcome: Outcome
