"""Cluster administration on the driver task: membership changes, leadership transfer, and the
views of the membership the node serves (CLUSTER_STATUS, the peers it admits, the peer links
to keep, the committed configuration it tells its peers).

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

Who the peer plane admits is loom/security/peertrust.py's rule (stated and proved there): the
members of this node's own configuration (a node that knows none yet: its configured peers),
and those of a newer configuration a trusted member vouches for, never an id the replicated
removed set names. This module feeds it: `refresh_trust` after every applied batch that
changed the configuration (or while a vouch is held, so the node's own log retires it),
`hear` for each PEER_MEMBERS a peer sends; `vouch` is what this node says of itself. The peer
links follow both: own members at their replicated (or configured) address, vouched ones at the
address their voucher gave.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from loom.node.waiters import Waiter, Waiters
from loom.raft.confchange import ConfChange, ConfChangeType
from loom.raft.core import RaftCore
from loom.raft.ready import Busy, NotLeader, Role
from loom.security.peertrust import MAX_MEMBERS, PeerTrust, Vouch
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
                 not_leader: Callable[[], E.NotLeader],
                 configured: Iterable[str] = ()) -> None:
        self.core = core
        self.id = node_id
        # The configured peers: trusted only while the node knows no configuration (joining).
        self.configured = frozenset(configured) - {node_id}
        self.trust = PeerTrust(node_id)
        self.refresh_trust(force=True)
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

    # -- the peer plane's view ------------------------------------------------------------------
    def _trusted(self) -> frozenset[str]:
        c = self.core.conf
        if not c.voters and not c.learners:
            return self.configured
        return frozenset((*c.voters, *c.learners))

    def refresh_trust(self, force: bool = False) -> bool:
        """The configuration or the applied index moved: True if the vouched peers changed.
        Cheap unless the configuration changed (`force`) or a vouch is held."""
        if not force and not self.trust.holding:
            return False
        return self.trust.update(self._trusted(), self.core.conf.removed, self.core.log.applied)

    def hear(self, peer: str, vouch: Vouch) -> bool:
        """Admitted peer `peer` told us its committed configuration: True if the vouched
        peers changed (the links must follow)."""
        self.trust.update(self._trusted(), self.core.conf.removed, self.core.log.applied)
        return self.trust.hear(peer, vouch)

    def admits_peer(self, node: str) -> bool:
        """Whether `node` may hold a peer connection to us (asked for every inbound frame):
        the own configuration is read live; vouched ids come from the trust's last update."""
        c = self.core.conf
        if node == self.id or node in c.removed:
            return False
        if node in c.voters or node in c.learners:
            return True
        if not c.voters and not c.learners and node in self.configured:
            return True
        return self.trust.admits(node)

    def vouch(self, addr_of: Callable[[str], str | None]) -> Vouch | None:
        """What this node tells its peers: its committed configuration (None while it knows
        none, or when it names more members than a vouch may)."""
        c = self.core.conf
        members = (*c.voters, *c.learners)
        if not members or len(members) > MAX_MEMBERS:
            return None
        return Vouch(self.core.log.applied, {n: addr_of(n) or "" for n in sorted(members)})

    def link_peers(self, addr_of: Callable[[str], str | None]) -> dict[str, str]:
        """The peer links to keep: one per other trusted member with a known address (our own
        configuration's, or the configured peers while we know none), and one per vouched
        member (at our own address for it, if any, else its voucher's)."""
        out = {}
        for n in sorted(self._trusted()):
            addr = addr_of(n)
            if n != self.id and addr is not None:
                out[n] = addr
        for n, vouched_addr in self.trust.vouched().items():
            addr = addr_of(n) or vouched_addr
            if addr:
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
                # the leader's view: its acknowledgements count in no quorum (raft/core.py)
                "joining": (core.joining if nid == self.id
                            else pr.joining if pr is not None else None),
            })
        return {"node": self.id, "role": "learner" if self.id in c.learners else role.value,
                "joining": core.joining,  # counts in no quorum until it has caught up
                "term": core.term, "commit_index": core.log.committed,
                "applied_index": core.log.applied, "leader": leader,
                "leader_addr": leader_addr, "members": members}
