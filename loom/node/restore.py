"""`loomd restore`: seed a new cluster's data directory from a backup (`loomctl snapshot save`).

etcdutl's `snapshot restore` is the model: every member of the new cluster runs it once, with
the same backup file and the same `--peers`, before its first start. Each gets
- the backup's state as its installed snapshot, at the backup's index and term, with the new
  membership (`--peers`, all voters) and the new peer addresses (replicated state: the old
  cluster's would otherwise win over the configured peers);
- a hard state at that term with the commit index at the snapshot, so the first election
  happens in the next term and the log continues after the snapshot;
- the new cluster's name recorded in the data directory (`CLUSTER_NAME`): the name is what
  peers present to each other (PEER_HELLO), and loomd refuses to start the directory under
  any other name, so a node of the old cluster can never join the restored one, nor the
  restored directory be started as a member of the old one.

Nothing is written before the whole file has been read and checked: every record's CRC, the
end record's count, size and data CRC, the AES-GCM tags when it is encrypted (the keyring is
the one the old cluster encrypted at rest with; the new data directory is encrypted with the
same keyring when one is given) and the state machine loading the data. A damaged, truncated
or foreign file is refused with the reason and the offset, and the data directory stays
untouched. A data directory that already holds a log is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from loom.raft.types import ConfState, HardState, SnapshotMeta
from loom.state.machine import StateMachine
from loom.storage.errors import CorruptionError, EncryptionKeyError, StorageError
from loom.storage.fs import OSFileSystem
from loom.storage.kms import open_keystore
from loom.storage.recovery import max_payload
from loom.storage.snapshot import SnapshotReader
from loom.storage.storage import Storage, StorageOptions

CLUSTER_NAME_FILE = "CLUSTER_NAME"
LOG_SUBDIR = "raft"  # the node's log inside its data directory (node/server.py)


class RestoreError(Exception):
    """The backup or the target cannot be used; the message says why. Nothing was written."""


@dataclass(frozen=True)
class Restored:
    data_dir: Path
    node_id: str
    index: int
    term: int
    voters: tuple[str, ...]
    cluster_name: str
    encrypted: bool
    state_bytes: int


def read_backup(path: Path, keyring: Path | None, *, kek_pin: bytes | None = None,
                pkcs11_module: str | None = None) -> tuple[SnapshotMeta, StateMachine, bool]:
    """The backup's meta and its state, every check passed; RestoreError otherwise. A wrapped
    keyring (storage/kms.py) needs the PKCS#11 module and the KEK's PIN."""
    if not path.is_file():
        raise RestoreError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise RestoreError(f"{path} is empty: not a Loom snapshot")
    try:
        ring = (open_keystore(str(keyring), kek_pin, pkcs11_module).load()
                if keyring is not None else None)
        reader = SnapshotReader(OSFileSystem(), str(path), keyring=ring,
                                max_payload=max_payload(StorageOptions().max_record_size))
        data = b"".join(reader.chunks())
    except CorruptionError as e:
        raise RestoreError(f"{path} is damaged or truncated, refused: {e}") from None
    except EncryptionKeyError as e:
        raise RestoreError(f"{path}: {e} (pass the keyring the cluster encrypted with: "
                           "--keyring FILE)") from None
    except (StorageError, OSError) as e:
        raise RestoreError(f"cannot read {path}: {e}") from None
    try:
        sm = StateMachine.restore(data)
    except Exception as e:  # any failure to load is a refusal, never a partial restore
        raise RestoreError(f"{path} holds no loadable Loom state: {e}") from None
    return reader.meta, sm, bool(reader.key_id)


def check_target(data_dir: Path) -> None:
    log_dir = data_dir / LOG_SUBDIR
    if log_dir.exists() and any(log_dir.iterdir()):
        raise RestoreError(f"{data_dir} already holds a log ({log_dir}); restore seeds a new "
                           "member only: use an empty --data-dir")


def restore(backup: Path, *, data_dir: Path, node_id: str, peers: dict[str, str],
            cluster_name: str, keyring: Path | None = None, kek_pin: bytes | None = None,
            pkcs11_module: str | None = None) -> Restored:
    if node_id not in peers:
        raise RestoreError(f"--peers must name this node ({node_id}) too")
    meta, sm, encrypted = read_backup(backup, keyring, kek_pin=kek_pin,
                                      pkcs11_module=pkcs11_module)
    check_target(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    voters = tuple(sorted(peers))
    # The members' peer addresses are replicated state (state/members.py): the new cluster's
    # replace the old cluster's, which would otherwise win over the configured peers.
    sm.members.load(dict(peers))
    blob = sm.snapshot()
    new_meta = SnapshotMeta(meta.index, meta.term, ConfState(voters=voters))
    opts = StorageOptions(keyring_path=str(keyring) if keyring is not None else None,
                          kek_pin=kek_pin, pkcs11_module=pkcs11_module)
    storage, _ = Storage.open(str(data_dir / LOG_SUBDIR), opts)
    try:
        storage.save_snapshot(new_meta, [blob])
        storage.save(HardState(meta.term, None, meta.index), [], must_sync=True)
    finally:
        storage.close()
    _write_name(data_dir / CLUSTER_NAME_FILE, cluster_name)
    return Restored(data_dir, node_id, meta.index, meta.term, voters, cluster_name, encrypted,
                    len(blob))


def _write_name(path: Path, name: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def recorded_cluster_name(data_dir: Path) -> str | None:
    """The cluster name a restored data directory belongs to (None: not restored)."""
    try:
        return (data_dir / CLUSTER_NAME_FILE).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def check_cluster_name(data_dir: Path, cluster_name: str) -> str | None:
    """Why a node configured with `cluster_name` must not start on `data_dir` (a restored
    directory of another cluster), or None."""
    recorded = recorded_cluster_name(data_dir)
    if recorded is None or recorded == cluster_name:
        return None
    return (f"cluster_name: {data_dir} was restored for cluster {recorded!r}, not "
            f"{cluster_name!r}; start it with cluster_name = \"{recorded}\" (--cluster-name)")


def parse_peers(text: str) -> dict[str, str]:
    """--peers "n1=host:port,n2=host:port" (the form loomd's own --peers takes)."""
    from loom.node.config import ConfigError, parse_host_port
    from loom.security.identity import NAME_RE

    peers: dict[str, str] = {}
    for item in (x.strip() for x in text.split(",")):
        nid, sep, addr = item.partition("=")
        if not item or not sep or not NAME_RE.fullmatch(nid) or nid in peers:
            raise RestoreError(f"--peers: expected distinct ID=HOST:PORT items, got {item!r}")
        try:
            parse_host_port(addr, f"--peers {nid}")
        except ConfigError as e:
            raise RestoreError(str(e)) from None
        peers[nid] = addr
    return peers
