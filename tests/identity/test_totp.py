"""TOTP (RFC 6238) and recovery codes."""

from __future__ import annotations

import base64
import hashlib
import re
import time
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from services.identity import totp
from services.identity.totp import (
    match_recovery_code,
    new_recovery_codes,
    new_secret,
    provisioning_uri,
    verify_totp,
)

# RFC 6238 Appendix B: the SHA-1 key is the ASCII string "12345678901234567890".
RFC_KEY = b"12345678901234567890"
RFC_SECRET = base64.b32encode(RFC_KEY).decode()
RFC_VECTORS = [
    (59, 0x0000000000000001, "94287082"),
    (1111111109, 0x00000000023523EC, "07081804"),
    (1111111111, 0x00000000023523ED, "14050471"),
    (1234567890, 0x000000000273EF07, "89005924"),
    (2000000000, 0x0000000003F940AA, "69279037"),
    (20000000000, 0x0000000027BC86AA, "65353130"),
]
# A fixed time well inside a step, and codes around it, so every case is deterministic.
AT = 1_700_000_015.0
STEP = int(AT // 30)


def code_at(step: int, secret: str = RFC_SECRET) -> str:
    return totp._hotp(base64.b32decode(secret), step)


@pytest.mark.parametrize(("at", "step", "code8"), RFC_VECTORS)
def test_rfc6238_sha1_vectors(at: int, step: int, code8: str) -> None:
    assert int(at // 30) == step
    assert totp._hotp(RFC_KEY, step, digits=8) == code8
    # The 6-digit code is the same truncated value modulo 10^6: the last six digits.
    assert verify_totp(RFC_SECRET, code8[-6:], last_used_step=None, at=at) == step


def test_rfc4226_hotp_vectors() -> None:
    # RFC 4226 Appendix D, counters 0..9, same key.
    expected = "755224 287082 359152 969429 338314 254676 287922 162583 399871 520489".split()
    assert [totp._hotp(RFC_KEY, c) for c in range(10)] == expected


def test_one_step_of_drift_either_side_is_accepted() -> None:
    for delta in (-1, 0, 1):
        assert verify_totp(RFC_SECRET, code_at(STEP + delta), last_used_step=None, at=AT) == (
            STEP + delta
        )
    # At the edges of the current step too.
    start, end = STEP * 30.0, STEP * 30.0 + 29.999
    assert verify_totp(RFC_SECRET, code_at(STEP - 1), last_used_step=None, at=start) == STEP - 1
    assert verify_totp(RFC_SECRET, code_at(STEP + 1), last_used_step=None, at=end) == STEP + 1


@pytest.mark.parametrize("delta", [-3, -2, 2, 3])
def test_two_or_more_steps_away_are_refused(delta: int) -> None:
    code = code_at(STEP + delta)
    assert code not in {code_at(STEP + d) for d in (-1, 0, 1)}  # no accidental collision
    assert verify_totp(RFC_SECRET, code, last_used_step=None, at=AT) is None


def test_each_code_is_accepted_once() -> None:
    code = code_at(STEP)
    used = verify_totp(RFC_SECRET, code, last_used_step=None, at=AT)
    assert used == STEP
    # The same code again, within the same step or the next: refused.
    assert verify_totp(RFC_SECRET, code, last_used_step=used, at=AT) is None
    assert verify_totp(RFC_SECRET, code, last_used_step=used, at=AT + 30) is None
    # An older code still inside the drift window: refused too (steps only move forward).
    assert verify_totp(RFC_SECRET, code_at(STEP - 1), last_used_step=used, at=AT) is None
    # The next step's code is fine.
    assert verify_totp(RFC_SECRET, code_at(STEP + 1), last_used_step=used, at=AT + 30) == (STEP + 1)


def test_a_used_future_step_blocks_earlier_codes() -> None:
    # A phone running fast used step+1; the code of the current step may not follow it.
    assert verify_totp(RFC_SECRET, code_at(STEP), last_used_step=STEP + 1, at=AT) is None


@pytest.mark.parametrize(
    "code", ["", "12345", "1234567", "12a456", "abcdef", "١٢٣٤٥٦", "12345\n6x", "-12345"]
)
def test_malformed_codes_are_refused(code: str) -> None:
    assert verify_totp(RFC_SECRET, code, last_used_step=None, at=AT) is None


def test_wrong_code_and_wrong_secret_refused() -> None:
    good = code_at(STEP)
    wrong = f"{(int(good) + 1) % 1_000_000:06d}"
    assert wrong not in {code_at(STEP + d) for d in (-1, 0, 1)}
    assert verify_totp(RFC_SECRET, wrong, last_used_step=None, at=AT) is None
    other = base64.b32encode(b"another twenty bytes").decode()
    assert good not in {code_at(STEP + d, other) for d in (-1, 0, 1)}
    assert verify_totp(other, good, last_used_step=None, at=AT) is None


def test_spaces_in_a_code_are_ignored() -> None:
    code = code_at(STEP)
    spaced = f" {code[:3]} {code[3:]} "
    assert verify_totp(RFC_SECRET, spaced, last_used_step=None, at=AT) == STEP


def test_default_time_is_now() -> None:
    secret = new_secret()
    now = time.time()
    assert verify_totp(secret, code_at(int(now // 30), secret), last_used_step=None) is not None


def test_new_secret_is_160_random_bits_of_base32() -> None:
    secrets_ = {new_secret() for _ in range(1000)}
    assert len(secrets_) == 1000
    for s in list(secrets_)[:50]:
        assert re.fullmatch(r"[A-Z2-7]{32}", s)
        assert len(base64.b32decode(s)) == 20


def test_unusable_secret_is_an_error() -> None:
    with pytest.raises(ValueError, match="not base32"):
        verify_totp("not base 32!", "123456", last_used_step=None, at=AT)
    with pytest.raises(ValueError, match="at least 128"):
        verify_totp(base64.b32encode(b"short").decode(), "123456", last_used_step=None, at=AT)


def test_provisioning_uri() -> None:
    secret = new_secret()
    uri = provisioning_uri(secret, "alice@example.org", issuer="My Homeport")
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    assert unquote(parts.path) == "/My Homeport:alice@example.org"
    assert " " not in uri and "+" not in uri
    query = parse_qs(parts.query, strict_parsing=True)
    assert query == {
        "secret": [secret],
        "issuer": ["My Homeport"],
        "algorithm": ["SHA1"],
        "digits": ["6"],
        "period": ["30"],
    }
    assert provisioning_uri(secret, "bob").startswith("otpauth://totp/Homeport:bob?secret=")


def test_provisioning_uri_refuses_colons_and_bad_secrets() -> None:
    with pytest.raises(ValueError, match="account"):
        provisioning_uri(new_secret(), "a:b")
    with pytest.raises(ValueError, match="issuer"):
        provisioning_uri(new_secret(), "alice", issuer="Home:port")
    with pytest.raises(ValueError):
        provisioning_uri("!!", "alice")


# -- recovery codes -------------------------------------------------------------------------

_SHAPE = re.compile(r"[0-9a-hjkmnp-tv-z]{4}(-[0-9a-hjkmnp-tv-z]{4}){3}")


def test_recovery_codes_shape_entropy_and_hashes() -> None:
    assert totp.RECOVERY_CODE_BITS >= 60
    codes, hashes = new_recovery_codes()
    assert len(codes) == len(hashes) == 10
    assert len(set(codes)) == 10 and len(set(hashes)) == 10
    for code, h in zip(codes, hashes, strict=True):
        assert _SHAPE.fullmatch(code), code
        assert h == hashlib.sha256(code.replace("-", "").encode()).hexdigest()
        assert code.replace("-", "") not in h
    # 16 symbols of 32 (5 bits each): over many codes every symbol turns up in every place.
    many, _ = new_recovery_codes(100)
    assert len(set(many)) == 100
    symbols = {ch for c in many for ch in c.replace("-", "")}
    assert len(symbols) == 32
    assert len(new_recovery_codes(3)[0]) == 3
    for bad in (0, -1, 101):
        with pytest.raises(ValueError):
            new_recovery_codes(bad)


def test_recovery_code_matches_by_index_and_is_single_use() -> None:
    codes, hashes = new_recovery_codes()
    for i, code in enumerate(codes):
        assert match_recovery_code(code, hashes) == i
    assert match_recovery_code(codes[3], hashes) == 3
    del hashes[3]  # what the caller does
    assert match_recovery_code(codes[3], hashes) is None
    assert match_recovery_code(codes[4], hashes) == 3
    assert match_recovery_code(codes[0], []) is None


def test_recovery_code_formatting_tolerance() -> None:
    codes, hashes = new_recovery_codes()
    code = codes[7]
    bare = code.replace("-", "")
    variants = [
        code.upper(),
        bare,
        f"  {bare[:8]} {bare[8:]} ",
        " - ".join(code.split("-")),
        bare.upper().replace("0", "O").replace("1", "I"),
        bare.replace("1", "l"),
    ]
    for v in variants:
        assert match_recovery_code(v, hashes) == 7, v


def test_recovery_code_letters_o_i_l_read_as_digits() -> None:
    hashes = [totp.recovery_code_hash(c) for c in ("z0z1-zzzz-zzzz-zzzz", "01ab-cdef-ghjk-mn10")]
    assert match_recovery_code("OIAB CDEF GHJK MNlO", hashes) == 1
    assert match_recovery_code("zOzl-ZZZZ-ZZZZ-ZZZZ", hashes) == 0


@pytest.mark.parametrize(
    "code", ["", "abcd", "abcd-efgh-jkmn", "abcd-efgh-jkmn-pqrs-tvwx", "uuuu-uuuu-uuuu-uuuu", "é"]
)
def test_malformed_recovery_codes_match_nothing(code: str) -> None:
    _, hashes = new_recovery_codes()
    assert match_recovery_code(code, hashes) is None


def test_wrong_recovery_code_matches_nothing() -> None:
    codes, hashes = new_recovery_codes()
    other, _ = new_recovery_codes()
    assert not set(other) & set(codes)
    for code in other:
        assert match_recovery_code(code, hashes) is None
    last = codes[0][:-1] + ("0" if codes[0][-1] != "0" else "2")
    assert match_recovery_code(last, hashes) is None


def test_recovery_code_match_is_fast() -> None:
    codes, hashes = new_recovery_codes(10)
    start = time.perf_counter()
    for _ in range(100):
        assert match_recovery_code(codes[9], hashes) == 9
    per_match = (time.perf_counter() - start) / 100
    assert per_match < 0.05, per_match  # measured: ~5 µs per match of 10 hashes
