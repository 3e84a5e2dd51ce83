"""Membership changes with the single-server rule.

One change at a time: add a learner (non-voting, catches up first), promote a learner to voter
(or add a voter directly), remove a node, re-admit a removed node (as a learner). A change
takes effect on every node when the entry carrying it is applied; the leader refuses a new
change while an earlier one is unapplied (`pending_conf_index`), and a new leader refuses
changes until everything in its log at election time is applied, which closes the known
single-server-change hole after a leader change. Any two consecutive configurations therefore
differ by one voter and their majorities overlap. Joint consensus (`ConfState.voters_outgoing`)
is not used by this core.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from mypy_extensions import mypyc_attr

from loom.raft.messages import MAX_ID_LEN
from loom.raft.types import ConfState, Entry, EntryType, HardState


class ConfChangeType(Enum):
    ADD_LEARNER = "add_learner"
    ADD_VOTER = "add_voter"  # also promotes an existing learner
    REMOVE = "remove"
    # A removed id stays refused (peer admission, adds) until an operator re-admits it
    # explicitly: as a learner, so it catches up (and learns the current term) before it may
    # vote again.
    READMIT = "readmit"


# A compiled build (loom/buildinfo.py) cannot make a native subclass of ValueError.
@mypyc_attr(native_class=False)
class ConfChangeError(ValueError):
    """A malformed or inapplicable membership change."""


@dataclass(frozen=True, slots=True)
class ConfChange:
    type: ConfChangeType
    node: str

    def encode(self) -> bytes:
        return f"{self.type.value} {self.node}".encode()

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        try:
            op, node = data.decode("ascii").split(" ")
            kind = ConfChangeType(op)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ConfChangeError("malformed conf change") from exc
        if not 0 < len(node) <= MAX_ID_LEN:
            raise ConfChangeError("bad node id in conf change")
        return ConfChange(kind, node)


def apply_change(conf: ConfState, cc: ConfChange) -> ConfState:
    """The configuration after `cc`. Inapplicable changes leave `conf` unchanged, so every
    replica (which applies the same entries) reaches the same result."""
    voters, learners = list(conf.voters), list(conf.learners)
    if cc.type is ConfChangeType.READMIT:
        if cc.node not in conf.removed or cc.node in voters or cc.node in learners:
            return conf
        learners.append(cc.node)
        return ConfState(voters=tuple(sorted(voters)), learners=tuple(sorted(learners)),
                         removed=tuple(n for n in conf.removed if n != cc.node))
    if cc.type is ConfChangeType.ADD_LEARNER:
        if cc.node in voters or cc.node in learners:
            return conf
        learners.append(cc.node)
    elif cc.type is ConfChangeType.ADD_VOTER:
        if cc.node in voters:
            return conf
        if cc.node in learners:
            learners.remove(cc.node)
        voters.append(cc.node)
    elif cc.node in voters:
        if len(voters) == 1:
            return conf  # never remove the last voter
        voters.remove(cc.node)
    elif cc.node in learners:
        learners.remove(cc.node)
    else:
        return conf
    removed = conf.removed
    if cc.type is ConfChangeType.REMOVE:
        removed = tuple(sorted({*removed, cc.node}))
    return ConfState(voters=tuple(sorted(voters)), learners=tuple(sorted(learners)),
                     removed=removed)


def check_change(
    conf: ConfState, cc: ConfChange, removed: frozenset[str] = frozenset()
) -> str | None:
    """Why the leader should refuse `cc` now, or None if it is acceptable. Ids in `removed`
    or in `conf.removed` are only ever added back by READMIT, and READMIT takes only those."""
    was_removed = cc.node in removed or cc.node in conf.removed
    if cc.type is ConfChangeType.READMIT:
        if not was_removed:
            return f"{cc.node} was not removed; add it instead"
    elif cc.type is not ConfChangeType.REMOVE and was_removed:
        return f"{cc.node} was removed; only an explicit re-admission adds it again"
    if cc.type is ConfChangeType.REMOVE and cc.node in conf.voters and len(conf.voters) == 1:
        return "cannot remove the last voter"
    if apply_change(conf, cc) == conf:
        return "no-op change"
    return None


def bootstrap(voters: tuple[str, ...]) -> tuple[HardState, tuple[Entry, ...]]:
    """What the founding members of a new cluster persist before their first start: one
    committed ADD_VOTER entry per founder (term 1), so a node that joins later learns the
    whole configuration by replaying the log (or from a snapshot)."""
    ents = tuple(
        Entry(1, i, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_VOTER, v).encode())
        for i, v in enumerate(sorted(voters), start=1)
    )
    return HardState(term=1, vote=None, commit=len(ents)), ents
