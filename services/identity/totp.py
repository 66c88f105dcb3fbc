"""TOTP second factor (RFC 6238 over RFC 4226 HOTP, SHA-1, 6 digits, 30 s) and recovery codes.

The caller stores, per user, the secret, the last accepted time step and the recovery-code
hashes; these functions decide and never keep state.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import secrets
import struct
import time
from collections.abc import Sequence
from typing import Final
from urllib.parse import quote, urlencode

__all__ = [
    "DIGITS",
    "DRIFT_STEPS",
    "RECOVERY_CODE_BITS",
    "STEP_SECONDS",
    "match_recovery_code",
    "new_recovery_codes",
    "new_secret",
    "provisioning_uri",
    "recovery_code_hash",
    "verify_totp",
]

STEP_SECONDS: Final = 30
DIGITS: Final = 6
DRIFT_STEPS: Final = 1  # steps accepted either side of the current one
_SECRET_BYTES: Final = 20  # 160 bits, the HMAC-SHA-1 block-size recommendation of RFC 4226 §4
_MIN_SECRET_BYTES: Final = 16  # RFC 4226 §4 R6: at least 128 bits
_CODE: Final = re.compile(f"[0-9]{{{DIGITS}}}")

# Recovery codes: 16 symbols of Crockford's base32 (no i, l, o, u: nothing to misread), shown
# as xxxx-xxxx-xxxx-xxxx, 5 bits each, 80 bits per code. They are stored as plain SHA-256: a
# slow hash protects low-entropy secrets, and these are not. Someone holding the stored hashes
# must search 2^80 codes for one preimage; even against every code of a thousand users at once
# that leaves 2^66 SHA-256 evaluations, decades of a large GPU farm. And a recovery code only
# replaces the second factor: the argon2-hashed password is still needed.
_RC_ALPHABET: Final = "0123456789abcdefghjkmnpqrstvwxyz"
_RC_GROUPS: Final = 4
_RC_GROUP_LEN: Final = 4
_RC_LEN: Final = _RC_GROUPS * _RC_GROUP_LEN
RECOVERY_CODE_BITS: Final = _RC_LEN * 5
_RC_SHAPE: Final = re.compile(f"[{_RC_ALPHABET}]{{{_RC_LEN}}}")
_RC_TYPO: Final = str.maketrans({"o": "0", "i": "1", "l": "1"})
_RC_IGNORED: Final = re.compile(r"[\s\-_]+")


def new_secret() -> str:
    """A new TOTP secret: 160 random bits as unpadded upper-case base32 (32 characters)."""
    return base64.b32encode(secrets.token_bytes(_SECRET_BYTES)).decode("ascii")


def _key(secret: str) -> bytes:
    s = "".join(secret.split()).upper().rstrip("=")
    try:
        key = base64.b32decode(s + "=" * (-len(s) % 8))
    except (binascii.Error, ValueError) as e:
        raise ValueError("TOTP secret is not base32: enrol the second factor again") from e
    if len(key) < _MIN_SECRET_BYTES:
        raise ValueError(
            f"TOTP secret has {len(key) * 8} bits, at least {_MIN_SECRET_BYTES * 8} are needed: "
            "enrol the second factor again"
        )
    return key


def _hotp(key: bytes, counter: int, digits: int = DIGITS) -> str:
    """RFC 4226 §5.3: HMAC-SHA-1 of the counter, dynamically truncated to `digits` digits."""
    mac = hmac.digest(key, struct.pack(">Q", counter), "sha1")
    offset = mac[-1] & 0x0F
    value = struct.unpack(">I", mac[offset : offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def _step(at: float) -> int:
    return math.floor(at / STEP_SECONDS)


def provisioning_uri(secret: str, account: str, issuer: str = "Homeport") -> str:
    """The otpauth:// URI an authenticator app scans (Key Uri Format, as Google documents it)."""
    _key(secret)
    for what, value in (("issuer", issuer), ("account", account)):
        if not value or ":" in value:
            raise ValueError(f"TOTP {what} {value!r} must be non-empty and contain no ':'")
    label = f"{quote(issuer, safe='')}:{quote(account, safe='')}"
    query = urlencode(
        {
            "secret": "".join(secret.split()).upper().rstrip("="),
            "issuer": issuer,
            "algorithm": "SHA1",
            "digits": DIGITS,
            "period": STEP_SECONDS,
        },
        quote_via=quote,
    )
    return f"otpauth://totp/{label}?{query}"


def verify_totp(
    secret: str, code: str, *, last_used_step: int | None, at: float | None = None
) -> int | None:
    """The time step `code` belongs to, within ±1 step of `at` (default: now), or None.

    A step at or before `last_used_step` is refused, so each code works once: store the step
    returned. Spaces in `code` are ignored; anything but 6 ASCII digits gives None.
    """
    if not isinstance(code, str):
        return None
    code = "".join(code.split())
    if not _CODE.fullmatch(code):
        return None
    key = _key(secret)
    now = _step(time.time() if at is None else at)
    found: int | None = None
    # Every candidate is computed and compared, whatever matched, so the time taken does not
    # say which step (if any) the code was for.
    for step in range(now - DRIFT_STEPS, now + DRIFT_STEPS + 1):
        if step < 0:
            continue
        ok = hmac.compare_digest(_hotp(key, step).encode(), code.encode())
        fresh = last_used_step is None or step > last_used_step
        if ok and fresh and found is None:
            found = step
    return found


def _normalise_recovery_code(code: str) -> str | None:
    if not isinstance(code, str):
        return None
    c = _RC_IGNORED.sub("", code).lower().translate(_RC_TYPO)
    return c if _RC_SHAPE.fullmatch(c) else None


def recovery_code_hash(code: str) -> str:
    """SHA-256 hex of a recovery code in its normal form (what new_recovery_codes stores)."""
    c = _normalise_recovery_code(code)
    if c is None:
        raise ValueError("not a recovery code: expected 16 letters and digits")
    return hashlib.sha256(c.encode("ascii")).hexdigest()


def _new_recovery_code() -> str:
    raw = "".join(secrets.choice(_RC_ALPHABET) for _ in range(_RC_LEN))
    return "-".join(raw[i : i + _RC_GROUP_LEN] for i in range(0, _RC_LEN, _RC_GROUP_LEN))


def new_recovery_codes(count: int = 10) -> tuple[list[str], list[str]]:
    """(codes to show the user once, their SHA-256 hashes to store), in the same order."""
    if not 1 <= count <= 100:
        raise ValueError(f"recovery code count {count} must be between 1 and 100")
    codes: list[str] = []
    while len(codes) < count:
        code = _new_recovery_code()
        if code not in codes:
            codes.append(code)
    return codes, [recovery_code_hash(c) for c in codes]


def match_recovery_code(code: str, hashes: Sequence[str]) -> int | None:
    """The index in `hashes` of the hash of `code`, or None; the caller deletes it (single use).

    Case, spaces and dashes do not matter, and o/i/l are read as 0/1.
    """
    c = _normalise_recovery_code(code)
    if c is None:
        return None
    digest = hashlib.sha256(c.encode("ascii")).hexdigest().encode("ascii")
    found: int | None = None
    for i, stored in enumerate(hashes):
        if not isinstance(stored, str):
            continue
        same = hmac.compare_digest(digest, stored.strip().lower().encode("ascii", "replace"))
        if same and found is None:
            found = i
    return found
