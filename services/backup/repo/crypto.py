"""Keys and sealing (see ../FORMAT.md): age X25519 recipients wrap a random data key per backup
session; blobs are ChaCha20-Poly1305 under a key derived from it with HKDF; chunks are named by
BLAKE2b-256 keyed with the repository's id key. No primitive is implemented here."""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from typing import Any

import pyrage
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pyrage import x25519

from services.backup.repo.errors import IntegrityError, KeyInvalid, WrongIdentity

__all__ = [
    "BLOB_AAD",
    "SessionKeys",
    "chunk_id",
    "new_identity",
    "parse_identity",
    "parse_recipient",
    "unwrap_data_key",
    "wrap_data_key",
]

NONCE_SIZE = 12
TAG_SIZE = 16
BLOB_AAD = b"homeport-backup v1 blob "
_INFO_BLOB = b"homeport-backup v1 blob key"
_INFO_MAC = b"homeport-backup v1 snapshot mac key"


def new_identity() -> tuple[str, str]:
    """A fresh age X25519 key pair: (secret `AGE-SECRET-KEY-1…`, recipient `age1…`)."""
    ident = x25519.Identity.generate()
    return str(ident), str(ident.to_public())


def parse_recipient(text: str) -> Any:
    """An age X25519 recipient (`age1…`), or KeyInvalid."""
    try:
        return x25519.Recipient.from_str(text.strip())
    except (pyrage.RecipientError, ValueError) as e:
        raise KeyInvalid(f"not an age public key (age1…): {text[:12]!r}…") from e


def parse_identity(text: str) -> Any:
    """An age X25519 identity (`AGE-SECRET-KEY-1…`), or KeyInvalid (the key is never quoted)."""
    try:
        return x25519.Identity.from_str(text.strip())
    except (pyrage.IdentityError, ValueError) as e:
        raise KeyInvalid("not an age secret key (AGE-SECRET-KEY-1…)") from e


def wrap_data_key(data_key: bytes, recipients: list[str]) -> bytes:
    """The age file (binary) holding `data_key` for every recipient."""
    return bytes(pyrage.encrypt(data_key, [parse_recipient(r) for r in recipients]))


def unwrap_data_key(wrapped: bytes, identity: str, session: str) -> bytes:
    try:
        key = bytes(pyrage.decrypt(wrapped, [parse_identity(identity)]))
    except pyrage.DecryptError as e:
        if "no matching keys" in str(e).lower():
            raise WrongIdentity(
                f"the key given is not one the backup {session} was encrypted to:"
                " use the secret key shown when backups were set up"
            ) from e
        raise IntegrityError(f"the key object of backup session {session} is damaged") from e
    if len(key) != 32:
        raise IntegrityError(f"the key object of backup session {session} is malformed")
    return key


def chunk_id(id_key: bytes, data: bytes | memoryview) -> bytes:
    """The chunk's name: BLAKE2b-256 keyed with the repository id key."""
    return hashlib.blake2b(data, key=id_key, digest_size=32).digest()


def _derive(data_key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(data_key)


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """What one backup session's data key opens: blobs and the snapshot's MAC."""

    blob: ChaCha20Poly1305
    mac_key: bytes

    @classmethod
    def from_data_key(cls, data_key: bytes) -> SessionKeys:
        return cls(ChaCha20Poly1305(_derive(data_key, _INFO_BLOB)), _derive(data_key, _INFO_MAC))

    def seal(self, cid: bytes, plaintext: bytes) -> bytes:
        """nonce ‖ ciphertext ‖ tag, bound to the chunk id by the associated data."""
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self.blob.encrypt(nonce, plaintext, BLOB_AAD + cid)

    def open(self, cid: bytes, blob: bytes) -> bytes:
        if len(blob) < NONCE_SIZE + TAG_SIZE:
            raise InvalidTag
        return self.blob.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], BLOB_AAD + cid)

    def mac(self, data: bytes) -> str:
        return hmac.new(self.mac_key, data, hashlib.sha256).hexdigest()
