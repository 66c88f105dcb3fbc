"""Password rules and argon2id hashing (SECURITY.md, "Accounts"; NIST SP 800-63B rev 4 §3.1.1).

Rules: 8 to 256 Unicode code points after NFC normalisation, any printable characters and spaces,
no composition rules; refused if it is a common password, the user's own name or email
address, or one character repeated. Hashes are argon2id with explicit parameters.

Every function normalises to NFC before looking at or hashing a password, so the same password
typed on systems that compose characters differently (macOS gives NFD) matches.

Hashing and verifying cost about 100 ms of CPU and 64 MiB each: call them off the event loop
(`asyncio.to_thread`) and bound how many run at once.
"""

from __future__ import annotations

import base64
import secrets
import sys
import unicodedata
from enum import StrEnum
from pathlib import Path
from typing import Final

from argon2 import PasswordHasher, Type, extract_parameters
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from argon2.low_level import ARGON2_VERSION

from services.identity import common_passwords
from services.identity.errors import IdentityInvalid

__all__ = [
    "COMMON_PASSWORD_COUNT",
    "DEFAULT",
    "HASH_LEN",
    "MAX_LENGTH",
    "MAX_MEMORY_COST_KIB",
    "MEMORY_COST_KIB",
    "MIN_LENGTH",
    "MIN_MEMORY_COST_KIB",
    "PARALLELISM",
    "SALT_LEN",
    "TIME_COST",
    "Hasher",
    "PasswordRejected",
    "Reason",
    "check_password",
    "hash_password",
    "is_common_password",
    "memory_cost_ok",
    "needs_rehash",
    "verify_dummy",
    "verify_password",
]

MIN_LENGTH: Final = 8
MAX_LENGTH: Final = 256

# argon2id: 64 MiB, 2 passes, 1 lane. Above the bar (m >= 19 MiB, t >= 2, p = 1; OWASP's
# minimum) with room to spare, and still about 100 ms per verify on the 2-core test machine.
MEMORY_COST_KIB: Final = 65536
MIN_MEMORY_COST_KIB: Final = 19456  # 19 MiB: SECURITY.md's bar (HP_PASSWORD_MEMORY_KIB >= it)
MAX_MEMORY_COST_KIB: Final = 4 * 2**20  # 4 GiB: argon2's own limit is far above any server's
TIME_COST: Final = 2
PARALLELISM: Final = 1
HASH_LEN: Final = 32
SALT_LEN: Final = 16

_SERVICE_NAME: Final = "homeport"

# Control characters (tab, line breaks, NUL, DEL, C1), lone surrogates (not encodable as
# UTF-8) and the Unicode line/paragraph separators. Format characters (Cf) stay allowed: the
# zero-width joiner is part of many emoji.
_REFUSED_CATEGORIES: Final = frozenset({"Cc", "Cs", "Zl", "Zp"})


class Reason(StrEnum):
    """Which rule refused a password."""

    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    CONTROL_CHARACTER = "control_character"
    COMMON = "common"
    USERNAME = "username"
    EMAIL = "email"
    SERVICE_NAME = "service_name"
    REPETITIVE = "repetitive"


class PasswordRejected(IdentityInvalid):
    """A password that breaks a rule; `field` is always "password", `reason` names the rule."""

    def __init__(self, message: str, *, reason: Reason | None = None) -> None:
        super().__init__(message, field="password")
        self.reason = reason


def _load_common() -> tuple[str, int]:
    # Built from zxcvbn's list once, then read from the services' byte-code cache where there is
    # one (common_passwords.py: checked against the installed list at each start).
    prefix = sys.pycache_prefix
    common, count = common_passwords.load(
        None if prefix is None else Path(prefix), MIN_LENGTH, MAX_LENGTH
    )
    if count < 3000:
        raise RuntimeError(
            f"the common-password list from zxcvbn has only {count} entries of "
            f"{MIN_LENGTH}+ characters, the bar is 3000: check the installed zxcvbn version"
        )
    return common, count


_COMMON, COMMON_PASSWORD_COUNT = _load_common()


def _is_common(folded: str) -> bool:
    # A line break is in no entry (and refused in passwords): "a\nb" must not match two.
    return "\n" not in folded and f"\n{folded}\n" in _COMMON


def _nfc(password: str) -> str:
    return unicodedata.normalize("NFC", password)


def _check_form(password: str) -> str:
    """The NFC form of `password` if its length and characters are acceptable."""
    # NFC at most triples the length of a string, so anything this long is over the limit
    # without spending time on normalising it.
    if len(password) > 4 * MAX_LENGTH:
        raise PasswordRejected(f"use at most {MAX_LENGTH} characters", reason=Reason.TOO_LONG)
    pw = _nfc(password)
    for ch in pw:
        if unicodedata.category(ch) in _REFUSED_CATEGORIES:
            raise PasswordRejected(
                f"remove the control character U+{ord(ch):04X} (such as a tab or line break); "
                "letters, digits, symbols and spaces are all allowed",
                reason=Reason.CONTROL_CHARACTER,
            )
    if len(pw) < MIN_LENGTH:
        raise PasswordRejected(
            f"use at least {MIN_LENGTH} characters; a passphrase of several words is best",
            reason=Reason.TOO_SHORT,
        )
    if len(pw) > MAX_LENGTH:
        raise PasswordRejected(f"use at most {MAX_LENGTH} characters", reason=Reason.TOO_LONG)
    return pw


def _fold(s: str) -> str:
    return _nfc(s).casefold()


def is_common_password(password: str) -> bool:
    """Whether `password` is on the list of common passwords (case-insensitive)."""
    return _is_common(_fold(password))


def check_password(password: str, *, username: str | None = None, email: str | None = None) -> None:
    """Raise PasswordRejected unless `password` may be set for this user."""
    pw = _check_form(password)
    folded = pw.casefold()
    if username and folded == _fold(username):
        raise PasswordRejected(
            "the password must not be your user name; choose another", reason=Reason.USERNAME
        )
    if email:
        address = _fold(email)
        local = address.rpartition("@")[0] if "@" in address else address
        if folded in (address, local, local.partition("+")[0]):
            raise PasswordRejected(
                "the password must not be your email address or its name part; choose another",
                reason=Reason.EMAIL,
            )
    if folded == _SERVICE_NAME:
        raise PasswordRejected(
            "the password must not be the name of this service; choose another",
            reason=Reason.SERVICE_NAME,
        )
    if len(set(pw)) == 1:
        raise PasswordRejected(
            "this password repeats a single character; choose another",
            reason=Reason.REPETITIVE,
        )
    if _is_common(folded):
        raise PasswordRejected(
            "this password is on the list of common passwords; choose another",
            reason=Reason.COMMON,
        )


def _secret(password: str) -> bytes:
    # surrogatepass: a password with a lone surrogate can never have been set (check_password
    # refuses it), but verifying one must still cost a full hash and answer False, not raise.
    return _nfc(password).encode("utf-8", "surrogatepass")


def _ascii_hash(encoded: str) -> bytes:
    try:
        return encoded.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(
            "stored password hash is not an argon2 hash: reset the user's password"
        ) from None


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def memory_cost_ok(kib: int) -> bool:
    """Whether argon2id may run at `kib` of memory here (SECURITY.md's bar and up)."""
    return MIN_MEMORY_COST_KIB <= kib <= MAX_MEMORY_COST_KIB


class Hasher:
    """argon2id at `memory_kib` (the identity service's HP_PASSWORD_MEMORY_KIB; never below
    MIN_MEMORY_COST_KIB, the bar of SECURITY.md), the other parameters fixed."""

    def __init__(self, memory_kib: int = MEMORY_COST_KIB) -> None:
        if isinstance(memory_kib, bool) or not memory_cost_ok(memory_kib):
            raise ValueError(
                f"argon2 memory {memory_kib!r} KiB is outside"
                f" {MIN_MEMORY_COST_KIB}-{MAX_MEMORY_COST_KIB}"
            )
        self.memory_kib = memory_kib
        self._argon2 = PasswordHasher(
            time_cost=TIME_COST,
            memory_cost=memory_kib,
            parallelism=PARALLELISM,
            hash_len=HASH_LEN,
            salt_len=SALT_LEN,
            encoding="utf-8",
            type=Type.ID,
        )
        # An encoding with these parameters, a random salt and a random hash: verifying a
        # password against it costs what verifying against a user's hash costs (the hash is
        # computed in full, then compared), and no known password matches it. verify_dummy
        # makes a login for an unknown user cost the same as one with a wrong password
        # (SECURITY.md: identical answers, median times within 10 %). Made without hashing
        # anything: a hash here cost every start of identity 0.1-0.2 s of CPU and 64 MiB.
        self._dummy = (
            f"$argon2id$v={ARGON2_VERSION}$m={memory_kib},t={TIME_COST},p={PARALLELISM}"
            f"${_b64(secrets.token_bytes(SALT_LEN))}${_b64(secrets.token_bytes(HASH_LEN))}"
        )

    def hash(self, password: str) -> str:
        """The argon2id encoding of `password` (`$argon2id$v=19$m=...,t=...,p=1$salt$hash`).

        Checks length and characters (PasswordRejected) but not the context rules: call
        check_password first when a user chooses a password.
        """
        _check_form(password)
        return self._argon2.hash(_secret(password))

    def verify(self, encoded: str, password: str) -> bool:
        """Whether `password` matches the stored argon2 hash `encoded` (with the parameters
        written in it). Raises ValueError if `encoded` is not an argon2 hash at all."""
        try:
            return self._argon2.verify(_ascii_hash(encoded), _secret(password))
        except VerifyMismatchError:
            return False
        except (InvalidHashError, VerificationError) as e:
            raise ValueError(
                "stored password hash is not a valid argon2 hash: reset the user's password"
            ) from e

    def needs_rehash(self, encoded: str) -> bool:
        """Whether `encoded` is weaker than these parameters (rehash at the next login)."""
        try:
            p = extract_parameters(encoded)
        except InvalidHashError as e:
            raise ValueError(
                "stored password hash is not a valid argon2 hash: reset the user's password"
            ) from e
        return (
            p.type is not Type.ID
            or p.version < 0x13
            or p.memory_cost < self.memory_kib
            or p.time_cost < TIME_COST
            or p.parallelism != PARALLELISM
            or p.hash_len < HASH_LEN
            or p.salt_len < SALT_LEN
        )

    def verify_dummy(self, password: str) -> None:
        """Spend exactly what verify spends, for a user that does not exist."""
        self.verify(self._dummy, password)


# The production parameters, for callers without a service's configuration (tools, tests).
DEFAULT: Final = Hasher()
hash_password = DEFAULT.hash
verify_password = DEFAULT.verify
needs_rehash = DEFAULT.needs_rehash
verify_dummy = DEFAULT.verify_dummy
