"""Random session ids, API tokens and link tokens; only their SHA-256 hashes are stored.

All are 32 bytes (256 bits) from `secrets`, base64url without padding (43 characters). A plain
hash is enough for secrets of this size: nobody can search 2^256 values, so a slow hash would
only cost each request time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

__all__ = [
    "API_TOKEN_PREFIX",
    "TOKEN_BYTES",
    "new_api_token",
    "new_link_token",
    "new_session_id",
    "token_hash",
    "tokens_equal",
]

TOKEN_BYTES: Final = 32
# Lets secret scanners and people recognise a leaked Homeport API token.
API_TOKEN_PREFIX: Final = "hp_"  # noqa: S105 - a public prefix, not a secret


def _utf8(s: str) -> bytes:
    # surrogatepass: tokens come from requests; a malformed one must hash or compare, not raise.
    return s.encode("utf-8", "surrogatepass")


def token_hash(token: str) -> str:
    """SHA-256 hex of `token` (UTF-8), the form in which tokens and session ids are stored."""
    return hashlib.sha256(_utf8(token)).hexdigest()


def tokens_equal(a: str, b: str) -> bool:
    """Whether `a` and `b` are equal, in time that does not depend on where they differ."""
    return hmac.compare_digest(_utf8(a), _utf8(b))


def new_session_id() -> str:
    """A new session id: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def new_api_token() -> tuple[str, str]:
    """(token to show once, "hp_" + 256 random bits base64url; its SHA-256 hex to store)."""
    token = API_TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    return token, token_hash(token)


def new_link_token() -> tuple[str, str]:
    """(token for an invitation or reset link, 256 random bits base64url; SHA-256 hex to store)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, token_hash(token)
