"""Session ids, API tokens and link tokens."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable

import pytest

from services.identity.tokens import (
    API_TOKEN_PREFIX,
    new_api_token,
    new_link_token,
    new_session_id,
    token_hash,
    tokens_equal,
)

_URLSAFE = re.compile(r"[A-Za-z0-9_-]+")
N = 10_000


def _decode(s: str) -> bytes:
    assert _URLSAFE.fullmatch(s), s
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _session() -> str:
    return new_session_id()


def _api() -> str:
    token, _ = new_api_token()
    assert token.startswith(API_TOKEN_PREFIX)
    return token.removeprefix(API_TOKEN_PREFIX)


def _link() -> str:
    return new_link_token()[0]


@pytest.mark.parametrize("make", [_session, _api, _link], ids=["session", "api", "link"])
def test_256_random_bits_urlsafe_and_unique(make: Callable[[], str]) -> None:
    values = [make() for _ in range(N)]
    assert len(set(values)) == N
    raw = [_decode(v) for v in values]
    assert {len(r) for r in raw} == {32}
    # 32,000 bytes from a uniform source show every byte value (each expected 125 times);
    # hex digits, text or a short random part padded out would not.
    assert len({b for r in raw[:1000] for b in r}) == 256


def test_api_token_shape() -> None:
    token, stored = new_api_token()
    assert re.fullmatch(r"hp_[A-Za-z0-9_-]{43}", token)
    assert stored == hashlib.sha256(token.encode()).hexdigest()
    assert token not in stored


def test_link_token_shape() -> None:
    token, stored = new_link_token()
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert stored == hashlib.sha256(token.encode()).hexdigest()


def test_stored_hashes_are_unique() -> None:
    hashes = {new_api_token()[1] for _ in range(N)} | {new_link_token()[1] for _ in range(N)}
    assert len(hashes) == 2 * N
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes)


def test_token_hash_is_sha256_hex() -> None:
    assert token_hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert token_hash("") == hashlib.sha256(b"").hexdigest()
    assert token_hash("hp_é") == hashlib.sha256("hp_é".encode()).hexdigest()
    # A malformed token from a request hashes (to something no stored token has), never raises.
    assert len(token_hash("\ud800")) == 64


def test_tokens_equal() -> None:
    token = new_session_id()
    assert tokens_equal(token, token)
    assert tokens_equal(token, "".join(token))  # equal value, different object
    assert not tokens_equal(token, token[:-1])
    assert not tokens_equal(token, token + "x")
    assert not tokens_equal(token, new_session_id())
    assert not tokens_equal(token, "")
    assert tokens_equal("é", "é")
    assert not tokens_equal("é", "e")
    assert not tokens_equal("\ud800", token)
