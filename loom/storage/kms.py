"""Envelope encryption at rest: where the data keys live and what protects them.

The data keys (`crypto.Keyring`: AES-256 master keys from which every WAL segment's and
snapshot's file key is derived) are held by a `KeyStore`, one small interface with two
providers, chosen by the keyring file's own `format`:

- `LocalKeyStore` (`loom-keyring-v1`, the default and the format every existing keyring has):
  the file itself holds the data keys, and its protection is the file's mode (0600) and where
  it lives (outside the data directory, a secret mount). Nothing changes for these keyrings.
- `WrappedKeyStore` (`loom-keyring-v2`): the file holds each data key wrapped (AES-256-GCM)
  by a key-encryption key that never leaves an HSM, reached through PKCS#11 (`Pkcs11Kek`):

      {"format": "loom-keyring-v2", "active": 2,
       "kek": {"provider": "pkcs11", "token": "loom", "label": "loom-kek-1"},
       "keys": [{"id": 1, "wrapped": "<base64 of nonce(12) | ciphertext(32) | tag(16)>"}]}

  The associated data of each wrap names the key id, so wrapped keys cannot be swapped
  between ids. The PKCS#11 module (a shared library loaded into the node) and the PIN come
  from the node's configuration only (`[storage] pkcs11_module`, and a file or a systemd
  credential for the PIN), never from the keyring file or a request.

Invariant: a `WrappedKeyStore` never writes a data key in clear, anywhere: new keys are drawn
in memory, wrapped by the HSM, and only the wrapped form is written (atomically, 0600). The
unwrapped keys live in the node's memory only, as the file keys always did.

Rotation (`rotated`) adds a data key and makes it active; rewrapping (`with_kek`) writes the
same data keys wrapped under another KEK, so no data is re-encrypted. A plain keyring is
migrated to a wrapped one by rewrapping it (`loomctl keys rewrap`, docs/security.md).
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from loom.storage.crypto import (
    KEY_SIZE,
    MAX_KEY_ID,
    Keyring,
    load_keyring,
    parse_keyring_json,
    read_private_file,
    write_keyring,
    write_private_file,
)
from loom.storage.errors import EncryptionKeyError

WRAPPED_FORMAT = "loom-keyring-v2"
NONCE_SIZE = 12
MAX_LABEL = 128


class KeyEncryptionKey(Protocol):
    """A key that wraps and unwraps data keys and is never seen by the node."""

    def describe(self) -> dict[str, str]:
        """What the keyring file records to find this KEK again (no secret)."""
        ...

    def wrap(self, key_id: int, data_key: bytes) -> bytes: ...

    def unwrap(self, key_id: int, wrapped: bytes) -> bytes: ...


def _aad(key_id: int) -> bytes:
    return b"loom-data-key\x00" + key_id.to_bytes(4, "big")


@dataclass(frozen=True)
class Pkcs11Kek:
    """An AES key (CKK_AES, found by its label) on a PKCS#11 token (found by its label),
    used with CKM_AES_GCM: wrapped = nonce | ciphertext | tag. Each call opens a short
    read-only session: wraps happen at start, rotation and rewrap only."""

    module: str
    token: str
    label: str
    pin: bytes = field(repr=False)

    def describe(self) -> dict[str, str]:
        return {"provider": "pkcs11", "token": self.token, "label": self.label}

    def _where(self) -> str:
        return f"PKCS#11 key {self.label!r} on token {self.token!r} ({self.module})"

    def _run(self, fn: Any, failed: str) -> bytes:
        """fn(key) in a session; `failed` says what it means when the mechanism itself fails
        (for a decryption: the tag did not verify)."""
        try:
            import pkcs11
            from pkcs11 import KeyType, ObjectClass
        except ImportError:  # pragma: no cover - a dependency of the package
            raise EncryptionKeyError("PKCS#11 needs the python-pkcs11 package") from None
        try:
            lib = pkcs11.lib(self.module)
            token = lib.get_token(token_label=self.token)
            with token.open(user_pin=self.pin.decode()) as session:
                key = session.get_key(label=self.label, key_type=KeyType.AES,
                                      object_class=ObjectClass.SECRET_KEY)
                try:
                    return bytes(fn(key))
                except pkcs11.PKCS11Error as e:
                    raise EncryptionKeyError(f"{self._where()}: {failed} "
                                             f"({type(e).__name__})") from None
        except pkcs11.PinIncorrect:
            raise EncryptionKeyError(f"wrong PIN for {self._where()}") from None
        except pkcs11.NoSuchToken:
            raise EncryptionKeyError(f"no PKCS#11 token labelled {self.token!r} in "
                                     f"{self.module}") from None
        except pkcs11.NoSuchKey:
            raise EncryptionKeyError(f"no AES key labelled {self.label!r} on PKCS#11 token "
                                     f"{self.token!r} (was it deleted or renamed?)") from None
        except pkcs11.MultipleObjectsReturned:
            raise EncryptionKeyError(f"several AES keys labelled {self.label!r} on token "
                                     f"{self.token!r}: labels must be unique") from None
        except UnicodeDecodeError:
            raise EncryptionKeyError(f"the PIN for {self._where()} is not UTF-8") from None
        except (pkcs11.PKCS11Error, RuntimeError, OSError) as e:
            raise EncryptionKeyError(f"{self._where()}: {type(e).__name__} {e}") from None

    def wrap(self, key_id: int, data_key: bytes) -> bytes:
        from pkcs11 import Mechanism
        from pkcs11.mechanisms import GCMParams

        nonce = os.urandom(NONCE_SIZE)
        param = GCMParams(nonce, _aad(key_id), 128)
        return nonce + self._run(lambda k: k.encrypt(data_key, mechanism=Mechanism.AES_GCM,
                                                     mechanism_param=param),
                                 f"cannot wrap data key {key_id}")

    def unwrap(self, key_id: int, wrapped: bytes) -> bytes:
        from pkcs11 import Mechanism
        from pkcs11.mechanisms import GCMParams

        if len(wrapped) != NONCE_SIZE + KEY_SIZE + 16:
            raise EncryptionKeyError(f"wrapped data key {key_id} has a bad length")
        param = GCMParams(wrapped[:NONCE_SIZE], _aad(key_id), 128)
        key = self._run(lambda k: k.decrypt(wrapped[NONCE_SIZE:], mechanism=Mechanism.AES_GCM,
                                            mechanism_param=param),
                        f"does not unwrap data key {key_id}: it was wrapped by another "
                        "key-encryption key, or the keyring was altered")
        if len(key) != KEY_SIZE:
            raise EncryptionKeyError(f"data key {key_id} unwrapped to {len(key)} bytes")
        return key


def kek_from(desc: Any, module: str, pin: bytes, where: str) -> KeyEncryptionKey:
    """The KEK a keyring file names (`kek`), given the configured module and the PIN."""
    if not isinstance(desc, dict) or desc.get("provider") != "pkcs11":
        raise EncryptionKeyError(f"{where}: unknown key-encryption key provider "
                                 f"{desc.get('provider') if isinstance(desc, dict) else desc!r}")
    token, label = desc.get("token"), desc.get("label")
    if not all(isinstance(v, str) and 0 < len(v) <= MAX_LABEL for v in (token, label)):
        raise EncryptionKeyError(f"{where}: kek needs token and label strings")
    return Pkcs11Kek(module, str(token), str(label), pin)


class KeyStore(Protocol):
    """Where the data keys are kept: read them, keep a new set (after a rotation)."""

    @property
    def path(self) -> str: ...

    def describe(self) -> dict[str, str]: ...

    def load(self) -> Keyring: ...

    def save(self, keyring: Keyring) -> None: ...


@dataclass(frozen=True)
class LocalKeyStore:
    """A plain keyring file (loom-keyring-v1): today's behaviour, the default."""

    path: str

    def describe(self) -> dict[str, str]:
        return {"provider": "local", "path": self.path}

    def load(self) -> Keyring:
        return load_keyring(self.path)

    def save(self, keyring: Keyring) -> None:
        write_keyring(self.path, keyring, exclusive=False)


@dataclass(frozen=True)
class WrappedKeyStore:
    """A keyring file of wrapped data keys (loom-keyring-v2) and the KEK that unwraps them."""

    path: str
    kek: KeyEncryptionKey

    def describe(self) -> dict[str, str]:
        return {**self.kek.describe(), "path": self.path}

    def load(self) -> Keyring:
        doc = parse_keyring_json(self.path, read_private_file(self.path))
        return self._parse(doc)

    def _parse(self, doc: dict[str, Any]) -> Keyring:
        keys: dict[int, bytes] = {}
        try:
            items = doc["keys"]
            active = doc["active"]
            if not isinstance(items, list) or not items or len(items) > 4096:
                raise ValueError("keys must be a non-empty list")
            for item in items:
                kid = item["id"]
                if not isinstance(kid, int) or not 1 <= kid <= MAX_KEY_ID or kid in keys:
                    raise ValueError(f"bad or duplicate key id {kid!r}")
                keys[kid] = base64.b64decode(item["wrapped"], validate=True)
            if active not in keys:
                raise ValueError(f"active key id {active!r} is not in the keyring")
        except (ValueError, KeyError, TypeError) as exc:
            raise EncryptionKeyError(f"keyring {self.path} is invalid: {exc}") from None
        return Keyring({kid: self.kek.unwrap(kid, w) for kid, w in keys.items()}, active)

    def to_json(self, keyring: Keyring) -> bytes:
        doc = {
            "format": WRAPPED_FORMAT, "active": keyring.active, "kek": self.kek.describe(),
            "keys": [{"id": k, "wrapped": base64.b64encode(self.kek.wrap(k, v)).decode()}
                     for k, v in sorted(keyring.keys.items())],
        }
        return (json.dumps(doc, indent=2) + "\n").encode()

    def save(self, keyring: Keyring, *, exclusive: bool = False) -> None:
        # Everything is wrapped before anything is written: a KEK that fails leaves the old
        # file in place, and the file never holds a key in clear.
        write_private_file(self.path, self.to_json(keyring), exclusive=exclusive)


def open_keystore(path: str, pin: bytes | None, module: str | None) -> KeyStore:
    """The store a keyring file is: plain (v1) or wrapped (v2, which needs the PKCS#11
    module and the KEK's PIN)."""
    doc = parse_keyring_json(path, read_private_file(path))
    if doc.get("format") != WRAPPED_FORMAT:
        return LocalKeyStore(path)
    kek = doc.get("kek")
    label = kek.get("label") if isinstance(kek, dict) else None
    if module is None or pin is None:
        raise EncryptionKeyError(
            f"keyring {path} holds data keys wrapped by the PKCS#11 key {label!r}: give the "
            "PKCS#11 module ([storage] pkcs11_module) and the token's PIN ([storage] "
            "kek_pin_file or kek_pin_credential)")
    return WrappedKeyStore(path, kek_from(kek, module, pin, f"keyring {path}"))


def rewrapped(store: KeyStore, keyring: Keyring, kek: KeyEncryptionKey) -> WrappedKeyStore:
    """`keyring`'s data keys written to `store`'s file wrapped under `kek` (the data, and
    every segment and snapshot, stay as they are). Turns a plain keyring into a wrapped one."""
    new = WrappedKeyStore(store.path, kek)
    new.save(keyring)
    return new


def create_wrapped(path: str, kek: KeyEncryptionKey) -> int:
    """A new wrapped keyring at `path` (refused if it exists) with one data key, drawn in
    memory and written only wrapped. Returns its id."""
    if os.path.exists(path):
        raise FileExistsError(f"keyring {path} already exists")
    keyring = Keyring.generate()
    WrappedKeyStore(path, kek).save(keyring, exclusive=True)
    return keyring.active
