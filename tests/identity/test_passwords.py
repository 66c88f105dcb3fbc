"""Password rules and argon2id hashing against SECURITY.md ("Accounts")."""

from __future__ import annotations

import base64
import re
import statistics
import time
import unicodedata

import argon2
import pytest
from zxcvbn.frequency_lists import FREQUENCY_LISTS

from libs.events.bus import Invalid
from libs.service.config import ConfigError, load_config
from services.identity import passwords
from services.identity.config import IdentityConfig
from services.identity.passwords import (
    COMMON_PASSWORD_COUNT,
    MAX_LENGTH,
    MIN_LENGTH,
    PasswordRejected,
    Reason,
    check_password,
    hash_password,
    is_common_password,
    needs_rehash,
    verify_dummy,
    verify_password,
)

PASSPHRASE = "correct horse battery staple"
_ENCODED = re.compile(
    r"\$argon2id\$v=(?P<v>\d+)\$m=(?P<m>\d+),t=(?P<t>\d+),p=(?P<p>\d+)"
    r"\$(?P<salt>[A-Za-z0-9+/]+)\$(?P<hash>[A-Za-z0-9+/]+)"
)


@pytest.fixture(scope="module")
def stored() -> str:
    return hash_password(PASSPHRASE)


def _b64(s: str) -> bytes:
    return base64.b64decode(s + "=" * (-len(s) % 4))


def _rejected(password: str, **context: str) -> Reason | None:
    with pytest.raises(PasswordRejected) as info:
        check_password(password, **context)
    return info.value.reason


# -- rules ----------------------------------------------------------------------------------


def test_rejection_is_an_invalid_error_on_the_password_field() -> None:
    with pytest.raises(Invalid) as info:
        check_password("short")
    err = info.value
    assert isinstance(err, PasswordRejected)
    assert err.to_wire() == {
        "code": "invalid",
        "message": "use at least 8 characters; a passphrase of several words is best",
        "field": "password",
    }


def test_length_bounds() -> None:
    assert (MIN_LENGTH, MAX_LENGTH) == (8, 256)
    check_password("zq8#Lm2!")  # exactly 8
    assert _rejected("zq8#Lm2") is Reason.TOO_SHORT  # 7
    at_max = ("winter harbour lantern " * 12)[:MAX_LENGTH]
    assert len(at_max) == MAX_LENGTH
    check_password(at_max)
    assert _rejected(at_max + "x") is Reason.TOO_LONG
    assert _rejected("x" * 100_000) is Reason.TOO_LONG


def test_length_counts_code_points_after_nfc() -> None:
    composed = "éèêëàâäô"  # 8 code points, each precomposed
    decomposed = unicodedata.normalize("NFD", composed)
    assert len(decomposed) == 16
    check_password(composed)
    check_password(decomposed)
    # 7 accented letters are 14 code points in NFD, still 7 characters: too short.
    assert _rejected(unicodedata.normalize("NFD", "éèêëàâä")) is Reason.TOO_SHORT
    # 256 accented letters typed decomposed (512 code points) are 256 after NFC: allowed.
    long_nfd = unicodedata.normalize("NFD", "éa" * (MAX_LENGTH // 2))
    assert len(long_nfd) == 3 * MAX_LENGTH // 2
    check_password(long_nfd)
    assert _rejected(unicodedata.normalize("NFD", "é" + "éa" * (MAX_LENGTH // 2))) is (
        Reason.TOO_LONG
    )
    # Emoji and other non-Latin scripts are characters like any other.
    check_password("🔑🏠🌲🐍🚀🎉🍕🌙")
    check_password("пароль-на-море")
    assert _rejected("🔑🏠🌲🐍🚀🎉🍕") is Reason.TOO_SHORT


@pytest.mark.parametrize(
    "password",
    [
        PASSPHRASE,
        "  leading and trailing spaces  ",
        "tab-free\u00a0no-break\u3000ideographic space",
        "purple monkey dishwasher",  # all lower case, no digit, no symbol
        "80417263955",  # digits only
        "ZQXJKVBWMP",  # capitals only
        "🔑🏠🌲🐍🚀🎉🍕🌙👨\u200d👩\u200d👧",  # zero-width joiners (Cf) in an emoji
    ],
)
def test_printable_characters_and_spaces_with_no_composition_rules(password: str) -> None:
    check_password(password)


@pytest.mark.parametrize(
    "bad", ["\t", "\n", "\r", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\u2029", "\ud800"]
)
def test_control_characters_refused(bad: str) -> None:
    assert _rejected(f"good part{bad}good part") is Reason.CONTROL_CHARACTER


def test_common_password_list_size_and_source() -> None:
    # zxcvbn 4.5.0: 30,000 passwords, 11,611 of them with 8+ characters.
    assert COMMON_PASSWORD_COUNT >= 3000
    long_enough = {w for w in FREQUENCY_LISTS["passwords"] if MIN_LENGTH <= len(w) <= MAX_LENGTH}
    assert len(long_enough) == COMMON_PASSWORD_COUNT
    refused = 0
    for word in long_enough:
        try:
            check_password(word)
        except PasswordRejected as e:
            assert e.reason in (Reason.COMMON, Reason.REPETITIVE, Reason.SERVICE_NAME), word
            refused += 1
    assert refused == COMMON_PASSWORD_COUNT


@pytest.mark.parametrize(
    "password",
    [
        "password1",
        "qwertyuiop",
        "iloveyou",
        "trustno1",
        "12345678",
        "baseball",
        "PASSWORD1",
        "QwErTyUiOp",
        "Sunshine",
        "passw0rd",
        "1qaz2wsx",
    ],
)
def test_common_passwords_refused_case_insensitively(password: str) -> None:
    assert is_common_password(password)
    assert _rejected(password) is Reason.COMMON
    with pytest.raises(PasswordRejected, match="list of common passwords; choose another"):
        check_password(password)


def test_uncommon_password_not_on_list() -> None:
    assert not is_common_password(PASSPHRASE)
    assert not is_common_password("password1 but longer")


def test_only_whole_entries_of_the_list_match() -> None:
    """The list is kept as one string of entries between line breaks: a piece of an entry, two
    entries with a line break between them, or an entry with a line break around it is not an
    entry (the control-character rule refuses the last two anyway)."""
    assert is_common_password("password") and is_common_password("baseball")
    for piece in ("asswor", "passwor", "assword", "sebal", "password\nbaseball", "password\n"):
        assert not is_common_password(piece), piece
    assert _rejected("password\nbaseball") is Reason.CONTROL_CHARACTER


def test_username_refused() -> None:
    assert _rejected("Alice.Smith", username="alice.smith") is Reason.USERNAME
    assert _rejected("ALICESMITH", username="alicesmith") is Reason.USERNAME
    # Only this user's own name: another user may choose it.
    check_password("alice.smith", username="bob.jones")
    check_password("alice.smith")


def test_email_and_its_local_part_refused() -> None:
    email = "Alice.Smith+home@Example.org"
    assert _rejected("alice.smith+home@example.org", email=email) is Reason.EMAIL
    assert _rejected("alice.smith+home", email=email) is Reason.EMAIL
    assert _rejected("ALICE.SMITH", email=email) is Reason.EMAIL
    check_password("alice.smith", email="carol@example.org")
    check_password("example.org!", email=email)


def test_service_name_and_repeated_character_refused() -> None:
    assert _rejected("HomePort") is Reason.SERVICE_NAME
    assert _rejected("        ") is Reason.REPETITIVE
    assert _rejected("zzzzzzzzzzzz") is Reason.REPETITIVE
    check_password("zzzzzzzzzzzy")


# -- hashing --------------------------------------------------------------------------------


def test_hash_is_argon2id_with_the_required_parameters(stored: str) -> None:
    m = _ENCODED.fullmatch(stored)
    assert m, stored
    assert int(m["v"]) == 19
    assert int(m["m"]) >= 19456  # 19 MiB
    assert int(m["t"]) >= 2
    assert int(m["p"]) == 1
    assert len(_b64(m["salt"])) >= 16
    assert len(_b64(m["hash"])) >= 32
    assert PASSPHRASE not in stored
    assert not needs_rehash(stored)


def test_each_hash_has_its_own_salt(stored: str) -> None:
    again = hash_password(PASSPHRASE)
    assert again != stored
    assert verify_password(again, PASSPHRASE)


def test_verify(stored: str) -> None:
    assert verify_password(stored, PASSPHRASE) is True
    assert verify_password(stored, PASSPHRASE.upper()) is False
    assert verify_password(stored, PASSPHRASE + " ") is False
    assert verify_password(stored, "") is False
    assert verify_password(stored, "\ud800 lone surrogate") is False


def test_verify_normalises_to_nfc() -> None:
    encoded = hash_password("café crème brûlée")
    assert verify_password(encoded, unicodedata.normalize("NFD", "café crème brûlée"))
    assert not verify_password(encoded, "cafe creme brulee")


def test_hash_password_refuses_a_malformed_password() -> None:
    with pytest.raises(PasswordRejected):
        hash_password("short")
    with pytest.raises(PasswordRejected):
        hash_password("line\nbreak inside")


@pytest.mark.parametrize(
    "encoded", ["", "not a hash", "$argon2id$v=19$garbage", "$2b$12$abcdefghijklmnopqrstuv", "é"]
)
def test_a_corrupt_stored_hash_is_an_error_not_a_mismatch(encoded: str) -> None:
    with pytest.raises(ValueError, match=r"not (a valid|an) argon2 hash"):
        verify_password(encoded, PASSPHRASE)


def test_verification_takes_under_a_second(stored: str) -> None:
    # Measured on the 2-core test machine: hash and verify ~98 ms each (m=64 MiB, t=2, p=1).
    times = []
    for _ in range(5):
        start = time.perf_counter()
        assert verify_password(stored, PASSPHRASE)
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 1.0, times


def _hasher(**kw: object) -> argon2.PasswordHasher:
    params: dict[str, object] = {
        "time_cost": passwords.TIME_COST,
        "memory_cost": passwords.MEMORY_COST_KIB,
        "parallelism": passwords.PARALLELISM,
        "hash_len": passwords.HASH_LEN,
        "salt_len": passwords.SALT_LEN,
        "type": argon2.Type.ID,
    }
    params.update(kw)
    return argon2.PasswordHasher(**params)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "weaker",
    [
        {"memory_cost": 8192, "time_cost": 1},
        {"memory_cost": 19456},
        {"time_cost": 1},
        {"memory_cost": 8192, "parallelism": 4},
        {"memory_cost": 8192, "type": argon2.Type.I},
        {"memory_cost": 8192, "hash_len": 16},
        {"memory_cost": 8192, "salt_len": 8},
    ],
)
def test_needs_rehash_for_a_weaker_hash_which_still_verifies(weaker: dict[str, object]) -> None:
    legacy = _hasher(**weaker).hash(PASSPHRASE)
    assert needs_rehash(legacy)
    assert verify_password(legacy, PASSPHRASE)
    assert not verify_password(legacy, "something else")


def test_no_rehash_for_current_or_stronger(stored: str) -> None:
    assert not needs_rehash(stored)
    stronger = _hasher(time_cost=passwords.TIME_COST + 1).hash(PASSPHRASE)
    assert not needs_rehash(stronger)
    with pytest.raises(ValueError):
        needs_rehash("not a hash")


def test_verify_dummy_costs_the_same_as_a_real_verify(stored: str) -> None:
    # The work done, in CPU time of the process (Argon2's lanes run in threads of its own):
    # other tests' load on the machine delays a verify but does not add to its CPU time.
    # Interleaved, and the least of each series (the service test times whole sign-ins over
    # 100+ tries, in wall time).
    real, dummy = [], []
    for _ in range(12):
        start = time.process_time()
        verify_password(stored, "a wrong password")
        real.append(time.process_time() - start)
        start = time.process_time()
        verify_dummy("a wrong password")
        dummy.append(time.process_time() - start)
    r, d = min(real), min(dummy)
    assert abs(d - r) <= 0.2 * r, (real, dummy)


def test_the_memory_per_hash_is_configurable_never_below_the_bar() -> None:
    base = {"HP_DATABASE_URL": "postgresql://x/y", "HP_NATS_URL": "nats://x"}
    assert load_config(IdentityConfig, base).password_memory_kib == 65536  # production
    for bad in ("19455", "0", "-1", "lots", "19456.5", str(4 * 2**20 + 1)):
        with pytest.raises(ConfigError) as e:
            load_config(IdentityConfig, {**base, "HP_PASSWORD_MEMORY_KIB": bad})
        assert e.value.problems[0].startswith("HP_PASSWORD_MEMORY_KIB: expected"), bad
    with pytest.raises(ValueError, match="19456"):
        passwords.Hasher(19455)
    # at the bar: its own hashes carry it, verify, and a production hash still verifies; a
    # hash below it is rehashed, one at or above it is not
    low = passwords.Hasher(19456)
    mine = low.hash(PASSPHRASE)
    assert "$m=19456,t=2,p=1$" in mine
    assert low.verify(mine, PASSPHRASE) and not low.verify(mine, "something else")
    assert low.verify(hash_password(PASSPHRASE), PASSPHRASE)
    assert not low.needs_rehash(mine) and not low.needs_rehash(hash_password(PASSPHRASE))
    assert passwords.DEFAULT.needs_rehash(mine)  # a production service strengthens it
    assert low.needs_rehash(_hasher(memory_cost=8192).hash(PASSPHRASE))
    # its dummy costs what its verify costs (CPU time: see the test of the default above)
    real, dummy = [], []
    for _ in range(8):
        start = time.process_time()
        low.verify(mine, "a wrong password")
        real.append(time.process_time() - start)
        start = time.process_time()
        low.verify_dummy("a wrong password")
        dummy.append(time.process_time() - start)
    assert abs(min(dummy) - min(real)) <= 0.2 * min(real), (real, dummy)
