"""Ed25519 key files (PEM): made once with mode 0600 and never overwritten, read back with their
type checked. The catalog's signing keys and the platform's release keys both use them; each
caller words the refusal for its own users (`KeyFileError.reason` says what went wrong)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "KeyFileError",
    "make_private_key",
    "public_key_text",
    "read_private_key",
    "read_public_key",
]

Reason = Literal["exists", "unwritable", "unreadable", "not_pem", "not_ed25519"]


class KeyFileError(Exception):
    """Why a key file could not be made or read; `detail` is the system's or parser's words."""

    def __init__(self, reason: Reason, path: Path, detail: str = "") -> None:
        super().__init__(f"{path}: {reason} {detail}".strip())
        self.reason: Reason = reason
        self.path = path
        self.detail = detail


def make_private_key(path: Path) -> Ed25519PrivateKey:
    """A new Ed25519 private key written to `path` (PKCS#8 PEM, mode 0600 whatever the umask);
    a file already there is never overwritten."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise KeyFileError("exists", path) from None
    except OSError as e:
        raise KeyFileError("unwritable", path, e.strerror or str(e)) from e
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(pem)
    return key


def read_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in the unencrypted PEM file `path`."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as e:
        raise KeyFileError("unreadable", path, e.strerror or str(e)) from e
    except (ValueError, TypeError) as e:
        raise KeyFileError("not_pem", path, str(e)) from e
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError("not_ed25519", path, type(key).__name__)
    return key


def read_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM file `path`."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as e:
        raise KeyFileError("unreadable", path, e.strerror or str(e)) from e
    except (ValueError, TypeError) as e:
        raise KeyFileError("not_pem", path, str(e)) from e
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError("not_ed25519", path, type(key).__name__)
    return key


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The public half as PEM text."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
