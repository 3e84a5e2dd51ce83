"""The seam between the request path and the log: `propose` for writes, `read` for reads.

The dispatcher only ever calls this interface; `loom/node/raftlog.py` implements it with the
Raft driver (a single node is a cluster of one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import trio

from loom.state.command import Command, Outcome
from loom.state.machine import StateMachine

StructureId = tuple[str, str]


class Replicator(Protocol):
    async def propose(self, cmd: Command) -> Outcome: ...
    async def read(self, cmd: Command) -> Outcome: ...
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
