"""Packs (many sealed blobs in one object) and the index objects that say where each blob is."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any

import zstandard

from services.backup.repo.errors import RepositoryError

__all__ = [
    "SESSION",
    "FinishedPack",
    "Location",
    "PackWriter",
    "decode_index",
    "decompress_bounded",
    "encode_index",
    "pack_name",
]

INDEX_VERSION = 1
_INDEX_LIMIT = 64 * 1024 * 1024
SESSION = re.compile(r"^[0-9]{14}-[0-9a-f]{16}$")  # a backup session's (and snapshot's) id


def decompress_bounded(data: bytes, limit: int) -> bytes:
    """The zstd frame's content, or ValueError if it is longer than `limit` bytes (read as a
    stream: a frame header declaring a huge size allocates nothing)."""
    out = bytearray()
    with zstandard.ZstdDecompressor().stream_reader(data) as r:
        while piece := r.read(min(limit + 1 - len(out), 1 << 20) or 1):
            out += piece
            if len(out) > limit:
                raise ValueError(f"it holds more than {limit} bytes")
    return bytes(out)


def pack_name(digest_hex: str) -> str:
    return f"data/{digest_hex[:2]}/{digest_hex}"


@dataclass(slots=True)
class Location:
    """Where a blob is: its pack (None while that pack is still being written), offset,
    length of the sealed blob, its plaintext length and the session whose key sealed it."""

    pack: str | None
    offset: int
    length: int
    plain_length: int
    session: str


@dataclass(slots=True)
class FinishedPack:
    name: str
    path: str
    size: int
    session: str
    blobs: list[tuple[bytes, Location]] = field(default_factory=list)


class PackWriter:
    """Appends sealed blobs to a temporary file and closes it as a pack at `max_size` bytes
    (blocking: used from worker threads, one at a time)."""

    def __init__(self, tmp_dir: str, session: str, max_size: int) -> None:
        self._tmp_dir = tmp_dir
        self._session = session
        self._max = max_size
        self._file: Any = None
        self._path = ""
        self._hash = hashlib.sha256()
        self._size = 0
        self._blobs: list[tuple[bytes, Location]] = []
        self.ready: list[FinishedPack] = []

    def add(self, cid: bytes, blob: bytes, plain_length: int) -> Location:
        if self._file is None:
            fd, self._path = tempfile.mkstemp(prefix="pack-", dir=self._tmp_dir)
            self._file = os.fdopen(fd, "wb")
            self._hash = hashlib.sha256()
            self._size = 0
            self._blobs = []
        loc = Location(None, self._size, len(blob), plain_length, self._session)
        self._file.write(blob)
        self._hash.update(blob)
        self._size += len(blob)
        self._blobs.append((cid, loc))
        if self._size >= self._max:
            self.finish()
        return loc

    def finish(self) -> None:
        """Close the pack being written (if any) and queue it in `ready`."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        name = pack_name(self._hash.hexdigest())
        for _cid, loc in self._blobs:
            loc.pack = name
        self.ready.append(FinishedPack(name, self._path, self._size, self._session, self._blobs))

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for p in [self._path, *(r.path for r in self.ready)]:
            if p:
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
        self.ready = []


def encode_index(pack: FinishedPack) -> bytes:
    doc = {
        "version": INDEX_VERSION,
        "pack": pack.name,
        "pack_size": pack.size,
        "session": pack.session,
        "blobs": [[cid.hex(), loc.offset, loc.length, loc.plain_length] for cid, loc in pack.blobs],
    }
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return zstandard.ZstdCompressor(level=3).compress(raw)


def decode_index(name: str, data: bytes) -> tuple[str, int, list[tuple[bytes, Location]]]:
    """(pack name, pack size, blobs) of an index object, or RepositoryError naming it."""
    try:
        raw = decompress_bounded(data, _INDEX_LIMIT)
        doc = json.loads(raw)
        if doc["version"] != INDEX_VERSION:
            raise RepositoryError(f"index {name} has unknown version {doc['version']!r}")
        pack, size, session = str(doc["pack"]), int(doc["pack_size"]), str(doc["session"])
        if not SESSION.fullmatch(session):
            raise ValueError(f"session {session[:40]!r} is not a backup session name")
        if pack.rsplit("/", 1)[-1] != name.rsplit("/", 1)[-1] or pack != pack_name(pack[-64:]):
            raise ValueError(f"it describes pack {pack[:80]!r}, not the pack it is named after")
        blobs = [
            (bytes.fromhex(b[0]), Location(pack, int(b[1]), int(b[2]), int(b[3]), session))
            for b in doc["blobs"]
        ]
    except RepositoryError:
        raise
    except (zstandard.ZstdError, ValueError, KeyError, TypeError, IndexError) as e:
        raise RepositoryError(f"index object {name} is unreadable: {e}") from e
    return pack, size, blobs
