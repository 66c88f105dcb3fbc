"""Identity's start is cheap: the common-password list is read from a cache file made from
zxcvbn's list (services/identity/common_passwords.py) and the dummy hash is made without
hashing; the verdicts are those of the source list, and a cache that is not whole or not made
from the installed list is rebuilt, never trusted."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
from argon2 import extract_parameters
from zxcvbn.frequency_lists import FREQUENCY_LISTS

from services.identity import common_passwords, passwords
from services.identity.common_passwords import CACHE_FILE
from services.identity.passwords import MAX_LENGTH, MIN_LENGTH, hash_password, verify_password

REPO = Path(__file__).resolve().parents[2]
_COMMON_WORDS = ("password1", "iloveyou", "trustno1", "baseball", "qwertyuiop")


def _source_verdicts() -> set[str]:
    """What the source list says is common: its entries of 8+ characters, folded."""
    return {
        unicodedata.normalize("NFC", w).casefold()
        for w in FREQUENCY_LISTS["passwords"]
        if MIN_LENGTH <= len(w) <= MAX_LENGTH
    }


def _sample() -> list[str]:
    """Every common entry and variants of it, and words of zxcvbn's other lists (names, words,
    TV and film, English Wikipedia) that are not all common passwords."""
    words = [w for w in FREQUENCY_LISTS["passwords"] if MIN_LENGTH <= len(w) <= MAX_LENGTH]
    words += [w.upper() for w in words[::7]] + [w.title() for w in words[::11]]
    words += [w + "!" for w in words[::13]] + [w[:-1] for w in words[::17]]
    for name, entries in FREQUENCY_LISTS.items():
        if name != "passwords":
            words += [w for w in entries[::5] if len(w) >= MIN_LENGTH]
    words += ["CAFÉTÉRIA1", unicodedata.normalize("NFD", "motdepassé"), "Straße123", "ǅemal123"]
    return words


def _identity_verdicts(prefix: Path, words: list[str]) -> tuple[int, list[bool]]:
    """COMMON_PASSWORD_COUNT and is_common_password of each word, as identity's start makes
    them: a fresh `python -OO` with `prefix` as its byte-code cache (deploy/bytecode.py)."""
    code = (
        "import json, sys; from services.identity import passwords as p; "
        "words = json.load(sys.stdin); "
        "print(json.dumps([p.COMMON_PASSWORD_COUNT, [p.is_common_password(w) for w in words]]))"
    )
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(prefix)}
    r = subprocess.run(
        [sys.executable, "-OO", "-c", code],
        cwd=REPO,
        env=env,
        input=json.dumps(words),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    count, verdicts = json.loads(r.stdout)
    return count, verdicts


def test_identity_gives_the_source_lists_verdicts_whether_it_builds_or_reads_the_cache(
    tmp_path: Path,
) -> None:
    words = _sample()
    common = _source_verdicts()
    expected = [unicodedata.normalize("NFC", w).casefold() in common for w in words]
    assert 5000 < sum(expected) < len(words) - 5000  # both verdicts, thousands of each
    cache = tmp_path / CACHE_FILE

    built = _identity_verdicts(tmp_path, words)  # no cache yet: built, and the cache written
    assert cache.is_file()
    made = cache.stat()
    read = _identity_verdicts(tmp_path, words)  # from the cache, left as it was
    assert (cache.stat().st_ino, cache.stat().st_mtime_ns) == (made.st_ino, made.st_mtime_ns)
    assert built == read == (len(common), expected)


def _load(cache_dir: Path | None) -> tuple[str, int]:
    return common_passwords.load(cache_dir, MIN_LENGTH, MAX_LENGTH)


@pytest.fixture(scope="module")
def from_source() -> tuple[str, int]:
    return _load(None)


def _entries(text: str) -> set[str]:
    return set(text.strip("\n").split("\n"))


def test_the_built_form_holds_exactly_the_source_entries(from_source: tuple[str, int]) -> None:
    text, count = from_source
    assert _entries(text) == _source_verdicts() and count == len(_source_verdicts())
    assert text.startswith("\n") and text.endswith("\n") and "\n\n" not in text


def _rewrite_entries(cache: Path, entries: str, *, fix_digest: bool) -> None:
    """The cache file with other entries, its header (key, digest, count) kept or made to fit."""
    header = cache.read_text(encoding="utf-8").partition("\n")[0].split(" ")
    if fix_digest:
        header[3] = hashlib.sha256(entries.encode()).hexdigest()
        header[4] = str(entries.count("\n") - 1)
    cache.write_text(" ".join(header) + "\n" + entries, encoding="utf-8")


def _dropped(text: str) -> str:
    """The entries without the common words the tests look for."""
    return "".join(f"\n{w}" for w in text.strip("\n").split("\n") if w not in _COMMON_WORDS) + "\n"


@pytest.mark.parametrize(
    "damage",
    [
        "entry_edited",
        "entries_dropped",
        "torn",
        "empty",
        "not_utf8",
        "header_only",
        "other_source",
        "other_format",
        "other_bounds",
        "count_wrong",
    ],
)
def test_a_damaged_or_stale_cache_is_rebuilt_not_trusted(
    tmp_path: Path, from_source: tuple[str, int], damage: str
) -> None:
    text, count = from_source
    cache = tmp_path / CACHE_FILE
    assert _load(tmp_path) == from_source
    good = cache.read_bytes()
    header = good.partition(b"\n")[0].decode().split(" ")
    if damage == "entry_edited":  # a flipped byte, the header unchanged
        cache.write_bytes(good.replace(b"\npassword1\n", b"\npassworx1\n"))
    elif damage == "entries_dropped":
        _rewrite_entries(cache, _dropped(text), fix_digest=False)
    elif damage == "torn":
        cache.write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        cache.write_bytes(b"")
    elif damage == "not_utf8":
        cache.write_bytes(good[:-10] + b"\xff\xfe\n")
    elif damage == "header_only":
        cache.write_bytes(good.partition(b"\n")[0] + b"\n")
    elif damage == "other_source":  # a whole file, made from another list: its key differs
        header[2] = hashlib.sha256(b"another zxcvbn").hexdigest()
        cache.write_text(" ".join(header) + "\n" + text, encoding="utf-8")
        _rewrite_entries(cache, _dropped(text), fix_digest=True)
    elif damage == "other_format":
        header[1] = "0"
        cache.write_text(" ".join(header) + "\n" + text, encoding="utf-8")
        _rewrite_entries(cache, _dropped(text), fix_digest=True)
    elif damage == "other_bounds":  # made for another minimum length: another key
        common_passwords.load(tmp_path, MIN_LENGTH + 2, MAX_LENGTH)
        assert cache.read_bytes() != good
    elif damage == "count_wrong":
        header[4] = str(count + 1)
        cache.write_text(" ".join(header) + "\n" + text, encoding="utf-8")
    assert cache.read_bytes() != good

    assert _load(tmp_path) == from_source  # the verdicts of the source list
    assert all(f"\n{w}\n" in _load(tmp_path)[0] for w in _COMMON_WORDS)
    assert cache.read_bytes() == good  # and the cache made again


def test_a_cache_folder_it_cannot_write_still_gives_the_list(
    tmp_path: Path, from_source: tuple[str, int]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert _load(blocker) == from_source
    assert blocker.read_text() == "not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no temporary file left


def test_the_dummy_hash_costs_what_a_users_hash_costs_and_matches_nothing() -> None:
    dummy = passwords.DEFAULT._dummy
    user = hash_password("correct horse battery staple")
    assert extract_parameters(dummy) == extract_parameters(user)
    assert not passwords.needs_rehash(dummy)
    low = passwords.Hasher(passwords.MIN_MEMORY_COST_KIB)  # each hasher's dummy has its cost
    assert extract_parameters(low._dummy) == extract_parameters(low.hash("correct horse b"))
    assert dummy.split("$")[4:] != user.split("$")[4:]
    for guess in ("", "correct horse battery staple", dummy, "password1"):
        assert verify_password(dummy, guess) is False


def test_identity_starts_without_hashing_or_parsing(tmp_path: Path) -> None:
    """Importing the password rules (what identity's start does) spends neither argon2's 64 MiB
    nor its CPU on a hash; each start has a dummy hash of its own."""
    # VmHWM: the peak RSS of this program (ru_maxrss would start at the forking parent's peak)
    code = (
        "import re, time; import argon2, hashlib, base64, unicodedata; "
        "import services.identity.errors; "
        "peak = lambda: int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]); "
        "r0 = peak(); c0 = time.process_time(); "
        "from services.identity import passwords as p; "
        "c1 = time.process_time(); r1 = peak(); "
        "print(r1 - r0, c1 - c0, p.DEFAULT._dummy)"
    )
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(tmp_path)}
    runs = []
    for _ in range(3):  # the first builds the cache (and the byte code)
        r = subprocess.run(
            [sys.executable, "-OO", "-c", code],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        runs.append(r.stdout.split())
    for grown_kib, _, _ in runs:
        assert int(grown_kib) < 16 * 1024, runs  # an argon2 hash of 64 MiB would show
    for _, cpu, _ in runs[1:]:
        assert float(cpu) < 0.08, runs  # a hash costs 0.1-0.2 s of CPU, the list read ~5 ms
    assert len({dummy for *_, dummy in runs}) == 3
