"""The local files cache (FORMAT.md, "Local files cache"): on the machine that backs up, per
repository and per source, which chunks each file had when it was last read, keyed by what
`stat` says of it, so that an unchanged file is not read and hashed again.

It lives next to the sources, never on the target (it names files in the clear). A damaged,
foreign or missing cache is simply ignored: the backup then reads every file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import zstandard

__all__ = ["RACY_NS", "FilesCache"]

CACHE_VERSION = 1
# A file whose ctime is this close to the moment it was looked at is not cached: a write in
# the same timestamp tick (after we read it) would leave size, mtime and ctime unchanged.
RACY_NS = 100_000_000
_MAX_CACHE = 1 << 30

_Key = tuple[int, int, int, int]  # size, mtime_ns, inode, ctime_ns


def stat_key(st: os.stat_result) -> _Key:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


class FilesCache:
    """path in the tree -> (size, mtime_ns, inode, ctime_ns, chunk ids) of one source."""

    def __init__(self, cache_dir: Path, repo_id: str, source: str) -> None:
        self.source = source
        self.repo_id = repo_id
        digest = hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        self.path = Path(cache_dir) / repo_id / f"files-{digest}"
        self.old: dict[str, tuple[_Key, tuple[bytes, ...]]] = {}
        self.new: dict[str, tuple[_Key, tuple[bytes, ...]]] = {}

    def load(self) -> None:
        """Read the cache file if there is a usable one (blocking)."""
        try:
            raw = self.path.read_bytes()
            doc = json.loads(zstandard.ZstdDecompressor().decompress(raw, _MAX_CACHE))
            if (
                doc.get("version") != CACHE_VERSION
                or doc.get("repository") != self.repo_id
                or doc.get("source") != self.source
            ):
                return
            old: dict[str, tuple[_Key, tuple[bytes, ...]]] = {}
            for path, (size, mtime, ino, ctime, ids) in doc["files"].items():
                key = (int(size), int(mtime), int(ino), int(ctime))
                blob = bytes.fromhex(ids)
                if len(blob) % 32:
                    return
                old[path] = (key, tuple(blob[i : i + 32] for i in range(0, len(blob), 32)))
            self.old = old
        except (OSError, ValueError, TypeError, KeyError, AttributeError, zstandard.ZstdError):
            self.old = {}

    def lookup(self, path: str, st: os.stat_result) -> tuple[bytes, ...] | None:
        hit = self.old.get(path)
        if hit is None or hit[0] != stat_key(st):
            return None
        return hit[1]

    def record(self, path: str, st: os.stat_result, ids: tuple[bytes, ...], seen_ns: int) -> None:
        """Remember `ids` for `path` as stat'ed (at time `seen_ns`), unless it changed too
        recently to be told apart from a later write."""
        if st.st_ctime_ns >= seen_ns - RACY_NS or st.st_mtime_ns >= seen_ns - RACY_NS:
            return
        self.new[path] = (stat_key(st), ids)

    def save(self) -> None:
        """Replace the cache file with the files seen by this backup (blocking, atomic)."""
        doc: dict[str, Any] = {
            "version": CACHE_VERSION,
            "repository": self.repo_id,
            "source": self.source,
            "files": {p: [*k, b"".join(ids).hex()] for p, (k, ids) in self.new.items()},
        }
        raw = zstandard.ZstdCompressor(level=3).compress(
            json.dumps(doc, separators=(",", ":")).encode("utf-8", "surrogateescape")
        )
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".files-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
