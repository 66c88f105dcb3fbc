"""Sealed values: secrets and personal data in event `data`, with keys kept outside the database.

A sealed value is the JSON-safe string
``hp:sealed:v1:<key_id>:<base64url(nonce || ciphertext+tag)>`` (AES-256-GCM, 96-bit random nonce,
associated data = the key id bytes, base64url without padding).

Key ids:
- ``p.<keyring_id>.<n>``: platform keys; `Keyring.rotate` adds generation n+1, old ones still
  unseal. Rotate well before 2**32 values per key (the bound for random 96-bit nonces).
- ``s.<random_id>.<n>``: one key per subject (a user id, …) for crypto-shredding. The random id
  says nothing about the subject; the keyring maps HMAC-SHA256(subject_key, subject) to it, so the
  keyring file does not hold subjects in clear either, not even for destroyed ones (tombstones).

Each service that seals holds a keyring file of its own, `<keyring dir>/<service>/keyring.json`
(`KEYRING_OWNERS`, `keyring_file`): a folder per service, so that a server install can hide the
others' folders from each unit (a folder stays where it is; a file is replaced at every change,
which would undo a mount that hides it). The other services (the gateway among them) hold none.
Installs from before that shared one file, `keyring.json` (`SHARED_KEYRING`): a service's keyring
that does not exist yet starts as a copy of it (`shared_keyring`), and the shared file is removed
once every owner has its copy. Installs that had `<keyring dir>/<service>.json` (one file per
service, no folders) move each into its folder (`previous_keyring`). Keys already in the
shared file stay in every copy (each service can still read what any service sealed before
the split, and destroying such a subject in its owner's copy leaves it in the others); keys
made after the split are each in one file only.
"""

from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from libs.events.errors import EventStoreError

__all__ = [
    "KEYRING_NAME",
    "KEYRING_OWNERS",
    "SEALED_PLACEHOLDER",
    "SHARED_KEYRING",
    "SHARED_OWNERS",
    "KeyDestroyed",
    "Keyring",
    "SealingError",
    "SubjectDestroyed",
    "UnknownKey",
    "is_sealed",
    "key_id_of",
    "keyring_file",
    "keyring_folder",
    "previous_keyring",
    "redact",
    "seal_fields",
    "shared_keyring",
    "unseal_fields",
]

log = logging.getLogger(__name__)

SEALED_PLACEHOLDER: Final = "[sealed]"

# The services that seal, each with its keyring file `<keyring dir>/<service>.json`.
KEYRING_OWNERS: Final = ("identity", "apps", "dns", "certs", "backup", "mail", "notify")
# The services that sealed with the one keyring all shared before each had its own: only they
# start from a copy of it (a later service starts with keys of its own, none of the others').
SHARED_OWNERS: Final = ("identity", "apps", "dns", "certs", "backup", "mail")
# The one keyring file every service shared before each had its own.
SHARED_KEYRING: Final = "keyring.json"
# A service's keyring in its own folder: <keyring dir>/<service>/keyring.json.
KEYRING_NAME: Final = "keyring.json"

_PREFIX: Final = "hp:sealed:"
_PREFIX_V1: Final = "hp:sealed:v1:"
_KEY_ID: Final = r"[ps]\.[0-9a-f]{16}\.[1-9][0-9]{0,8}"
_VALUE_V1: Final = re.compile(rf"hp:sealed:v1:(?P<key_id>{_KEY_ID}):(?P<blob>[A-Za-z0-9_-]+)")
_RANDOM_ID: Final = re.compile(r"[0-9a-f]{16}")
_GENERATION: Final = re.compile(r"[1-9][0-9]{0,8}")
_NONCE_LEN: Final = 12
_TAG_LEN: Final = 16
_KEY_LEN: Final = 32
_FORMAT: Final = 1
_DEFAULT_LOCK_TIMEOUT: Final = 10.0

_T = TypeVar("_T")


class SealingError(EventStoreError):
    """A value could not be sealed or unsealed, or the keyring is unusable."""


class UnknownKey(SealingError):
    """A sealed value names a key id that the keyring does not hold."""

    def __init__(self, key_id: str, path: Path) -> None:
        super().__init__(
            f"key {key_id} is not in keyring {path}: the value was sealed with another keyring, "
            "or this keyring file was replaced; restore the keyring the value was sealed with"
        )
        self.key_id = key_id


class KeyDestroyed(SealingError):
    """The key of a sealed value was destroyed with its subject (crypto-shredding)."""

    def __init__(self, key_id: str, destroyed_at: str, message: str | None = None) -> None:
        super().__init__(
            message
            or f"key {key_id} was destroyed at {destroyed_at} when its subject was deleted: "
            "the value can never be unsealed"
        )
        self.key_id = key_id
        self.destroyed_at = destroyed_at


class SubjectDestroyed(KeyDestroyed):
    """`Keyring.seal_for` was asked to seal for a subject whose keys were destroyed."""

    def __init__(self, key_id: str, destroyed_at: str) -> None:
        super().__init__(
            key_id,
            destroyed_at,
            f"the subject of keys {key_id} was destroyed at {destroyed_at}: "
            "nothing can be sealed for it any more",
        )


# -- the value format ---------------------------------------------------------------------------


def is_sealed(value: object) -> bool:
    """True if `value` is a string that looks like a sealed value (any format version)."""
    return isinstance(value, str) and value.startswith(_PREFIX)


def key_id_of(value: str) -> str:
    """The key id named by a sealed value."""
    return _parse(value)[0]


def _parse(value: str) -> tuple[str, bytes]:
    if not isinstance(value, str) or not value.startswith(_PREFIX):
        raise SealingError("not a sealed value: it must start with 'hp:sealed:'")
    if not value.startswith(_PREFIX_V1):
        raise SealingError("sealed value has an unknown format version: only v1 is understood")
    m = _VALUE_V1.fullmatch(value)
    if m is None:
        raise SealingError(
            "malformed sealed value: expected hp:sealed:v1:<key id>:<base64url payload>"
        )
    key_id, blob = m.group("key_id"), m.group("blob")
    try:
        raw = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
    except binascii.Error:
        raw = b""
    # Canonical encoding only, so that no two strings carry the same payload.
    if len(raw) < _NONCE_LEN + _TAG_LEN or _b64u(raw) != blob:
        raise SealingError(f"malformed sealed value (key {key_id}): the payload is not valid")
    return key_id, raw


def _b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _encrypt(key_id: str, key: bytes, plaintext: str | bytes) -> str:
    if isinstance(plaintext, str):
        data = plaintext.encode("utf-8")
    elif isinstance(plaintext, bytes):
        data = plaintext
    else:
        raise TypeError(f"only str or bytes can be sealed, not {type(plaintext).__name__}")
    nonce = os.urandom(_NONCE_LEN)
    sealed = AESGCM(key).encrypt(nonce, data, key_id.encode("ascii"))
    return f"{_PREFIX_V1}{key_id}:{_b64u(nonce + sealed)}"


def _decrypt(key_id: str, key: bytes, raw: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(raw[:_NONCE_LEN], raw[_NONCE_LEN:], key_id.encode("ascii"))
    except InvalidTag:
        raise SealingError(
            f"sealed value failed authentication (key {key_id}): it was altered, "
            "or sealed by another keyring that uses the same key id"
        ) from None


# -- the keyring file ---------------------------------------------------------------------------


# Key material is kept out of every repr, so that no key reaches a log line or a traceback.
@dataclass
class _Subject:
    id: str
    active: int
    keys: dict[int, bytes] = field(repr=False)


@dataclass(frozen=True)
class _Tombstone:
    id: str
    destroyed_at: str


@dataclass
class _State:
    keyring_id: str
    active: int
    platform: dict[int, bytes] = field(repr=False)
    subject_key: bytes = field(repr=False)
    subjects: dict[str, _Subject]
    destroyed: dict[str, _Tombstone]

    @classmethod
    def new(cls) -> _State:
        return cls(
            keyring_id=secrets.token_hex(8),
            active=1,
            platform={1: secrets.token_bytes(_KEY_LEN)},
            subject_key=secrets.token_bytes(_KEY_LEN),
            subjects={},
            destroyed={},
        )

    def random_ids(self) -> set[str]:
        return {s.id for s in self.subjects.values()} | {t.id for t in self.destroyed.values()}

    def to_json(self) -> bytes:
        doc = {
            "format": _FORMAT,
            "keyring_id": self.keyring_id,
            "active": self.active,
            "platform": {str(n): _b64(k) for n, k in sorted(self.platform.items())},
            "subject_key": _b64(self.subject_key),
            "subjects": {
                h: {
                    "id": s.id,
                    "active": s.active,
                    "keys": {str(n): _b64(k) for n, k in sorted(s.keys.items())},
                }
                for h, s in sorted(self.subjects.items())
            },
            "destroyed": {
                h: {"id": t.id, "destroyed_at": t.destroyed_at}
                for h, t in sorted(self.destroyed.items())
            },
        }
        return json.dumps(doc, indent=1).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> _State:
        """Parse a keyring file; raises ValueError saying what is wrong."""
        doc = _obj(json.loads(raw), "the file")
        if doc.get("format") != _FORMAT:
            raise ValueError(f"format is {doc.get('format')!r}, expected {_FORMAT}")
        keyring_id = _random_id(doc.get("keyring_id"), "keyring_id")
        platform = _keys(doc.get("platform"), "platform")
        active = _generation(doc.get("active"), "active")
        if active not in platform:
            raise ValueError(f"active platform key {active} is not in platform")
        subjects: dict[str, _Subject] = {}
        for h, entry in _obj(doc.get("subjects"), "subjects").items():
            e = _obj(entry, f"subjects.{h}")
            keys = _keys(e.get("keys"), f"subjects.{h}.keys")
            s_active = _generation(e.get("active"), f"subjects.{h}.active")
            if s_active not in keys:
                raise ValueError(f"subjects.{h}.active names a missing key")
            subjects[h] = _Subject(_random_id(e.get("id"), f"subjects.{h}.id"), s_active, keys)
        destroyed: dict[str, _Tombstone] = {}
        for h, entry in _obj(doc.get("destroyed"), "destroyed").items():
            e = _obj(entry, f"destroyed.{h}")
            when = e.get("destroyed_at")
            if not isinstance(when, str):
                raise ValueError(f"destroyed.{h}.destroyed_at is not a string")
            destroyed[h] = _Tombstone(_random_id(e.get("id"), f"destroyed.{h}.id"), when)
        if subjects.keys() & destroyed.keys():
            raise ValueError("a subject is both live and destroyed")
        state = cls(
            keyring_id=keyring_id,
            active=active,
            platform=platform,
            subject_key=_key(doc.get("subject_key"), "subject_key"),
            subjects=subjects,
            destroyed=destroyed,
        )
        if len(state.random_ids()) != len(subjects) + len(destroyed):
            raise ValueError("two subjects share a key id")
        return state


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _obj(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} is not an object")
    return value


def _random_id(value: object, where: str) -> str:
    if not isinstance(value, str) or not _RANDOM_ID.fullmatch(value):
        raise ValueError(f"{where} is not 16 lowercase hex digits")
    return value


def _generation(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 10**9:
        raise ValueError(f"{where} is not a key generation (a positive integer)")
    return value


def _key(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{where} is not a string")
    try:
        raw = base64.b64decode(value.encode("ascii"), altchars=b"-_", validate=True)
    except ValueError:
        raise ValueError(f"{where} is not base64url") from None
    if len(raw) != _KEY_LEN:
        raise ValueError(f"{where} is not a {_KEY_LEN}-byte key")
    return raw


def _keys(value: object, where: str) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for n, k in _obj(value, where).items():
        if not _GENERATION.fullmatch(n):
            raise ValueError(f"{where} has a key generation {n!r} that is not a number")
        out[_generation(int(n), f"{where}.{n}")] = _key(k, f"{where}.{n}")
    if not out:
        raise ValueError(f"{where} holds no key")
    return out


def _check_file(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise SealingError(f"keyring {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise SealingError(
            f"keyring {path} has mode {mode:04o}: it holds secret keys and must not be "
            f"accessible to group or others; check who read it, then chmod 600 {path}"
        )


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Fd:
    """The open keyring file this Keyring last loaded (closed by `Keyring.close` or at GC)."""

    def __init__(self) -> None:
        self.fd = -1

    def replace(self, fd: int) -> None:
        old, self.fd = self.fd, fd
        if old >= 0:
            os.close(old)

    def close(self) -> None:
        self.replace(-1)


# -- the keyring ----------------------------------------------------------------------------------


class Keyring:
    """Platform and per-subject AES-256-GCM keys in a JSON file (mode 0600) outside the database.

    Blocking file I/O (fsync on every change); async code calls the changing methods in a thread.
    """

    # Invariants, so that two Keyrings on one file (threads or processes) never lose a key:
    # - the file is only ever replaced whole (temp file, fsync, rename, fsync dir), never edited;
    # - every change happens under an exclusive flock on `<file>.lock`, on state re-read from disk
    #   inside that lock;
    # - each Keyring keeps the file it loaded open, so that inode cannot be reused: when the path
    #   names another inode, another Keyring has changed the file and this one reloads before
    #   using any key. Hence a destroyed subject is unreadable by every Keyring on its next call.

    def __init__(
        self, path: str | os.PathLike[str], *, lock_timeout: float = _DEFAULT_LOCK_TIMEOUT
    ) -> None:
        """Use `Keyring.open`."""
        self._path = Path(path).absolute()
        self._lock_path = self._path.with_name(self._path.name + ".lock")
        self._lock_timeout = lock_timeout
        self._mutex = threading.Lock()
        self._file = _Fd()
        self._finalizer = weakref.finalize(self, self._file.close)
        self._state: _State
        self._by_id: dict[str, str]
        try:
            self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise SealingError(
                f"cannot create the directory of keyring {self._path}: {e.strerror}"
            ) from e
        previous, shared = previous_keyring(self._path), shared_keyring(self._path)
        with self._file_lock():
            loaded = self._read(missing_ok=True)
            for earlier in (previous, shared):
                if loaded is None and earlier is not None and _adopt(earlier, self._path):
                    loaded = self._read(missing_ok=False)
            if loaded is None:
                state = _State.new()
                loaded = (self._write(state), state)
                log.info("created keyring %s with platform key %s", self._path, _platform_id(state))
        self._install(*loaded)
        if previous is not None:  # this service's alone: its copy is in the folder now
            for gone in (previous, previous.with_name(previous.name + ".lock")):
                with suppress(FileNotFoundError):
                    os.unlink(gone)
            log.info("moved keyring %s to %s", previous, self._path)
        if shared is not None:
            _retire(shared, self._path.parent.parent)

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, lock_timeout: float = _DEFAULT_LOCK_TIMEOUT
    ) -> Keyring:
        """Open the keyring at `path`, creating it (mode 0600, one platform key) if missing:
        as a copy of the shared keyring of an older install if there is one (`shared_keyring`)."""
        return cls(path, lock_timeout=lock_timeout)

    @property
    def path(self) -> Path:
        """The keyring file."""
        return self._path

    @property
    def active_key_id(self) -> str:
        """The platform key id that `seal` uses now."""
        with self._mutex:
            self._refresh()
            return _platform_id(self._state)

    def close(self) -> None:
        """Close the keyring file; the Keyring is unusable afterwards."""
        with self._mutex:
            self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Keyring {self._path}>"

    # sealing

    def seal(self, plaintext: str | bytes) -> str:
        """Seal `plaintext` (str as UTF-8) with the active platform key."""
        with self._mutex:
            self._refresh()
            key_id, key = _platform_id(self._state), self._state.platform[self._state.active]
        return _encrypt(key_id, key, plaintext)

    def seal_for(self, subject: str, plaintext: str | bytes) -> str:
        """Seal `plaintext` with the key of `subject` (created on first use), for crypto-shredding.

        Raises SubjectDestroyed if the subject's keys were destroyed.
        """
        _check_subject(subject)
        with self._mutex:
            self._refresh()
            digest = self._digest(subject)
            if digest in self._state.subjects:
                key_id, key = _subject_key(self._state, digest)
            else:
                key_id, key = self._change(lambda st: _add_subject(st, digest))
        return _encrypt(key_id, key, plaintext)

    def unseal(self, value: str) -> bytes:
        """The plaintext bytes of a sealed value.

        Raises UnknownKey, KeyDestroyed, or SealingError if the value is malformed or was altered.
        """
        key_id, raw = _parse(value)
        with self._mutex:
            self._refresh()
            key = self._key_for(key_id)
        return _decrypt(key_id, key, raw)

    def unseal_str(self, value: str) -> str:
        """The plaintext of a sealed value as text (UTF-8)."""
        raw = self.unseal(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SealingError(
                f"sealed value (key {key_id_of(value)}) holds bytes, not UTF-8 text: use unseal"
            ) from None

    def blind_index(self, purpose: str, value: str) -> str:
        """A keyed hash of `value` for equality look-ups of data that is stored only sealed.

        HMAC-SHA256 under a key derived from the keyring's subject key and `purpose`, so indexes
        of different purposes never match each other, and without the keyring nobody can test
        a guess. Stable for the life of the keyring (rotation does not change it).
        """
        if not purpose or ":" in purpose:
            raise SealingError("a blind index purpose is a non-empty name without ':'")
        with self._mutex:
            self._refresh()
            key = hmac.new(
                self._state.subject_key, f"blind-index:{purpose}".encode(), hashlib.sha256
            ).digest()
        return hmac.new(key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    # key management

    def rotate(self) -> str:
        """Add a new active platform key and return its id; older keys still unseal."""

        def add(st: _State) -> tuple[str, bool]:
            st.active = max(st.platform) + 1
            st.platform[st.active] = secrets.token_bytes(_KEY_LEN)
            return _platform_id(st), True

        with self._mutex:
            key_id = self._change(add)
        log.info("rotated platform key of keyring %s: active key is now %s", self._path, key_id)
        return key_id

    def destroy_subject(self, subject: str) -> tuple[str, ...]:
        """Delete the keys of `subject` from the file durably; return the key ids destroyed.

        Its values can never be unsealed again and nothing more can be sealed for it. A tombstone
        without key material records the subject (as an HMAC) and its key id. Idempotent.
        The old file's blocks are freed, not overwritten: the filesystem may keep them until reused
        (and until every other Keyring on this file has made its next call, see the invariants).
        """
        _check_subject(subject)
        with self._mutex:
            self._refresh()
            digest = self._digest(subject)
            gone = self._change(lambda st: _destroy_subject(st, digest))
        if gone:
            log.info("destroyed subject keys %s in keyring %s", ", ".join(gone), self._path)
        return gone

    # internals; every method below runs with self._mutex held

    def _digest(self, subject: str) -> str:
        """The keyring's name for `subject`: HMAC-SHA256 under the keyring's subject key."""
        return hmac.new(
            self._state.subject_key, subject.encode("utf-8", "surrogatepass"), hashlib.sha256
        ).hexdigest()

    def _key_for(self, key_id: str) -> bytes:
        kind, random_id, generation = key_id.split(".")
        n = int(generation)
        st = self._state
        if kind == "p":
            if random_id == st.keyring_id and n in st.platform:
                return st.platform[n]
            raise UnknownKey(key_id, self._path)
        digest = self._by_id.get(random_id)
        if digest is not None:
            tomb = st.destroyed.get(digest)
            if tomb is not None:
                raise KeyDestroyed(key_id, tomb.destroyed_at)
            key = st.subjects[digest].keys.get(n)
            if key is not None:
                return key
        raise UnknownKey(key_id, self._path)

    def _refresh(self) -> None:
        """Reload the file if another Keyring has replaced it since this one loaded it."""
        if self._file.fd < 0:
            raise SealingError(f"keyring {self._path} is closed")
        try:
            on_disk = os.lstat(self._path)
        except FileNotFoundError:
            raise SealingError(
                f"keyring {self._path} was removed while in use: restore it from a backup"
            ) from None
        except OSError as e:
            raise SealingError(f"cannot stat keyring {self._path}: {e.strerror}") from e
        _check_file(self._path, on_disk)  # also catches a chmod of the file this Keyring holds
        mine = os.fstat(self._file.fd)
        if (on_disk.st_dev, on_disk.st_ino) != (mine.st_dev, mine.st_ino):
            loaded = self._read(missing_ok=False)
            assert loaded is not None
            self._install(*loaded)

    def _change(self, fn: Callable[[_State], tuple[_T, bool]]) -> _T:
        """Apply `fn` to the state read from disk under the file lock; write it if it says so."""
        if self._file.fd < 0:
            raise SealingError(f"keyring {self._path} is closed")
        with self._file_lock():
            loaded = self._read(missing_ok=False)
            assert loaded is not None
            fd, st = loaded
            try:
                result, changed = fn(st)
                if changed:
                    fd, old = self._write(st), fd
                    os.close(old)
            except BaseException:
                os.close(fd)
                raise
            self._install(fd, st)
        return result

    def _install(self, fd: int, st: _State) -> None:
        self._file.replace(fd)
        self._state = st
        self._by_id = {s.id: h for h, s in st.subjects.items()}
        self._by_id.update((t.id, h) for h, t in st.destroyed.items())

    def _read(self, *, missing_ok: bool) -> tuple[int, _State] | None:
        """Open and parse the keyring file; the caller owns the returned descriptor."""
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if missing_ok:
                return None
            raise SealingError(
                f"keyring {self._path} was removed while in use: restore it from a backup"
            ) from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise SealingError(
                    f"keyring {self._path} is a symbolic link: point the configuration at the "
                    "real file"
                ) from None
            raise SealingError(f"cannot open keyring {self._path}: {e.strerror}") from e
        try:
            _check_file(self._path, os.fstat(fd))
            raw = _read_all(fd)
            try:
                st = _State.from_json(raw)
            except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError included
                raise SealingError(f"keyring {self._path} is not valid: {e}") from None
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def _write(self, st: _State) -> int:
        """Replace the keyring file atomically and durably; returns a descriptor of the new file."""
        tmp = self._path.with_name(f".{self._path.name}.{secrets.token_hex(6)}.tmp")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o600)
        except OSError as e:
            raise SealingError(f"cannot write keyring {self._path}: {e.strerror}") from e
        try:
            os.fchmod(fd, 0o600)
            _write_all(fd, st.to_json())
            os.fsync(fd)
            os.replace(tmp, self._path)
            _fsync_dir(self._path.parent)
        except BaseException as e:
            os.close(fd)
            with suppress(OSError):
                os.unlink(tmp)
            if isinstance(e, OSError):
                raise SealingError(f"cannot write keyring {self._path}: {e.strerror}") from e
            raise
        return fd

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Exclusive flock on `<keyring>.lock`, waiting at most `lock_timeout` seconds."""
        try:
            fd = os.open(
                self._lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
        except OSError as e:
            raise SealingError(f"cannot open lock file {self._lock_path}: {e.strerror}") from e
        try:
            deadline = time.monotonic() + self._lock_timeout
            delay = 0.001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise SealingError(
                            f"timed out after {self._lock_timeout:g} s waiting for the lock on "
                            f"{self._lock_path}: is another process stuck while holding it?"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.02)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def keyring_file(directory: str | os.PathLike[str], owner: str) -> Path:
    """The keyring file of service `owner` in the keyring folder `directory`."""
    if owner not in KEYRING_OWNERS:
        raise SealingError(
            f"{owner!r} holds no sealing keys: only {', '.join(KEYRING_OWNERS)} have a keyring"
        )
    return Path(directory) / owner / KEYRING_NAME


def keyring_folder(path: str | os.PathLike[str]) -> tuple[Path, str] | None:
    """(the keyring folder, the owner) of a service keyring `path` =
    `<...>/keyring/<owner>/keyring.json`; None for any other path."""
    path = Path(path).absolute()
    owner, folder = path.parent.name, path.parent.parent
    if path.name != KEYRING_NAME or owner not in KEYRING_OWNERS or folder.name != "keyring":
        return None
    return folder, owner


def shared_keyring(path: str | os.PathLike[str]) -> Path | None:
    """The keyring file all services shared before, that service keyring `path` starts from.

    Only for `path` = `<...>/keyring/<owner>/keyring.json`: `<...>/keyring/keyring.json` (a
    server, /var/lib/homeport/keyring/) or else `<...>/keyring.json` (an embedded data dir),
    whichever is there; None if neither is, or for any other path."""
    found = keyring_folder(path)
    if found is None or found[1] not in SHARED_OWNERS:
        return None
    folder = found[0]
    for candidate in (folder / SHARED_KEYRING, folder.parent / SHARED_KEYRING):
        if os.path.lexists(candidate):
            return candidate
    return None


def previous_keyring(path: str | os.PathLike[str]) -> Path | None:
    """`<...>/keyring/<owner>.json`, where the service keyring `path` was before each had a
    folder, if it is there; None otherwise."""
    found = keyring_folder(path)
    if found is None:
        return None
    folder, owner = found
    candidate = folder / f"{owner}.json"
    return candidate if os.path.lexists(candidate) else None


def _adopt(shared: Path, path: Path) -> bool:
    """Copy the shared keyring `shared` to the missing `path` (the caller holds path's lock).

    Byte for byte, checked first like any keyring (a regular file, 0600, valid), never through
    a link, and never over a file already at `path` (O_EXCL on a temporary, then link(2)).
    False if the shared file went away meanwhile."""
    try:
        fd = os.open(shared, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise SealingError(f"cannot open the shared keyring {shared}: {e.strerror}") from e
    try:
        _check_file(shared, os.fstat(fd))
        raw = _read_all(fd)
    finally:
        os.close(fd)
    try:
        _State.from_json(raw)
    except ValueError as e:
        raise SealingError(f"the shared keyring {shared} is not valid: {e}") from None
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600)
        try:
            os.fchmod(fd, 0o600)
            _write_all(fd, raw)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp, path, follow_symlinks=False)
        _fsync_dir(path.parent)
        log.info("keyring %s starts as a copy of the shared keyring %s", path, shared)
    except FileExistsError:
        pass  # put there without the lock (a restore): that one is kept
    except OSError as e:
        raise SealingError(f"cannot copy the shared keyring to {path}: {e.strerror}") from e
    finally:
        with suppress(OSError):
            os.unlink(tmp)
    return True


def _retire(shared: Path, directory: Path) -> None:
    """Remove the shared keyring once every owner in `directory` has its own file."""
    if not all(os.path.lexists(keyring_file(directory, o)) for o in SHARED_OWNERS):
        return
    for gone in (shared, shared.with_name(shared.name + ".lock")):
        with suppress(FileNotFoundError):
            os.unlink(gone)
    log.info("removed the shared keyring %s: every service has a keyring of its own", shared)


def _platform_id(st: _State) -> str:
    return f"p.{st.keyring_id}.{st.active}"


def _check_subject(subject: str) -> None:
    if not isinstance(subject, str) or not subject:
        raise SealingError("a subject must be a non-empty string (e.g. a user id)")


def _subject_key(st: _State, digest: str) -> tuple[str, bytes]:
    s = st.subjects[digest]
    return f"s.{s.id}.{s.active}", s.keys[s.active]


def _add_subject(st: _State, digest: str) -> tuple[tuple[str, bytes], bool]:
    """The key of subject `digest`, created if missing; says whether the state changed."""
    tomb = st.destroyed.get(digest)
    if tomb is not None:
        raise SubjectDestroyed(f"s.{tomb.id}.*", tomb.destroyed_at)
    if digest in st.subjects:  # another Keyring added it since this one last loaded the file
        return _subject_key(st, digest), False
    st.subjects[digest] = _Subject(_new_random_id(st), 1, {1: secrets.token_bytes(_KEY_LEN)})
    return _subject_key(st, digest), True


def _destroy_subject(st: _State, digest: str) -> tuple[tuple[str, ...], bool]:
    """Replace the keys of subject `digest` by a tombstone; says which key ids went."""
    if digest in st.destroyed:
        return (), False
    live = st.subjects.pop(digest, None)
    random_id = live.id if live is not None else _new_random_id(st)
    gone = tuple(f"s.{random_id}.{n}" for n in sorted(live.keys)) if live is not None else ()
    st.destroyed[digest] = _Tombstone(random_id, datetime.now(UTC).isoformat(timespec="seconds"))
    return gone, True


def _new_random_id(st: _State) -> str:
    taken = st.random_ids()
    while (random_id := secrets.token_hex(8)) in taken:
        pass
    return random_id


# -- fields of event data ------------------------------------------------------------------------


def seal_fields(
    data: Mapping[str, Any],
    fields: Iterable[str],
    keyring: Keyring,
    subject: str | None = None,
) -> dict[str, Any]:
    """A copy of `data` with the named string fields sealed (with `subject`'s key if given).

    A field is a key or a dotted path into nested objects ("dns.api_token"). Missing fields,
    None and values already sealed are left alone; a non-string value is an error.
    """

    def seal_one(path: str, value: Any) -> Any:
        if value is None or is_sealed(value):
            return value
        if not isinstance(value, str):
            raise SealingError(
                f"field {path!r} is a {type(value).__name__}: only strings can be sealed; "
                "encode the value as a string first"
            )
        return keyring.seal(value) if subject is None else keyring.seal_for(subject, value)

    return _map_fields(data, fields, seal_one)


def unseal_fields(
    data: Mapping[str, Any], fields: Iterable[str], keyring: Keyring
) -> dict[str, Any]:
    """A copy of `data` with the named sealed fields unsealed to text; other values left alone."""

    def unseal_one(path: str, value: Any) -> Any:
        return keyring.unseal_str(value) if is_sealed(value) else value

    return _map_fields(data, fields, unseal_one)


def redact(data: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `data` with every sealed string, at any depth, replaced by "[sealed]"."""
    return {k: _redact(v) for k, v in data.items()}


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        return SEALED_PLACEHOLDER if is_sealed(value) else value
    if isinstance(value, Mapping):
        return {k: _redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


def _map_fields(
    data: Mapping[str, Any], fields: Iterable[str], fn: Callable[[str, Any], Any]
) -> dict[str, Any]:
    if isinstance(fields, str):
        raise TypeError("fields must be an iterable of field names, not one string")
    out = dict(data)
    for path in fields:
        *parents, last = path.split(".")
        node = out
        for name in parents:
            child = node.get(name)
            if not isinstance(child, Mapping):
                break
            copy = dict(child)  # copy on write: the caller's data is not changed
            node[name] = copy
            node = copy
        else:
            if last in node:
                node[last] = fn(path, node[last])
    return out
