"""Cluster administration on the driver task: membership changes, leadership transfer, and the
views of the membership the node serves (CLUSTER_STATUS, the peer links to keep).

Requests arrive typed (`parse_admin` turns the dispatcher's `what, **body` into one, refusing a
bad combination in the caller's task). Rules kept here:
- one membership change in flight at a time, learners first (the core refuses otherwise:
  CONFLICT);
- a re-admitted member comes back as a learner, never straight as a voter;
- an added member's peer address is proposed (MEMBER_ADDRESS, loom/state/members.py) right
  after its change was accepted, never for a refused one, so every replica learns it from the
  log in the same order;
- a transfer without a target goes to the most caught-up other voter;
- a transfer is answered when its outcome is known, never when it merely begins: OK once this
  node (the old leader) hears from the target as leader of a later term, BUSY when the
  transfer window (`election_ticks_min` ticks, the core's) closes with this node still leading,
  CONFLICT when another node took office, TIMEOUT (the waiter's deadline) when no leader is
  heard of in time. A transfer to the node that already leads is answered OK at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from loom.node.waiters import Waiter, Waiters
from loom.raft.confchange import ConfChange, ConfChangeType
from loom.raft.core import RaftCore
from loom.raft.ready import Busy, NotLeader, Role
from loom.state.command import Outcome
from loom.state.members import member_address
from loom.wire import errors as E


@dataclass(frozen=True, slots=True)
class AddMember:
    node: str
    peer_addr: str
    learner: bool = True
    readmit: bool = False  # a removed id, explicitly allowed back (as a learner)


@dataclass(frozen=True, slots=True)
class Promote:
    node: str


@dataclass(frozen=True, slots=True)
class Remove:
    node: str


@dataclass(frozen=True, slots=True)
class Transfer:
    to: str | None = None  # None: the most caught-up other voter


AdminRequest = AddMember | Promote | Remove | Transfer


def parse_admin(what: str, kw: Mapping[str, Any]) -> AdminRequest:
    """The dispatcher's (what, body) as a typed request; BAD_REQUEST for what cannot run."""
    if what == "add":
        req = AddMember(kw["node"], kw["peer_addr"], bool(kw.get("learner", True)),
                        bool(kw.get("readmit", False)))
        if req.readmit and not req.learner:
            raise E.BadRequest("a re-admitted member comes back as a learner; promote it once "
                               "it has caught up")
        return req
    if what == "promote":
        return Promote(kw["node"])
    if what == "remove":
        return Remove(kw["node"])
    if what == "transfer":
        return Transfer(kw.get("to"))
    raise E.BadRequest(f"unknown cluster administration {what!r}")


class Membership:
    def __init__(self, core: RaftCore, node_id: str, waiters: Waiters,
                 not_leader: Callable[[], E.NotLeader]) -> None:
        self.core = core
        self.id = node_id
        self._waiters = waiters
        self._not_leader = not_leader
        self.transfers_started = 0  # leadership transfers this node began as leader
        # Transfers begun here and not yet answered: (target, term it began in, caller).
        # At most one per caller in flight; answered by `settle_transfers`.
        self._transfers: list[tuple[str, int, Waiter]] = []

    def run(self, req: AdminRequest, w: Waiter) -> None:
        """Start `req`; `w` is answered now (refused, transfer started) or when the change
        is applied (through the proposals, like a write)."""
        core = self.core
        if isinstance(req, Transfer):
            to = req.to or self.best_transferee()
            if to is None:
                w.fail(E.Conflict("no other voter to transfer leadership to"))
                return
            if to == self.id and core.role is Role.LEADER:  # already done: say so
                w.resolve(Outcome.ok({"to": to, "leader": to, "term": core.term}))
                return
            r = core.transfer_leadership(to)
            if isinstance(r, NotLeader):
                w.fail(self._not_leader())
            elif isinstance(r, Busy):
                w.fail(E.Conflict(f"cannot transfer leadership: {r.reason}"))
            else:
                self.transfers_started += 1
                self._transfers.append((to, core.term, w))
            return
        if isinstance(req, AddMember):
            kind = (ConfChangeType.READMIT if req.readmit else
                    ConfChangeType.ADD_LEARNER if req.learner else ConfChangeType.ADD_VOTER)
        elif isinstance(req, Promote):
            kind = ConfChangeType.ADD_VOTER
        else:
            kind = ConfChangeType.REMOVE
        idx = core.propose_conf_change(ConfChange(kind, req.node))
        if isinstance(idx, NotLeader):
            w.fail(self._not_leader())
        elif isinstance(idx, Busy):
            w.fail(E.Conflict(f"membership change refused: {idx.reason}"))
        else:
            w.term = core.term
            self._waiters.proposals[idx] = w
            if isinstance(req, AddMember):  # answered by nobody; applied by every replica
                core.propose(member_address(req.node, req.peer_addr).encode())

    def settle_transfers(self) -> None:
        """Answer every transfer whose outcome the core now shows (the driver calls this after
        each turn). The old leader learns the target won when the target, leader of a later
        term, reaches it; until then (stepped down, no leader known) the caller waits, within
        its deadline."""
        if not self._transfers:
            return
        core, still = self.core, []
        for to, term, w in self._transfers:
            if w.on_done is None:  # answered already (its deadline passed, the node stopped)
                continue
            if core.term > term and core.leader == to:
                w.resolve(Outcome.ok({"to": to, "leader": to, "term": core.term}))
            elif core.term > term and core.leader is not None:
                w.fail(E.Conflict(f"{core.leader} took office (term {core.term}), not {to}",
                                  leader=core.leader))
            elif core.role is Role.LEADER and core.term == term and core.lead_transferee != to:
                w.fail(E.Busy(f"{to} did not take office within the transfer window; "
                              f"{self.id} still leads (retry)", retry_after_ms=100))
            else:
                still.append((to, term, w))
        self._transfers = still

    def best_transferee(self) -> str | None:
        best: tuple[int, str] | None = None
        for nid in sorted(self.core.conf.voters):
            if nid == self.id:
                continue
            pr = self.core.progress.get(nid)
            match = pr.match if pr is not None else 0
            if best is None or match > best[0]:
                best = (match, nid)
        return best[1] if best else None

    def is_member(self, node: str) -> bool:
        c = self.core.conf
        return node in c.voters or node in c.learners

    def link_peers(self, addr_of: Callable[[str], str | None]) -> dict[str, str]:
        """The peer links to keep: one per other current member with a known address."""
        c = self.core.conf
        out = {}
        for n in (*c.voters, *c.learners):
            addr = addr_of(n)
            if n != self.id and addr is not None:
                out[n] = addr
        return out

    def status(self, role: Role, leader: str | None, leader_addr: str | None,
               client_addr_of: Callable[[str], str | None],
               addr_of: Callable[[str], str | None],
               reachable: Callable[[str], bool | None]) -> dict[str, Any]:
        """CLUSTER_STATUS: this node's view of the cluster."""
        core = self.core
        c = core.conf
        members = []
        for nid in sorted({*c.voters, *c.learners}):
            pr = core.progress.get(nid) if role is Role.LEADER else None
            members.append({
                "id": nid, "voter": nid in c.voters, "peer_addr": addr_of(nid),
                "client_addr": client_addr_of(nid),
                "reachable": True if nid == self.id else reachable(nid),
                "match_index": pr.match if pr is not None else None,
            })
        return {"node": self.id, "role": "learner" if self.id in c.learners else role.value,
                "term": core.term, "commit_index": core.log.committed,
                "applied_index": core.log.applied, "leader": leader,
                "leader_addr": leader_addr, "members": members}
