"""The tree of a snapshot (one JSON line per entry) and the hostile-safe writer used by restore.

Paths are relative, `/`-separated, made of the file names as `os.fsdecode` gives them (bytes that
are not UTF-8 travel as lone surrogates, `\\udcXX` in the JSON). The writer opens every component
relative to its parent with O_NOFOLLOW, so no link, whether in the snapshot or planted while the
restore runs, is ever followed.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import stat
import threading
from dataclasses import dataclass
from typing import Any

from services.backup.repo.errors import RestoreRefused

__all__ = ["Entry", "SafeWriter", "check_path", "decode_entry", "encode_entry", "link_escapes"]

KINDS = ("dir", "file", "symlink")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Permission bits restored: rwx for all and the sticky bit; setuid/setgid are always dropped.
MODE_MASK = 0o1777


@dataclass(frozen=True, slots=True)
class Entry:
    path: str
    kind: str
    mode: int
    mtime_ns: int
    size: int = 0
    chunks: tuple[bytes, ...] = ()
    target: str = ""


def encode_entry(e: Entry) -> bytes:
    doc: dict[str, Any] = {"path": e.path, "type": e.kind, "mode": e.mode, "mtime_ns": e.mtime_ns}
    if e.kind == "file":
        doc["size"] = e.size
        doc["chunks"] = [c.hex() for c in e.chunks]
    elif e.kind == "symlink":
        doc["target"] = e.target
    return json.dumps(doc, separators=(",", ":")).encode() + b"\n"


def decode_entry(line: bytes) -> Entry:
    """An entry of the tree stream, or RestoreRefused saying what is malformed."""
    try:
        doc = json.loads(line)
        kind = doc["type"]
        if kind not in KINDS:
            raise RestoreRefused(f"tree entry of unknown type {str(kind)[:20]!r}")
        path, mode, mtime = doc["path"], doc["mode"], doc["mtime_ns"]
        if not isinstance(path, str) or type(mode) is not int or type(mtime) is not int:
            raise TypeError("path, mode or mtime_ns of the wrong type")
        if kind == "file":
            size = doc["size"]
            if type(size) is not int or size < 0:
                raise TypeError("bad size")
            chunks = tuple(bytes.fromhex(c) for c in doc["chunks"])
            if any(len(c) != 32 for c in chunks):
                raise ValueError("bad chunk id")
            return Entry(path, kind, mode, mtime, size, chunks)
        if kind == "symlink":
            target = doc["target"]
            if not isinstance(target, str) or not target or "\0" in target:
                raise TypeError("bad symlink target")
            return Entry(path, kind, mode, mtime, target=target)
        return Entry(path, kind, mode, mtime)
    except RestoreRefused:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise RestoreRefused(f"malformed tree entry in the snapshot: {e}") from e


def check_path(path: str) -> list[str]:
    """The components of a tree path, or RestoreRefused if it could leave the destination."""
    parts = path.split("/")
    if not path or "\0" in path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise RestoreRefused(f"snapshot entry {path[:200]!r} would leave the destination")
    return parts


def link_escapes(path: str, target: str) -> bool:
    """Whether the link at `path` would point outside the tree it is restored into."""
    if target.startswith("/"):
        return True
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return joined == ".." or joined.startswith("../")


class SafeWriter:
    """Creates the entries of a tree below `dest` (blocking; safe from several threads: the
    directory lookups and creations are serialised, the writes to created files are not)."""

    def __init__(self, dest: str) -> None:
        os.makedirs(dest, mode=0o700, exist_ok=True)
        self._root = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if os.listdir(self._root):
            os.close(self._root)
            raise RestoreRefused(f"restore destination {dest} is not empty")
        self._cached: dict[tuple[str, ...], int] = {}
        self._dirs: list[Entry] = []
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            for fd in self._cached.values():
                os.close(fd)
            self._cached = {}
            os.close(self._root)

    def _parent(self, parts: list[str]) -> int:
        """An fd of the directory holding `parts[-1]` (owned by the writer's cache; call with
        the lock held)."""
        key = tuple(parts[:-1])
        hit = self._cached.get(key)
        if hit is not None:
            return hit
        fd = os.dup(self._root)
        try:
            for i, p in enumerate(key):
                try:
                    sub = os.open(p, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                        raise RestoreRefused(
                            f"{'/'.join(key[: i + 1])} is a link or not a directory:"
                            " (or not restored): refusing to restore below it"
                        ) from e
                    raise
                os.close(fd)
                fd = sub
        except BaseException:
            os.close(fd)
            raise
        if len(self._cached) >= 16:
            old = next(iter(self._cached))
            os.close(self._cached.pop(old))
        self._cached[key] = fd
        return fd

    def mkdir(self, e: Entry) -> None:
        parts = check_path(e.path)
        with self._lock:
            try:
                os.mkdir(parts[-1], 0o700, dir_fd=self._parent(parts))
            except FileExistsError:
                raise RestoreRefused(f"snapshot entry {e.path!r} appears twice") from None
            self._dirs.append(e)

    def symlink(self, e: Entry) -> None:
        parts = check_path(e.path)
        with self._lock:
            d = self._parent(parts)
            try:
                os.symlink(e.target, parts[-1], dir_fd=d)
            except FileExistsError:
                raise RestoreRefused(f"snapshot entry {e.path!r} appears twice") from None
            os.utime(parts[-1], ns=(e.mtime_ns, e.mtime_ns), dir_fd=d, follow_symlinks=False)

    def create(self, e: Entry) -> int:
        parts = check_path(e.path)
        with self._lock:
            try:
                return os.open(parts[-1], _NEW_FILE, 0o600, dir_fd=self._parent(parts))
            except FileExistsError:
                raise RestoreRefused(f"snapshot entry {e.path!r} appears twice") from None

    @staticmethod
    def write(fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    @staticmethod
    def finish_file(fd: int, e: Entry) -> None:
        try:
            os.fchmod(fd, stat.S_IMODE(e.mode) & MODE_MASK)
            os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
        finally:
            os.close(fd)

    def finish(self) -> None:
        """Directory modes and times, deepest first (a read-only directory is filled first)."""
        for e in reversed(self._dirs):
            parts = check_path(e.path)
            with self._lock:
                fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=self._parent(parts))
            try:
                os.fchmod(fd, stat.S_IMODE(e.mode) & MODE_MASK)
                os.utime(fd, ns=(e.mtime_ns, e.mtime_ns))
            finally:
                os.close(fd)
