"""The key stores (storage/kms.py) and keys changed under a running Storage (`use_keys`).

The wrapped store's logic is checked here with an in-process AES-GCM key-encryption key; the
PKCS#11 provider itself, with a real SoftHSM2 token, is tests/e2e/test_keys_hsm.py."""

from __future__ import annotations

import base64
import json
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from loom.raft.types import HardState, SnapshotMeta
from loom.storage import EncryptionKeyError, Storage, admin
from loom.storage.crypto import Keyring, load_keyring
from loom.storage.kms import LocalKeyStore, WrappedKeyStore, open_keystore, rewrapped

from .conftest import small_options
from .test_encryption import SECRET, all_bytes, secret_entries


class AesKek:
    """A KEK held in this process (the token's part in the PKCS#11 provider)."""

    def __init__(self, label: str) -> None:
        self.label, self._aead = label, AESGCM(AESGCM.generate_key(bit_length=256))

    def describe(self) -> dict[str, str]:
        return {"provider": "test", "label": self.label}

    def wrap(self, key_id: int, data_key: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, data_key, key_id.to_bytes(4, "big"))

    def unwrap(self, key_id: int, wrapped: bytes) -> bytes:
        try:
            return self._aead.decrypt(wrapped[:12], wrapped[12:], key_id.to_bytes(4, "big"))
        except Exception:
            raise EncryptionKeyError(f"{self.label} does not unwrap data key {key_id}") from None


def test_a_wrapped_keyring_never_holds_a_key_in_clear(tmp_path: object) -> None:
    ring = os.path.join(str(tmp_path), "keyring.json")
    admin.create_keyring(ring)
    plain = LocalKeyStore(ring)
    keys = plain.load().rotated()
    kek = AesKek("kek-1")
    store = rewrapped(plain, keys, kek)
    with open(ring, "rb") as f:
        text = f.read()
    for k in keys.keys.values():
        assert base64.b64encode(k) not in text and k not in text
    assert oct(os.stat(ring).st_mode & 0o777) == "0o600"
    assert store.load() == keys
    # Wrapped keys are bound to their ids: swapping two is refused, not silently used.
    doc = json.loads(text)
    doc["keys"][0]["wrapped"], doc["keys"][1]["wrapped"] = (doc["keys"][1]["wrapped"],
                                                            doc["keys"][0]["wrapped"])
    with open(ring, "w") as f:
        json.dump(doc, f)
    with pytest.raises(EncryptionKeyError, match="does not unwrap data key 1"):
        store.load()
    # Another KEK does not unwrap them either.
    rewrapped(store, keys, kek)
    with pytest.raises(EncryptionKeyError, match="kek-2 does not unwrap"):
        WrappedKeyStore(ring, AesKek("kek-2")).load()


def test_a_wrapped_keyring_needs_the_module_and_the_pin(tmp_path: object) -> None:
    ring = os.path.join(str(tmp_path), "keyring.json")
    admin.create_keyring(ring)
    WrappedKeyStore(ring, AesKek("kek-1")).save(Keyring.generate())
    with pytest.raises(EncryptionKeyError, match="unknown key-encryption key provider"):
        open_keystore(ring, b"1234", "/lib/x.so")
    with pytest.raises(EncryptionKeyError, match=r"give the PKCS#11 module \(\[storage\]"):
        open_keystore(ring, None, None)
    with pytest.raises(EncryptionKeyError, match="give the PKCS#11 module"):
        admin.inspect(str(tmp_path), ring)  # the offline tools too
    with pytest.raises(EncryptionKeyError, match="wrapped by a key-encryption key"):
        load_keyring(ring)  # the plain loader says what it needs
    assert isinstance(open_keystore(_plain(tmp_path), None, None), LocalKeyStore)


def _plain(tmp_path: object) -> str:
    ring = os.path.join(str(tmp_path), "plain.json")
    admin.create_keyring(ring)
    return ring


def test_keys_rotated_under_a_running_storage(tmp_path: object, data_dir: str) -> None:
    ring = _plain(tmp_path)
    s, _ = Storage.open(data_dir, small_options(keyring_path=ring))
    s.save(HardState(1, "n1", 0), secret_entries(1, 20), True)
    store, old = s.keystore, s.keyring
    assert store is not None and old is not None
    new = old.rotated()
    with pytest.raises(EncryptionKeyError, match="lacks or changes key ids"):
        s.use_keys(store, Keyring({2: new.keys[2]}, 2))  # key 1 is still needed
    store.save(new)
    s.use_keys(store, new)
    s.save_snapshot(SnapshotMeta(10, 1), [SECRET * 500])  # written with key 2, no restart
    s.save(None, secret_entries(21, 5), True)
    s.close()
    assert SECRET not in all_bytes(data_dir)
    s, rec = Storage.open(data_dir, small_options(keyring_path=ring))
    assert rec.snapshot is not None and len(rec.entries) == 15
    s.close()
    report = admin.verify(data_dir, ring)
    assert report["authenticated"] and report["last_index"] == 25


def test_use_keys_without_encryption_is_refused(data_dir: str) -> None:
    s, _ = Storage.open(data_dir, small_options())
    try:
        with pytest.raises(EncryptionKeyError, match="does not encrypt at rest"):
            s.use_keys(LocalKeyStore("x"), Keyring.generate())
    finally:
        s.close()
