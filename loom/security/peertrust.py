"""Which node ids the peer plane admits: the members of the node's own configuration, and the
members of a newer configuration that a member it already trusts vouches for.

Why vouching exists. A node's own configuration is the one its log has applied. A member that
lags behind the MEMBER_ADD of a node which later leads would otherwise refuse that leader (it
is in no configuration the lagging member knows) and could never catch up while it leads: the
only node that could bring it up to date is the one it refuses. Admitting any node certificate
of the cluster CA is not the way out: a node that was never a member could then lead and
truncate logs. So a member learns new members from the members it already trusts: every node
tells each peer it dials its committed configuration (PEER_MEMBERS: the ids of its voters and
learners, their peer addresses, and the index after which that configuration was in force,
`Vouch`), and the listener keeps the latest word of each voucher (`PeerTrust.hear`).

The identity of a vouched member is its node id, pinned as for any member: the listener admits
a connection only if its certificate names exactly that id (`spiffe://<trust domain>/node/<id>`,
`identity.check_peer`), and a link to it writes nothing before the answering certificate names
the id dialled. An address in a vouch only says where to dial; a wrong one fails that check.

The rule (`newest_vouched`, `PeerTrust.admits`). Let T be the node's trusted ids (its own
configuration's voters and learners; a node that knows no configuration yet trusts its
configured peers), R its own removed set (`ConfState.removed`, replicated) and A its applied
index. Start with N = none and floor = A. Repeat: among the vouches of ids in (T | N.members) - R,
take the one with the highest index above floor (ties: the smallest voucher id); if there is
none, stop; else N = that vouch and floor = its index. A node id X is admitted iff X is not R's
and (X in T, or X in N.members). A vouch is dropped as soon as A reaches its index (`update`).

Why it is safe. The model is Raft's: a member (present or past) runs this code and is not
malicious; an outsider may hold a valid node certificate of the cluster CA.
1. Every N the loop picks is a configuration committed in the cluster's log, and newer than the
   node's own. By induction: its voucher is in T (a member of the node's own, committed,
   configuration) or in the previous N's members (a committed configuration's member), so it is
   a member or past member and says only what it applied; a node applies only committed entries
   (a snapshot holds only applied state), so its configuration at that index is the committed
   one, the same on every node that applied it (state machine safety). Its index is above A.
2. A never-member is refused: it is in T only if the node's own log made it a member, and it is
   in no committed configuration, so in no N. A valid CA certificate alone admits nothing, and
   an outsider cannot vouch, since only admitted peers' frames are read at all.
3. The replicated removed set wins: an id in R is refused whatever any vouch says, and its own
   vouches are not read. A removed member therefore neither readmits itself nor anyone else,
   and no vouch readmits a removed id before the node's own log applies the re-admission. The
   price: while a re-admitted node leads, a member that has not applied the re-admission still
   refuses it (it catches up under the next leader, or is removed and rejoins).
4. A vouch is trusted only while the node's own log has not superseded it. Once A >= N.index,
   the node's own configuration at A includes the entry at N.index (its own applied log holds
   it: the same entry as the voucher's, log matching) and every configuration change up to A,
   so it is the same configuration or a newer one; the vouch is dropped and the node's own
   configuration alone decides again. A voucher's newer word replaces its older one, so a
   member removed in a later configuration stops being vouched for as soon as its voucher
   says so. Since the peer listener asks on every frame, an open connection of a peer that is
   no longer admitted is closed at its next frame.
5. The loop ends: floor rises strictly and each vouch is picked at most once.

Pure: no I/O, no clock. The node feeds it (loom/node/membership.py) and the peer plane reads it
(loom/node/peer.py admits, loom/node/peerlink.py sends the node's own vouch).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from loom.security.identity import NAME_RE

__all__ = ["MAX_MEMBERS", "PeerTrust", "PeerTrustStatistics", "Vouch", "VouchError",
           "newest_vouched", "parse_vouch"]

MAX_MEMBERS = 1024  # members one vouch may name (a bigger body is refused as malformed)
MAX_ADDR_LEN = 300  # as PEER_HELLO's addresses


class VouchError(ValueError):
    """A PEER_MEMBERS body that is not a well-formed vouch."""


@dataclass(frozen=True, slots=True)
class Vouch:
    """A member's committed configuration: its voters and learners (id -> peer address, "" when
    it knows none), in force after its applied index `index`."""

    index: int
    members: Mapping[str, str]

    def body(self) -> dict[str, Any]:
        """The PEER_MEMBERS body (wire/catalog.py)."""
        return {"index": self.index, "members": dict(self.members)}


def parse_vouch(body: Mapping[str, Any]) -> Vouch:
    """A PEER_MEMBERS body, validated strictly (the catalog checked `index`; `members` is ours)."""
    index, members = body.get("index"), body.get("members")
    if type(index) is not int or index < 0:
        raise VouchError("index must be a non-negative integer")
    if not isinstance(members, dict):
        raise VouchError("members must be a map of node id to peer address")
    if len(members) > MAX_MEMBERS:
        raise VouchError(f"members names {len(members)} nodes (at most {MAX_MEMBERS})")
    for node, addr in members.items():
        if type(node) is not str or not NAME_RE.fullmatch(node) or node in (".", ".."):
            raise VouchError(f"member {node!r} is not a node id")
        if type(addr) is not str or len(addr) > MAX_ADDR_LEN or not addr.isprintable():
            raise VouchError(f"the address of member {node} is not a printable string of at "
                             f"most {MAX_ADDR_LEN} characters")
    return Vouch(index, dict(members))


def newest_vouched(trusted: Iterable[str], removed: Iterable[str], applied: int,
                   vouches: Mapping[str, Vouch]) -> tuple[str, Vouch] | None:
    """The newest configuration vouched for (voucher, vouch), or None: the module's rule."""
    base, out = frozenset(trusted), frozenset(removed)
    best: tuple[str, Vouch] | None = None
    floor = applied
    while True:
        vouchers = base.union(best[1].members) if best is not None else base
        pick: tuple[str, Vouch] | None = None
        for v in sorted(vouchers - out):
            w = vouches.get(v)
            if w is not None and w.index > floor and (pick is None or w.index > pick[1].index):
                pick = (v, w)
        if pick is None:
            return best
        best, floor = pick, pick[1].index


@dataclass(frozen=True, slots=True)
class PeerTrustStatistics:
    """What `PeerTrust.statistics()` returns (NODE_STATS' `peer_trust`)."""

    vouch_index: int | None  # the index of the vouched configuration in force, if any
    voucher: str | None  # who vouched for it
    vouched: tuple[str, ...]  # ids admitted only because of it
    held: int  # vouches kept (the latest of each voucher, newer than our own log)
    heard: int  # PEER_MEMBERS frames heard
    ignored: int  # vouches not kept: from an id not read, superseded, over `max_vouchers`


class PeerTrust:
    """The vouches a node heard and the configuration they add to its own (the module's rule).

    The owner calls `update` with its own view whenever that view changes (and while any vouch
    is held, after every applied batch), and `hear` with each vouch a peer sends; `admits` and
    `vouched` answer from the result. A vouch is kept only from an id the rule reads when it
    arrives (trusted, or a member of the vouched configuration in force, and not removed) and
    only while newer than the owner's applied index: at most one per such id, and
    `max_vouchers` bounds them regardless (a new voucher over it is ignored and counted)."""

    def __init__(self, node_id: str, *, max_vouchers: int = 64) -> None:
        if max_vouchers < 1:
            raise ValueError("PeerTrust: max_vouchers must be positive")
        self.node_id = node_id
        self.max_vouchers = max_vouchers
        self._trusted: frozenset[str] = frozenset()
        self._removed: frozenset[str] = frozenset()
        self._applied = 0
        self._vouches: dict[str, Vouch] = {}
        self._best: tuple[str, Vouch] | None = None
        self._vouched: dict[str, str] = {}
        self.heard = 0
        self.ignored = 0

    @property
    def holding(self) -> bool:
        """Some vouch is held: the owner's applied index may retire it (call `update`)."""
        return bool(self._vouches)

    def update(self, trusted: Iterable[str], removed: Iterable[str], applied: int) -> bool:
        """The owner's own view changed. True if the vouched peers changed."""
        self._trusted, self._removed = frozenset(trusted), frozenset(removed)
        self._applied = applied
        return self._recompute()

    def hear(self, voucher: str, vouch: Vouch) -> bool:
        """`voucher` (an admitted peer) sent `vouch`. True if the vouched peers changed."""
        self.heard += 1
        readable = voucher in self._trusted or (
            self._best is not None and voucher in self._best[1].members)
        if not readable or voucher in self._removed or (
                voucher not in self._vouches and len(self._vouches) >= self.max_vouchers):
            self.ignored += 1  # a word the rule would not read now (an admitted peer's is)
            return False
        if vouch.index <= self._applied:
            self.ignored += 1
            self._vouches.pop(voucher, None)  # its latest word is not newer than our log
            return self._recompute()
        self._vouches[voucher] = vouch  # the latest word of each voucher counts
        return self._recompute()

    def admits(self, node: str) -> bool:
        """The rule: `node` may hold a peer connection to us."""
        return node != self.node_id and node not in self._removed and (
            node in self._trusted or node in self._vouched)

    def vouched(self) -> dict[str, str]:
        """The admitted ids outside our own trusted set -> the address their voucher gave
        ("" when it gave none)."""
        return dict(self._vouched)

    def statistics(self) -> PeerTrustStatistics:
        best = self._best
        return PeerTrustStatistics(
            vouch_index=best[1].index if best else None, voucher=best[0] if best else None,
            vouched=tuple(sorted(self._vouched)), held=len(self._vouches), heard=self.heard,
            ignored=self.ignored)

    def _recompute(self) -> bool:
        # Keep only what may still count: newer than our log, not from a removed id. (Only
        # admitted peers' frames are read, so every voucher held was admitted when it spoke.)
        self._vouches = {v: w for v, w in self._vouches.items()
                         if w.index > self._applied and v not in self._removed}
        self._best = newest_vouched(self._trusted, self._removed, self._applied, self._vouches)
        old = self._vouched
        if self._best is None:
            self._vouched = {}
        else:
            self._vouched = {n: a for n, a in self._best[1].members.items()
                             if n not in self._trusted and n not in self._removed
                             and n != self.node_id}
        return self._vouched != old
