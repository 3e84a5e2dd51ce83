"""Sans-IO Raft consensus core: events in, a `Ready` batch out. No clock, sockets or trio."""

from loom.raft.confchange import ConfChange, ConfChangeType
from loom.raft.config import RaftConfig
from loom.raft.core import RaftCore
from loom.raft.messages import RAFT_MESSAGE_NAMES, MalformedMessage, Message, from_wire
from loom.raft.ready import Busy, NotLeader, ReadState, Ready, Role, SnapshotChunk, SoftState

__all__ = [
    "RAFT_MESSAGE_NAMES",
    "Busy",
    "ConfChange",
    "ConfChangeType",
    "MalformedMessage",
    "Message",
    "NotLeader",
    "RaftConfig",
    "RaftCore",
    "ReadState",
    "Ready",
    "Role",
    "SnapshotChunk",
    "SoftState",
    "from_wire",
]
