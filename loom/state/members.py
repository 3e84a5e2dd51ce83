"""The peer address of every member, replicated through the log like any other state.

A membership change (ADD_LEARNER, ...) names a node; where to reach it travels next to it as a
MEMBER_ADDRESS command, proposed by the leader right after the change was accepted and applied
by every replica in log order. The addresses are part of the state machine's snapshot, so a
node that catches up from a snapshot learns them with the rest of the state, and a restart
recovers them from its own.

MEMBER_ADDRESS is not in the client catalog: no client can propose it; only the node's
membership administration does (`member_address`). The configured `peers` of a founding
node are its starting point; a replicated address for the same node wins over them.
"""

from __future__ import annotations

from typing import Any

from loom.state.base import Core
from loom.state.command import Command

MEMBER_ADDRESS = "MEMBER_ADDRESS"


def member_address(node: str, peer_addr: str) -> Command:
    """The command that records `node`'s peer address on every replica."""
    return Command(MEMBER_ADDRESS, {"node": node, "peer_addr": peer_addr}, 0)


class MemberAddresses:
    """node id -> peer address ("host:port"), in the order the log first named them."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.addrs: dict[str, str] = {}

    def op_MEMBER_ADDRESS(self, b: dict[str, Any]) -> None:
        node, addr = b["node"], b["peer_addr"]
        if not isinstance(node, str) or not isinstance(addr, str):
            return  # replicated garbage changes nothing, identically everywhere
        addrs = self.addrs
        old = addrs.get(node)
        addrs[node] = addr

        def undo() -> None:
            if old is None:
                del addrs[node]
            else:
                addrs[node] = old

        self.core.record(undo)

    def dump(self) -> Any:
        return dict(self.addrs)

    def load(self, data: Any) -> None:
        self.addrs = {str(k): str(v) for k, v in data.items()}
