"""Personal data that expires: client addresses and browser strings sealed to the key pair of
their week, whose private key is destroyed after the retention period (crypto-shredding by time).

A value is ``hp:sealed:t1:<week>:<base64url(ephemeral public key || nonce || ciphertext+tag)>``,
the week an ISO week (``2026-W49``): X25519 between an ephemeral key and the week's public key,
HKDF-SHA256 to an AES-256-GCM key, a random 96-bit nonce, the week as associated data. A sealer
keeps its ephemeral key (and the AES key derived from it) for `_REUSE_S` seconds and one week,
so a seal costs one AES-GCM rather than an X25519 exchange (about 100 us, on every command that
carries a client address); values of one sealer within that time share a key, each with its own
random nonce. Sealing needs only the week's public key, so a process that appends events holds
no secret. Values start with
``hp:sealed:`` like those of sealing.py, so `redact` and the activity log hide them.

The key file (JSON, mode 0600 or 0640, never a link) is identity's: it creates the weeks' key
pairs and destroys them; the firewall may read it (bans unseal recent failures). Next to it,
``<name>.pub.json`` (0644) holds the public keys only, for processes that only seal. A week's
private key is destroyed once the retention period has passed since the week began and the
week is over, so with the default 30 days an address is unreadable after 30 days (or, for a
retention under a week, at the end of its week). A tombstone keeps "expired" apart from
"never existed".
"""

from __future__ import annotations

import base64
import binascii
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import stat
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from libs.events.errors import EventStoreError
from libs.files import shares_with_group

if TYPE_CHECKING:  # imported where used: a process only pays for cryptography once it seals
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

__all__ = [
    "AddressReader",
    "AddressSealer",
    "PeriodError",
    "PeriodExpired",
    "PeriodKeys",
    "PublicPeriods",
    "UnknownPeriod",
    "is_period_sealed",
    "period_of",
    "public_path",
    "readable",
]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

_PREFIX: Final = "hp:sealed:t1:"
_VALUE: Final = re.compile(r"hp:sealed:t1:(?P<period>\d{4}-W\d{2}):(?P<blob>[A-Za-z0-9_-]+)")
_PERIOD: Final = re.compile(r"(?P<year>\d{4})-W(?P<week>\d{2})")
_KEY_LEN: Final = 32
_NONCE_LEN: Final = 12
_TAG_LEN: Final = 16
_REUSE_S: Final = 600.0  # how long one sealer keeps its ephemeral key (within one week)
_OPENED_MAX: Final = 256  # derived keys a reader keeps (one per sealer and 10 minutes)
_OPENED_LOCK: Final = threading.Lock()
_FORMAT: Final = 1
_WEEK: Final = timedelta(days=7)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class PeriodError(EventStoreError):
    """A value could not be sealed to its week or read back, or the key file is unusable."""


class PeriodExpired(PeriodError):
    """The key of the value's week was destroyed: the retention period is over."""

    def __init__(self, period: str, destroyed_at: str) -> None:
        super().__init__(
            f"the key of week {period} was destroyed at {destroyed_at} (retention period over): "
            "the value can never be unsealed"
        )
        self.period = period
        self.destroyed_at = destroyed_at


class UnknownPeriod(PeriodError):
    """No key of the value's week was ever in this key file."""

    def __init__(self, period: str, path: Path) -> None:
        super().__init__(
            f"week {period} has no key in {path}, nor a record of one destroyed: the value was "
            "sealed for another key file"
        )
        self.period = period


class AddressSealer(Protocol):
    """What the event store seals client addresses with (this week's public key)."""

    def seal(self, plaintext: str) -> str: ...


class AddressReader(Protocol):
    """What reads a sealed address back while its week's key exists."""

    def unseal(self, value: str) -> str: ...


# -- weeks and values -------------------------------------------------------------------------


def period_of(at: datetime) -> str:
    """The ISO week of `at` (UTC), e.g. 2026-W49: the key id."""
    year, week, _ = at.astimezone(UTC).isocalendar()
    return f"{year:04d}-W{week:02d}"


def _start(period: str) -> datetime:
    m = _PERIOD.fullmatch(period)
    if m is None:
        raise ValueError(f"{period!r} is not an ISO week such as 2026-W49")
    return datetime.fromisocalendar(int(m["year"]), int(m["week"]), 1).replace(tzinfo=UTC)


def is_period_sealed(value: object) -> bool:
    """True for a string sealed to a week's key (this module's format)."""
    return isinstance(value, str) and value.startswith(_PREFIX)


def _b64u(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _public_of(private: X25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _private_key(raw: bytes) -> X25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.from_private_bytes(raw)


def _new_pair() -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    key = X25519PrivateKey.generate()
    return key.private_bytes_raw(), _public_of(key)


def _derive(shared: bytes, ephemeral: bytes, public: bytes, period: str) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(
        algorithm=hashes.SHA256(),
        length=_KEY_LEN,
        salt=ephemeral + public,
        info=f"homeport period seal v1 {period}".encode("ascii"),
    ).derive(shared)


class _Sealer:
    """Seals to a week's public key with an ephemeral key kept for `_REUSE_S` seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: tuple[str, bytes, float, bytes, Any] | None = None

    def seal(self, period: str, public: bytes, plaintext: str) -> str:
        if not isinstance(plaintext, str):
            raise TypeError(f"only text can be sealed to a week, not {type(plaintext).__name__}")
        now = time.monotonic()
        with self._lock:
            cur = self._current
            if cur is None or cur[0] != period or cur[1] != public or now - cur[2] > _REUSE_S:
                from cryptography.hazmat.primitives.asymmetric.x25519 import (
                    X25519PrivateKey,
                    X25519PublicKey,
                )
                from cryptography.hazmat.primitives.ciphers.aead import AESGCM

                ephemeral = X25519PrivateKey.generate()
                eph_pub = _public_of(ephemeral)
                shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(public))
                aead = AESGCM(_derive(shared, eph_pub, public, period))
                cur = self._current = (period, public, now, eph_pub, aead)
        nonce = os.urandom(_NONCE_LEN)
        sealed = cur[4].encrypt(nonce, plaintext.encode("utf-8"), period.encode("ascii"))
        return f"{_PREFIX}{period}:{_b64u(cur[3] + nonce + sealed)}"


def _parse(value: str) -> tuple[str, bytes]:
    m = _VALUE.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise PeriodError("not a value sealed to a week: expected hp:sealed:t1:<week>:<payload>")
    period, blob = m["period"], m["blob"]
    try:
        raw = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
    except binascii.Error:
        raw = b""
    if len(raw) < _KEY_LEN + _NONCE_LEN + _TAG_LEN or _b64u(raw) != blob:
        raise PeriodError(f"malformed sealed value (week {period}): the payload is not valid")
    return period, raw


def _open(period: str, private: bytes, raw: bytes, opened: dict[tuple[str, bytes], Any]) -> str:
    """The text of `raw`; `opened` keeps the AES keys derived per (week, ephemeral key)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    eph_pub = raw[:_KEY_LEN]
    nonce, sealed = raw[_KEY_LEN : _KEY_LEN + _NONCE_LEN], raw[_KEY_LEN + _NONCE_LEN :]
    try:
        aead = opened.get((period, eph_pub))
        if aead is None:
            from cryptography.hazmat.primitives.asymmetric.x25519 import (
                X25519PrivateKey,
                X25519PublicKey,
            )

            key = X25519PrivateKey.from_private_bytes(private)
            shared = key.exchange(X25519PublicKey.from_public_bytes(eph_pub))
            aead = AESGCM(_derive(shared, eph_pub, _public_of(key), period))
            with _OPENED_LOCK:  # readers in threads (asyncio.to_thread) share the cache
                if len(opened) >= _OPENED_MAX:
                    opened.pop(next(iter(opened)))
                opened[(period, eph_pub)] = aead
        plain = aead.decrypt(nonce, sealed, period.encode("ascii"))
        return str(plain.decode("utf-8"))
    except (InvalidTag, ValueError):  # ValueError: an all-zero shared secret, or not UTF-8
        raise PeriodError(
            f"sealed value failed authentication (week {period}): it was altered, "
            "or sealed for another key file"
        ) from None


def readable(reader: AddressReader | None, value: object) -> str | None:
    """An address as a reader may use it: plain text as is (events from before sealing), a
    value sealed to a week unsealed while its key exists; None when it expired, cannot be
    read here, or is not text."""
    if not isinstance(value, str) or not value:
        return None
    if not value.startswith("hp:sealed:"):
        return value
    if reader is None or not is_period_sealed(value):
        return None
    try:
        return reader.unseal(value)
    except PeriodError:
        return None


# -- the key file ---------------------------------------------------------------------------------


@dataclass
class _State:
    private: dict[str, bytes] = field(default_factory=dict, repr=False)
    public: dict[str, bytes] = field(default_factory=dict)
    destroyed: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        doc = {
            "format": _FORMAT,
            "periods": {
                p: {"private": _b64u(self.private[p]), "public": _b64u(self.public[p])}
                for p in sorted(self.private)
            },
            "destroyed": dict(sorted(self.destroyed.items())),
        }
        return json.dumps(doc, indent=1).encode("utf-8") + b"\n"

    def public_json(self) -> bytes:
        doc = {"format": _FORMAT, "public": {p: _b64u(k) for p, k in sorted(self.public.items())}}
        return json.dumps(doc, indent=1).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, raw: bytes, *, public_only: bool = False) -> _State:
        """Parse a key file (or its public companion); raises ValueError saying what is wrong."""
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise ValueError(f"format is not {_FORMAT}")
        st = cls()
        if public_only:
            for p, k in _entries(doc.get("public"), "public"):
                st.public[p] = _key(k, f"public.{p}")
            return st
        for p, entry in _entries(doc.get("periods"), "periods"):
            if not isinstance(entry, dict):
                raise ValueError(f"periods.{p} is not an object")
            st.private[p] = _key(entry.get("private"), f"periods.{p}.private")
            st.public[p] = _key(entry.get("public"), f"periods.{p}.public")
            if _public_of(_private_key(st.private[p])) != st.public[p]:
                raise ValueError(f"periods.{p}: the public key is not the private key's")
        for p, when in _entries(doc.get("destroyed"), "destroyed"):
            if not isinstance(when, str):
                raise ValueError(f"destroyed.{p} is not a time")
            st.destroyed[p] = when
        if st.private.keys() & st.destroyed.keys():
            raise ValueError("a week is both live and destroyed")
        return st


def _entries(value: object, where: str) -> Iterator[tuple[str, Any]]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} is not an object")
    for p, entry in value.items():
        if not isinstance(p, str) or _PERIOD.fullmatch(p) is None:
            raise ValueError(f"{where} names {p!r}, not an ISO week such as 2026-W49")
        yield p, entry


def _key(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"{where} is not a string")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != _KEY_LEN:
        raise ValueError(f"{where} is not a {_KEY_LEN}-byte base64url key")
    return raw


def _check_file(path: Path, st: os.stat_result, *, secret: bool) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise PeriodError(
            f"key file {path} is a symbolic link: point the configuration at the real file"
        )
    if not stat.S_ISREG(st.st_mode):
        raise PeriodError(f"key file {path} is not a regular file")
    if secret and stat.S_IMODE(st.st_mode) & 0o037:
        raise PeriodError(
            f"key file {path} has mode {stat.S_IMODE(st.st_mode):04o}: it holds private "
            f"keys and must be readable by its owner (and at most its group); chmod 600 {path}"
        )


def _check_path(path: Path, *, secret: bool) -> None:
    """Refuse a link, not a file, or a loose mode at once, without reading any key."""
    try:
        _check_file(path, os.lstat(path), secret=secret)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise PeriodError(f"cannot stat key file {path}: {e.strerror}") from e


def _read(path: Path, *, secret: bool) -> tuple[os.stat_result, bytes] | None:
    """The file's identity and bytes (None if missing); a link or loose mode is refused."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise PeriodError(
                f"key file {path} is a symbolic link: point the configuration at the real file"
            ) from None
        raise PeriodError(f"cannot open key file {path}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        _check_file(path, st, secret=secret)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return st, b"".join(chunks)
    finally:
        os.close(fd)


def _replace(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` atomically and durably with `data` (a temp file renamed over it)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        with suppress(OSError):
            os.unlink(tmp)
        raise PeriodError(f"cannot write key file {path}: {e.strerror}") from e


def public_path(path: Path) -> Path:
    """Where the public keys of key file `path` are kept: `<stem>.pub.json` beside it."""
    return path.with_name(f"{path.stem}.pub.json")


class _Loaded:
    """A file's parsed state, reloaded when the file at the path is another one."""

    def __init__(self, path: Path, *, secret: bool) -> None:
        self.path = path
        self.secret = secret
        self.mutex = threading.Lock()
        self.seen: tuple[int, int, int] | None = None
        self.state = _State()

    def current(self) -> _State:
        with self.mutex:
            try:
                st = os.lstat(self.path)
                seen: tuple[int, int, int] | None = (st.st_dev, st.st_ino, st.st_mtime_ns)
            except FileNotFoundError:
                seen = None
            if seen is None or seen != self.seen:
                self._load()
            return self.state

    def reload(self) -> None:
        with self.mutex:
            self._load()

    def fresh(self) -> tuple[_State, int | None]:
        """The file parsed anew (a state of the caller's own to change) and its mode."""
        got = _read(self.path, secret=self.secret)
        if got is None:
            return _State(), None
        st, raw = got
        return self._parse(raw), stat.S_IMODE(st.st_mode)

    def _load(self) -> None:
        # the state is replaced whole, never changed in place: a reader keeps a consistent one
        got = _read(self.path, secret=self.secret)
        if got is None:
            self.seen, self.state = None, _State()
            return
        st, raw = got
        self.state = self._parse(raw)
        self.seen = (st.st_dev, st.st_ino, st.st_mtime_ns)

    def _parse(self, raw: bytes) -> _State:
        try:
            return _State.from_json(raw, public_only=not self.secret)
        except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError included
            raise PeriodError(f"key file {self.path} is not valid: {e}") from None


def _sealing_week(state: _State, now: datetime) -> str | None:
    """The week to seal for at `now`: this week's key, else next week's (made ahead)."""
    this = period_of(now)
    for period in (this, period_of(now + _WEEK)):
        if period in state.public and period not in state.destroyed:
            return period
    return None


class PeriodKeys:
    """The weeks' key pairs in one file: sealing, unsealing, and (identity) making and destroying.

    Blocking file I/O: async code calls `housekeep` in a thread. `seal` and `unseal` only
    re-read the file when another process replaced it; `seal` writes only if this week has no
    key yet (identity makes it ahead, at start and in its housekeeping).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock = _utcnow,
        writer: bool = True,
        lock_timeout: float = 10.0,
    ) -> None:
        """`writer`: identity, which creates the file and changes it; a reader (the firewall)
        never writes, and finds no keys while the file does not exist."""
        self.path = Path(path).absolute()
        self.clock = clock
        self.writer = writer
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock_timeout = lock_timeout
        self._file = _Loaded(self.path, secret=True)
        self._sealer = _Sealer()
        self._opened: dict[tuple[str, bytes], Any] = {}
        _check_path(self.path, secret=True)  # the keys are read on first use
        if writer:
            try:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as e:
                raise PeriodError(f"cannot create the directory of {self.path}: {e}") from e

    def __repr__(self) -> str:
        return f"<PeriodKeys {self.path}>"

    def seal(self, plaintext: str) -> str:
        """Seal `plaintext` to this week's public key."""
        now = self.clock()
        state = self._file.current()
        period = _sealing_week(state, now)
        if period is None:
            if not self.writer:
                raise PeriodError(f"{self.path} holds no key for this week: identity makes it")
            self.housekeep(None)
            state = self._file.current()
            period = _sealing_week(state, now)
            if period is None:  # this week's and next week's keys destroyed: a clock gone back
                raise PeriodError(f"{self.path}: the keys of this week are destroyed already")
        return self._sealer.seal(period, state.public[period], plaintext)

    def unseal(self, value: str) -> str:
        """The text of a value sealed to a week. Raises PeriodExpired once the week's key is
        destroyed, UnknownPeriod for a week this file never had, or PeriodError."""
        period, raw = _parse(value)
        state = self._file.current()
        private = state.private.get(period)
        if private is None:
            if period in state.destroyed:
                raise PeriodExpired(period, state.destroyed[period])
            raise UnknownPeriod(period, self.path)
        # the week's key checked above first: a destroyed week's derived keys are never used
        return _open(period, private, raw, self._opened)

    def weeks(self) -> tuple[str, ...]:
        """The weeks whose private key exists, oldest first."""
        return tuple(sorted(self._file.current().private))

    def housekeep(self, retention: timedelta | None) -> tuple[str, ...]:
        """Make this week's and next week's key pairs if missing; with `retention`, destroy
        the private keys of weeks that began at least `retention` ago and are over, keeping
        a tombstone. Returns the weeks destroyed."""
        if not self.writer:
            raise PeriodError(f"{self.path} is opened to read: only identity changes it")
        now = self.clock()
        with self._locked():
            st, mode = self._file.fresh()  # read anew under the lock: another may have changed it
            changed = False
            for period in (period_of(now), period_of(now + _WEEK)):
                if period not in st.private and period not in st.destroyed:
                    st.private[period], st.public[period] = _new_pair()
                    changed = True
            gone: list[str] = []
            if retention is not None:
                for period in sorted(st.private):
                    start = _start(period)
                    if start + retention <= now and start + _WEEK <= now:
                        del st.private[period], st.public[period]
                        st.destroyed[period] = now.isoformat(timespec="seconds")
                        gone.append(period)
            missing_public = not public_path(self.path).exists()
            if changed or gone or missing_public:
                # the group's read access (the firewall's) is kept; nothing more. A new file
                # in a folder readable by another group (a server's <data>/ip-keys, group
                # homeport-ipkeys, setgid: the file gets that group) starts readable by it.
                if mode is None:
                    mode = 0o640 if shares_with_group(self.path.parent) else 0o600
                _replace(self.path, st.to_json(), mode & 0o640 or 0o600)
                _replace(public_path(self.path), st.public_json(), 0o644)
                self._file.reload()
        if gone:
            log.info("destroyed the address keys of weeks %s in %s", ", ".join(gone), self.path)
        return tuple(gone)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive flock on `<file>.lock`, waiting at most `lock_timeout` seconds."""
        try:
            fd = os.open(
                self._lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
        except OSError as e:
            raise PeriodError(f"cannot open lock file {self._lock_path}: {e.strerror}") from e
        try:
            deadline = time.monotonic() + self._lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise PeriodError(
                            f"timed out waiting for the lock on {self._lock_path}"
                        ) from None
                    time.sleep(0.01)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


class PublicPeriods:
    """Sealing only, with the public keys identity publishes beside its key file (no secret)."""

    def __init__(self, path: str | os.PathLike[str], *, clock: Clock = _utcnow) -> None:
        """`path`: the `.pub.json` file (see `public_path`)."""
        self.path = Path(path).absolute()
        self.clock = clock
        self._file = _Loaded(self.path, secret=False)
        self._sealer = _Sealer()
        _check_path(self.path, secret=False)

    def __repr__(self) -> str:
        return f"<PublicPeriods {self.path}>"

    def seal(self, plaintext: str) -> str:
        """Seal `plaintext` to this week's public key (next week's if this one has none)."""
        state = self._file.current()
        period = _sealing_week(state, self.clock())
        if period is None:
            raise PeriodError(
                f"{self.path} holds no public key for this week: identity makes it at start "
                "and every few minutes; is identity running?"
            )
        return self._sealer.seal(period, state.public[period], plaintext)
