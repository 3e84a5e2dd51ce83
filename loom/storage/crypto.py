"""Encryption at rest: the keyring file and the per-file AES-256-GCM ciphers.

Keyring file (JSON, mode 0600, outside the data directory):

    {"format": "loom-keyring-v1", "active": 2,
     "keys": [{"id": 1, "key": "<base64 of 32 bytes>"}, {"id": 2, "key": "..."}]}

New data is written with the active key; old keys stay so that data written before a
rotation remains readable. Key ids are 1 .. 2**32-1 and never reused.

Nonces are never reused, by construction rather than by chance: every WAL segment and every
snapshot file draws a fresh random 32-byte salt when it is created, and its records are
encrypted with a file key derived as HKDF-SHA256(master key, salt, purpose). Inside one file,
the nonce is the record's ordinal (a 96-bit counter), and a file is only ever appended to by
the process that created it (recovery always starts a new segment). A nonce could repeat only
if two files drew the same 256-bit salt under the same master key. The associated data binds
each record to its file kind, file identity (segment number or snapshot index and term) and
record type, and the nonce binds it to its position, so records cannot be moved, reordered
or retyped without failing authentication.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from loom.secretfile import SecretFileError, read_secret
from loom.storage.errors import EncryptionKeyError

KEYRING_FORMAT = "loom-keyring-v1"
KEY_SIZE = 32
SALT_SIZE = 32
TAG_SIZE = 16
MAX_KEY_ID = 2**32 - 1
MAX_KEYS = 4096


@dataclass(frozen=True)
class Keyring:
    keys: dict[int, bytes]
    active: int

    def key(self, key_id: int, where: str) -> bytes:
        try:
            return self.keys[key_id]
        except KeyError:
            raise EncryptionKeyError(
                f"{where} is encrypted with key id {key_id}, which the keyring does not hold "
                f"(it holds {sorted(self.keys)})"
            ) from None

    @staticmethod
    def generate() -> Keyring:
        return Keyring({1: AESGCM.generate_key(bit_length=256)}, 1)

    def rotated(self) -> Keyring:
        if len(self.keys) >= MAX_KEYS:
            raise EncryptionKeyError(f"keyring already holds {MAX_KEYS} keys")
        new_id = max(self.keys) + 1
        if new_id > MAX_KEY_ID:
            raise EncryptionKeyError("key ids exhausted")
        keys = dict(self.keys)
        keys[new_id] = AESGCM.generate_key(bit_length=256)
        return Keyring(keys, new_id)

    def to_json(self) -> bytes:
        doc = {
            "format": KEYRING_FORMAT,
            "active": self.active,
            "keys": [
                {"id": k, "key": base64.b64encode(v).decode("ascii")}
                for k, v in sorted(self.keys.items())
            ],
        }
        return (json.dumps(doc, indent=2) + "\n").encode()


def load_keyring(path: str) -> Keyring:
    """Read and validate a plain (v1) keyring file. Every problem is an `EncryptionKeyError`.
    A keyring whose data keys are wrapped (v2) is read by `loom.storage.kms.open_keystore`."""
    doc = parse_keyring_json(path, read_private_file(path))
    if doc.get("format") == "loom-keyring-v2":
        raise EncryptionKeyError(
            f"keyring {path} holds data keys wrapped by a key-encryption key: it needs the "
            "KEK's PIN (loomd: [storage] kek_pin_file or kek_pin_credential)")
    try:
        if doc.get("format") != KEYRING_FORMAT:
            raise ValueError(f"format is not {KEYRING_FORMAT!r}")
        keys: dict[int, bytes] = {}
        for item in doc["keys"]:
            kid = item["id"]
            if not isinstance(kid, int) or not 1 <= kid <= MAX_KEY_ID or kid in keys:
                raise ValueError(f"bad or duplicate key id {kid!r}")
            key = base64.b64decode(item["key"], validate=True)
            if len(key) != KEY_SIZE:
                raise ValueError(f"key {kid} is {len(key)} bytes, not {KEY_SIZE}")
            keys[kid] = key
        active = doc["active"]
        if active not in keys:
            raise ValueError(f"active key id {active!r} is not in the keyring")
    except (ValueError, KeyError, TypeError) as exc:
        raise EncryptionKeyError(f"keyring {path} is invalid: {exc}") from None
    return Keyring(keys, active)


def parse_keyring_json(path: str, raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise EncryptionKeyError(f"keyring {path} is invalid: {exc}") from None
    if not isinstance(doc, dict):
        raise EncryptionKeyError(f"keyring {path} is invalid: not a JSON object")
    return doc


def write_keyring(path: str, keyring: Keyring, *, exclusive: bool) -> None:
    """Write atomically (temp file, fsync, rename, fsync of the directory), mode 0600."""
    write_private_file(path, keyring.to_json(), exclusive=exclusive)


def read_private_file(path: str, what: str = "keyring") -> bytes:
    """A keyring file's bytes, refused when group or others may access it (loom/secretfile.py
    owns the rule)."""
    try:
        return read_secret(path, what)
    except SecretFileError as e:
        raise EncryptionKeyError(str(e)) from None


def write_private_file(path: str, data: bytes, *, exclusive: bool) -> None:
    """Write atomically (temp file, fsync, rename, fsync of the directory), mode 0600."""
    tmp = f"{path}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    if exclusive and os.path.exists(path):
        raise FileExistsError(f"keyring {path} already exists")
    fd = os.open(tmp, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class FileCipher:
    """AES-256-GCM for the records of one file, keyed by HKDF(master, salt, purpose)."""

    def __init__(self, master: bytes, salt: bytes, purpose: bytes, file_id: bytes) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=salt, info=purpose).derive(
            master
        )
        self._aead = AESGCM(key)
        self._aad = purpose + b"\x00" + file_id

    @staticmethod
    def _nonce(counter: int) -> bytes:
        return counter.to_bytes(12, "big")

    def seal(self, counter: int, rtype: int, plaintext: bytes) -> bytes:
        return self._aead.encrypt(
            self._nonce(counter), plaintext, self._aad + struct.pack("<B", rtype)
        )

    def open(self, counter: int, rtype: int, ciphertext: bytes) -> bytes:
        """Decrypt; raises `cryptography.exceptions.InvalidTag` on any mismatch."""
        return self._aead.decrypt(
            self._nonce(counter), ciphertext, self._aad + struct.pack("<B", rtype)
        )

    def check_tag(self) -> bytes:
        """A tag over nothing at counter 0: proves at open time that the key is right."""
        return self.seal(0, 0, b"")

    def key_matches(self, tag: bytes) -> bool:
        try:
            self.open(0, 0, tag)
        except InvalidTag:
            return False
        return True


def new_salt() -> bytes:
    return os.urandom(SALT_SIZE)
