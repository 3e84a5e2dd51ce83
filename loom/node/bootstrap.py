"""How a node starts on its data directory: resume, found a cluster, join one, or refuse.

The rule (docs/architecture.md, "A node that lost its data"): a data directory that holds a
log is resumed, whatever the flags say. An empty one is
  * joined (`join = true` / `--join`): the node starts with no configuration, is sent the log
    or a snapshot by the leader once an operator adds (or re-admits) it, and stays *joining*
    (loom.raft.core, "joining") until it has caught up with what the cluster had committed
    when it started. That state must survive a crash, so it is a file, `joining`, in the data
    directory, created before the first start and removed once the core reports it caught up;
  * founded: the bootstrap configuration (every `peers` member a voter) is written. With more
    than one founder this needs `initial_cluster_state = "new"` (`--initial-cluster-state new`)
    on the command line of that first start: an empty directory alone cannot tell a founder's
    first start from a member that lost its disk, and such a member would come back as a
    voter that forgot its votes and the entries it acknowledged. Kept off the config file, the
    flag is not repeated by a service manager restarting a wiped node;
  * otherwise refused, with a message saying what to do (`StartRefused`, exit 2).
A lone node (no peers but itself) founds its cluster without the flag: there is nobody whose
majority its amnesia could complete.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

from loom.node.config import ConfigError

JOINING_FILE = "joining"
CLUSTER_STATES = ("new", "existing")


class StartRefused(ConfigError):
    """The data directory is empty and the flags do not say this is a new cluster."""


class StartMode(Enum):
    RESUME = "resume"  # the directory holds a log
    FOUND = "found"  # write the bootstrap configuration
    JOIN = "join"  # start empty and joining


def start_mode(*, empty: bool, join: bool, node_id: str, founders: list[str],
               initial_cluster_state: str, data_dir: Path) -> StartMode:
    if initial_cluster_state not in CLUSTER_STATES:
        raise ConfigError(f"initial_cluster_state: must be one of {', '.join(CLUSTER_STATES)}")
    if join and initial_cluster_state == "new":
        raise ConfigError("initial_cluster_state: 'new' founds a cluster; --join joins one")
    if not empty:
        return StartMode.RESUME
    if join:
        return StartMode.JOIN
    if len(founders) <= 1 or initial_cluster_state == "new":
        return StartMode.FOUND
    raise StartRefused(
        f"data directory {data_dir} is empty and {node_id} is not joining: refusing to found "
        f"a cluster of {', '.join(founders)} by itself. If this is the first start of a new "
        "cluster, start every founder once with --initial-cluster-state new. If the cluster "
        f"exists ({node_id} lost its data, or is new), start it with --join and add it with "
        f"'loomctl members add {node_id} --peer-addr HOST:PORT' (with --readmit if it was a "
        f"member: 'loomctl members remove {node_id}' first)")


def is_joining(data_dir: Path) -> bool:
    return (data_dir / JOINING_FILE).exists()


def mark_joining(data_dir: Path) -> None:
    """Durably record that this node started empty (before its first Raft message)."""
    path = data_dir / JOINING_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, b"started empty; not yet caught up (loom.raft.core, joining)\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    _sync_dir(data_dir)


def clear_joining(data_dir: Path) -> None:
    """The core caught up: from the next start on, the node counts as any member does."""
    try:
        (data_dir / JOINING_FILE).unlink()
    except FileNotFoundError:
        return
    _sync_dir(data_dir)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
