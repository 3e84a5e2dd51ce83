"""KEYS_ROTATE and KEYS_REWRAP: the node's data keys changed while it runs.

Both act on the receiving node only (each node has its own keyring; `loomctl keys rotate`
names the node by its endpoint). They reach the node as admin commands through the one
dispatcher, so the ACL decides who may run them and each leaves an audit record.

The order is what keeps data readable whatever fails: the new keyring is first written to the
keyring file (atomically: temp file, fsync, rename; wrapped under the KEK when the keyring is a
wrapped one, so no data key is ever written in clear), and only then put in force in memory
(`Storage.use_keys`). A failure before that leaves both the file and the node as they were; a
crash after the rename restarts with the new file, which holds every key the data needs.

Rotation keeps every old key (files written before stay readable; compaction and new snapshots
retire them). Rewrapping changes no data key, only what protects them on disk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import trio

from loom.node.config import NodeConfig
from loom.security.tls import TLSConfigError
from loom.storage import Storage
from loom.storage.crypto import Keyring
from loom.storage.errors import EncryptionKeyError
from loom.storage.kms import KeyStore, Pkcs11Kek, WrappedKeyStore, rewrapped
from loom.wire.errors import BadRequest, Unavailable

log = logging.getLogger("loom.node.keys")


@dataclass(frozen=True, slots=True)
class KeyStatistics:
    """NODE_STATS "keys": whether the node encrypts at rest, with what, and what changed."""

    encrypted: bool
    provider: str  # "local" (plain keyring file), "pkcs11" (wrapped), "" when not encrypted
    active_key: int  # the key id new files are written with (0: not encrypted)
    keys_held: int
    rotations: int
    rewraps: int


class KeyAdmin:
    """The node's handlers for KEYS_ROTATE and KEYS_REWRAP (`Dispatcher.node_tasks`)."""

    def __init__(self, cfg: NodeConfig, storage: Storage) -> None:
        self.cfg = cfg
        self.storage = storage
        self._lock = trio.Lock()  # one change at a time: each builds on the keyring in force
        self._limiter = trio.CapacityLimiter(1)
        self._rotations = 0
        self._rewraps = 0

    def statistics(self) -> KeyStatistics:
        ring, store = self.storage.keyring, self.storage.keystore
        return KeyStatistics(
            encrypted=ring is not None,
            provider=store.describe()["provider"] if store is not None else "",
            active_key=ring.active if ring is not None else 0,
            keys_held=len(ring.keys) if ring is not None else 0,
            rotations=self._rotations, rewraps=self._rewraps)

    def _in_force(self) -> tuple[KeyStore, Keyring]:
        ring, store = self.storage.keyring, self.storage.keystore
        if ring is None or store is None:
            raise Unavailable("this node does not encrypt at rest: no [storage] keyring")
        return store, ring

    async def rotate(self, body: dict[str, Any]) -> dict[str, Any]:
        async with self._lock:
            store, ring = self._in_force()
            try:
                new = ring.rotated()
                # Wrapping (an HSM round trip) and the fsyncs run off the trio thread. The wait
                # is not cancellable (abandon_on_cancel is off), and nothing between its end
                # and use_keys checkpoints: a keyring written is always put in force.
                await trio.to_thread.run_sync(store.save, new, limiter=self._limiter)
            except (EncryptionKeyError, OSError) as e:
                raise Unavailable(f"key rotation failed, keys unchanged: {e}") from None
            self.storage.use_keys(store, new)
            self._rotations += 1
        log.info("data key %d is now active (keys held: %s)", new.active, sorted(new.keys))
        return {"key_id": new.active, "keys": sorted(new.keys),
                "provider": store.describe()["provider"]}

    def _kek(self, store: KeyStore, body: dict[str, Any]) -> Pkcs11Kek:
        s = self.cfg.storage
        if s.pkcs11_module is None:
            raise BadRequest("this node has no PKCS#11 module configured "
                             "([storage] pkcs11_module)")
        source = s.kek_pin()
        if source is None:
            raise BadRequest("this node has no KEK PIN configured "
                             "([storage] kek_pin_file or kek_pin_credential)")
        try:
            pin = source.read()
        except TLSConfigError as e:
            raise Unavailable(str(e)) from None
        token = body.get("token")
        if token is None:
            current = store.describe()
            if current.get("provider") != "pkcs11":
                raise BadRequest("the keyring is not wrapped yet: name the PKCS#11 token")
            token = current["token"]
        return Pkcs11Kek(str(s.pkcs11_module), str(token), str(body["label"]), pin)

    async def rewrap(self, body: dict[str, Any]) -> dict[str, Any]:
        async with self._lock:
            store, ring = self._in_force()
            kek = self._kek(store, body)
            try:
                new: WrappedKeyStore = await trio.to_thread.run_sync(
                    rewrapped, store, ring, kek, limiter=self._limiter)
            except (EncryptionKeyError, OSError) as e:
                raise Unavailable(f"rewrap failed, keyring unchanged: {e}") from None
            self.storage.use_keys(new, ring)
            self._rewraps += 1
        log.info("keyring %s rewrapped under %s", store.path, kek.describe())
        return {"keys": sorted(ring.keys), **kek.describe()}

