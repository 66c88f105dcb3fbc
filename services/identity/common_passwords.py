"""The common-password list in the form identity looks passwords up in, kept in a cache file so
that a start reads it instead of parsing zxcvbn's list (passwords.py holds the rules).

The form: every entry of zxcvbn's "passwords" frequency list of `min_length` to `max_length`
characters, NFC-normalised and case-folded, sorted, each between line breaks in one string. The
cache, `<dir>/CACHE_FILE` (dir: the services' byte-code cache, deploy/bytecode.py, filled when it
is warmed), is one header line and that string:

    homeport-common-passwords <format> <source key> <sha256 of the entries> <count>

It is used only if the header names this format and the key of the list installed now (sha256
of zxcvbn's frequency_lists.py, the length bounds and the Unicode version the folding follows)
and the entries hash to what it says; anything else (no file, another zxcvbn, a torn or edited
file) is rebuilt from the source and written again, atomically (a folder we may not write is
fine: the list is then built at each start).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.util
import os
import unicodedata
from pathlib import Path
from typing import Final

__all__ = ["CACHE_FILE", "FORMAT", "build", "load", "source_path"]

CACHE_FILE: Final = "identity-common-passwords.txt"
# Bump when build() changes what it makes from the same source: older caches are then rebuilt.
FORMAT: Final = "1"
_MAGIC: Final = "homeport-common-passwords"
_LIST_LINE_END: Final = '.split(","),'


def source_path() -> Path:
    """zxcvbn's frequency_lists.py, found without importing zxcvbn: the package builds ranked
    dictionaries of every list at import (~10 MiB for the life of identity)."""
    spec = importlib.util.find_spec("zxcvbn")
    origin = None if spec is None else spec.origin
    if origin is None:
        raise RuntimeError("zxcvbn is not installed: its common-password list is needed")
    return Path(origin).with_name("frequency_lists.py")


def _leaked_passwords(text: str, path: Path) -> str:
    """The "passwords" list of zxcvbn's frequency_lists.py as one comma-separated string. Even
    running that file builds all of its lists at once (the heap stays grown after): the list is
    one line of it, and only that line is parsed."""
    for line in text.splitlines():
        key, sep, rest = line.strip().partition(":")
        if key == '"passwords"' and sep and rest.endswith(_LIST_LINE_END):
            literal = ast.literal_eval(rest.removesuffix(_LIST_LINE_END).strip())
            if isinstance(literal, str):
                return literal
    raise RuntimeError(f'no "passwords" list in {path}: check the installed zxcvbn version')


def build(text: str, path: Path, min_length: int, max_length: int) -> tuple[str, int]:
    """The lookup form of the list in `text` (the contents of `path`), and its entry count."""
    # zxcvbn ships the 30,000 most frequent passwords of leaked sets (most frequent first, all
    # lower case). Shorter entries are refused by the length rule already: only the 11,611 of
    # 8+ characters are kept, as one string (about 0.1 MiB, instead of 1.2 MiB as a set of
    # strings), looked up as a substring (tens of microseconds, once per password set).
    common = {
        unicodedata.normalize("NFC", w).casefold()
        for w in _leaked_passwords(text, path).split(",")
        if min_length <= len(w) <= max_length and "\n" not in w
    }
    return "\n" + "\n".join(sorted(common)) + "\n", len(common)


def _key(source: bytes, min_length: int, max_length: int) -> str:
    h = hashlib.sha256(
        f"{FORMAT}\0{min_length}\0{max_length}\0{unicodedata.unidata_version}\0".encode()
    )
    h.update(source)
    return h.hexdigest()


def _read_cache(path: Path, key: str) -> tuple[str, int] | None:
    """The entries and count in the cache file `path` if it is whole and made for `key`."""
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    header, _, entries = text.partition("\n")
    fields = header.split(" ")
    if len(fields) != 5 or fields[:3] != [_MAGIC, FORMAT, key] or not fields[4].isdigit():
        return None
    if not (entries.startswith("\n") and entries.endswith("\n")):
        return None
    if hashlib.sha256(entries.encode("utf-8")).hexdigest() != fields[3]:
        return None
    count = int(fields[4])
    if entries.count("\n") != count + 1 or "\n\n" in entries:
        return None
    return entries, count


def _write_cache(path: Path, key: str, entries: str, count: int) -> None:
    digest = hashlib.sha256(entries.encode("utf-8")).hexdigest()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(f"{_MAGIC} {FORMAT} {key} {digest} {count}\n{entries}", encoding="utf-8")
        os.replace(tmp, path)
    except OSError:  # a folder we may not write: the list is built again at the next start
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def load(cache_dir: Path | None, min_length: int, max_length: int) -> tuple[str, int]:
    """The lookup form of the installed list and its count: from the cache in `cache_dir` when
    it is whole and made from this very list, else built (and the cache written again)."""
    path = source_path()
    try:
        source = path.read_bytes()
    except OSError as e:
        raise RuntimeError(f"cannot read zxcvbn's common-password list {path}: {e}") from e
    key = _key(source, min_length, max_length)
    cache = None if cache_dir is None else cache_dir / CACHE_FILE
    if cache is not None:
        cached = _read_cache(cache, key)
        if cached is not None:
            return cached
    entries, count = build(source.decode("utf-8"), path, min_length, max_length)
    if cache is not None:
        _write_cache(cache, key, entries, count)
    return entries, count
