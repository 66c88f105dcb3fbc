"""A backup target in a local directory (a mounted disk): each object is the file `root/<name>`.

Every path below `root` is opened one component at a time relative to its parent directory with
O_NOFOLLOW, so a symbolic link planted anywhere under `root` (by a container, another user, a
restored archive) is refused rather than followed: nothing is ever read from or written to a
place outside `root`. `root` itself may be a link (the admin's choice of path).

Writes are atomic and durable: the data goes to a temporary file in the object's directory
(`<base>~<random>.tmp`, a name no object can have since `~` is not allowed in names), which is
fsynced, renamed over the object and followed by an fsync of the directory. Directories are made
as needed with mode 0700, files with 0600. Blocking file I/O runs in worker threads.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import secrets
import stat as stat_mod
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from pathlib import Path

from services.backup.targets.base import (
    ObjectInfo,
    TargetError,
    TargetMissing,
    check_name,
    probe,
)

__all__ = ["LocalTarget"]

_CHUNK = 1 << 20
_LIST_BATCH = 1000
_TEMP = re.compile(r"^[a-z0-9][a-z0-9._-]*~[0-9a-f]{16}\.tmp$")
_PREFIX = re.compile(r"^[a-z0-9/._-]{0,200}$")
_Parts = list[str]  # a list type named outside the class, whose `list` method shadows it
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class LocalTarget:
    """Objects as files under `root` (see the module docstring)."""

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.root = Path(root)
        self._clock = clock

    def __repr__(self) -> str:
        return f"LocalTarget({str(self.root)!r})"

    # -- the Target protocol

    async def put(self, name: str, data: bytes) -> None:
        parts = _parts(name)
        await _interruptible(lambda stop: self._put(parts, stop, lambda fd: _write_all(fd, data)))

    async def put_file(self, name: str, path: str, *, consume: bool = False) -> None:
        """With `consume`, a file on the same filesystem as `root` is fsynced and renamed
        into place (no copy; `path` is gone after); otherwise it is copied."""
        parts = _parts(name)
        if consume and await asyncio.to_thread(self._move_in, parts, path):
            return

        def run(stop: threading.Event) -> None:
            try:
                src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as e:
                raise TargetError(f"cannot read {path}: {e.strerror}") from e
            try:
                self._put(parts, stop, lambda fd: _copy(src, fd, stop))
            finally:
                os.close(src)

        await _interruptible(run)

    async def get(self, name: str) -> bytes:
        parts = _parts(name)
        return await asyncio.to_thread(self._read, parts, 0, None)

    async def get_range(self, name: str, offset: int, length: int) -> bytes:
        parts = _parts(name)
        if offset < 0 or length < 0:
            raise TargetError(f"bad range for {name}: offset {offset}, length {length}")
        return await asyncio.to_thread(self._read, parts, offset, length)

    async def stat(self, name: str) -> ObjectInfo | None:
        parts = _parts(name)
        return await asyncio.to_thread(self._stat, name, parts)

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        if not _PREFIX.fullmatch(prefix) or ".." in prefix:
            raise TargetError(f"not a valid object name prefix: {prefix[:60]!r}")
        walk = self._walk(prefix)
        try:
            while True:
                batch = await asyncio.to_thread(_take, walk, _LIST_BATCH)
                for info in batch:
                    yield info
                if len(batch) < _LIST_BATCH:
                    return
        finally:
            walk.close()

    async def delete(self, name: str) -> None:
        parts = _parts(name)
        await asyncio.to_thread(self._delete, parts)

    async def check(self) -> None:
        """Write a probe object, read it back, compare, delete it; errors say which step."""
        await probe(self, f"backup directory {self.root}")

    async def cleanup(self, older_than: float = 3600.0) -> None:
        """Remove temporary files of interrupted puts last touched over `older_than` s ago."""
        await asyncio.to_thread(self._cleanup, self._clock() - older_than)

    async def close(self) -> None:
        return None

    # -- blocking parts (run in threads)

    def _open_root(self, *, create: bool) -> int:
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create or self.root.parent == self.root.parent.parent:
                # a missing folder right under / is a typo or an unmounted disk, never made here
                raise TargetError(
                    f"backup directory {self.root} does not exist: is the disk mounted?"
                ) from None
        except OSError as e:
            raise TargetError(f"cannot open backup directory {self.root}: {e.strerror}") from e
        try:
            os.mkdir(self.root, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise TargetError(f"cannot create backup directory {self.root}: {e.strerror}") from e
        return self._open_root(create=False)

    def _open_dir(self, dirs: _Parts, *, create: bool) -> int:
        """An fd of root/dirs..., each component opened without following links."""
        fd = self._open_root(create=create)
        try:
            for i, part in enumerate(dirs):
                try:
                    sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    try:
                        os.mkdir(part, 0o700, dir_fd=fd)
                    except FileExistsError:
                        pass
                    os.fsync(fd)  # the new directory's entry is durable before files go in
                    sub = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except NotADirectoryError as e:
                    where = "/".join(dirs[: i + 1])
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                    if stat_mod.S_ISLNK(st.st_mode):
                        raise _refusal(where, e) from e
                    raise FileNotFoundError(errno.ENOENT, f"{where} is a file") from e
                except OSError as e:
                    raise _refusal("/".join(dirs[: i + 1]), e) from e
                os.close(fd)
                fd = sub
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _put(self, parts: _Parts, stop: threading.Event, fill: Callable[[int], None]) -> None:
        name = "/".join(parts)
        try:
            d = self._open_dir(parts[:-1], create=True)
        except OSError as e:  # a file in the way, a directory gone while being made, ...
            raise TargetError(f"cannot store {name}: {e.strerror}") from e
        try:
            temp = f"{parts[-1]}~{secrets.token_hex(8)}.tmp"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            try:
                fd = os.open(temp, flags, 0o600, dir_fd=d)
            except OSError as e:
                raise TargetError(f"cannot store {name}: {e.strerror}") from e
            try:
                try:
                    fill(fd)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if stop.is_set():
                    raise _Interrupted
                os.rename(temp, parts[-1], src_dir_fd=d, dst_dir_fd=d)
            except BaseException as e:
                try:
                    os.unlink(temp, dir_fd=d)
                except OSError:
                    pass
                if isinstance(e, OSError):
                    raise TargetError(f"cannot store {name}: {e.strerror}") from e
                raise
            os.fsync(d)
        finally:
            os.close(d)

    def _move_in(self, parts: _Parts, path: str) -> bool:
        """Rename the local file `path` to the object (after an fsync of it, then of the
        directory); False, touching nothing, if it is on another filesystem."""
        name = "/".join(parts)
        try:
            d = self._open_dir(parts[:-1], create=True)
        except OSError as e:
            raise TargetError(f"cannot store {name}: {e.strerror}") from e
        try:
            try:
                src = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as e:
                raise TargetError(f"cannot read {path}: {e.strerror}") from e
            try:
                if os.fstat(src).st_dev != os.fstat(d).st_dev:
                    return False
                os.fsync(src)
            finally:
                os.close(src)
            try:
                os.rename(path, parts[-1], dst_dir_fd=d)  # a planted link is replaced
            except OSError as e:
                if e.errno == errno.EXDEV:
                    return False
                raise TargetError(f"cannot store {name}: {e.strerror}") from e
            os.fsync(d)
            return True
        finally:
            os.close(d)

    def _open_file(self, parts: _Parts) -> int:
        name = "/".join(parts)
        try:
            d = self._open_dir(parts[:-1], create=False)
        except FileNotFoundError:
            raise TargetMissing(f"no object {name}") from None
        except OSError as e:  # pragma: no cover - _open_dir translates the rest
            raise TargetError(f"cannot read {name}: {e.strerror}") from e
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=d)
        except FileNotFoundError:
            raise TargetMissing(f"no object {name}") from None
        except OSError as e:
            raise _refusal(name, e) from e
        finally:
            os.close(d)
        if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise TargetError(f"{name} in the backup directory is not a regular file")
        return fd

    def _read(self, parts: _Parts, offset: int, length: int | None) -> bytes:
        fd = self._open_file(parts)
        try:
            if length is None:
                length = max(os.fstat(fd).st_size - offset, 0)
            out = bytearray()
            while len(out) < length:
                got = os.pread(fd, min(length - len(out), 16 * _CHUNK), offset + len(out))
                if not got:
                    break
                out += got
            return bytes(out)
        except OSError as e:
            raise TargetError(f"cannot read {'/'.join(parts)}: {e.strerror}") from e
        finally:
            os.close(fd)

    def _stat(self, name: str, parts: _Parts) -> ObjectInfo | None:
        try:
            fd = self._open_file(parts)
        except TargetMissing:
            return None
        try:
            return ObjectInfo(name, os.fstat(fd).st_size)
        finally:
            os.close(fd)

    def _delete(self, parts: _Parts) -> None:
        name = "/".join(parts)
        try:
            d = self._open_dir(parts[:-1], create=False)
        except FileNotFoundError:
            return
        try:
            st = os.stat(parts[-1], dir_fd=d, follow_symlinks=False)
            if stat_mod.S_ISDIR(st.st_mode):
                raise TargetError(f"{name} in the backup directory is a directory")
            os.unlink(parts[-1], dir_fd=d)  # a planted link is removed, never followed
            os.fsync(d)
        except FileNotFoundError:
            return
        except OSError as e:
            raise TargetError(f"cannot delete {name}: {e.strerror}") from e
        finally:
            os.close(d)

    def _walk(self, prefix: str) -> Generator[ObjectInfo, None, None]:
        """Objects under `prefix` in name order, without following links (they are skipped)."""
        head, _, rest = prefix.rpartition("/")
        dirs = head.split("/") if head else []
        try:
            fd = self._open_dir(dirs, create=False)
        except FileNotFoundError:
            return
        base = head + "/" if head else ""
        yield from _walk_dir(fd, base, rest)

    def _cleanup(self, cutoff: float) -> None:
        try:
            fd = self._open_root(create=False)
        except TargetError:
            return
        _clean_dir(fd, cutoff)


def _parts(name: str) -> list[str]:
    return check_name(name).split("/")  # no empty or "." component (base.py)


def _refusal(name: str, e: OSError) -> TargetError:
    if e.errno in (errno.ELOOP, errno.ENOTDIR):
        return TargetError(
            f"{name} in the backup directory is a symbolic link or not a directory:"
            " refusing to follow it"
        )
    return TargetError(f"cannot open {name} in the backup directory: {e.strerror}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view[: 16 * _CHUNK])
        view = view[n:]


def _copy(src: int, dst: int, stop: threading.Event) -> None:
    """Copy `src` to its end into `dst`, in the kernel (sendfile) where it can, else through
    an 8 MiB buffer; `stop` is looked at between steps."""
    offset = 0
    while True:
        if stop.is_set():
            raise _Interrupted
        try:
            n = os.sendfile(dst, src, offset, 8 * _CHUNK)
        except OSError as e:
            if (
                e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ESPIPE)
                or offset
            ):
                raise
            break  # no sendfile between these files: copy through a buffer
        if not n:
            return
        offset += n
    while chunk := os.read(src, 8 * _CHUNK):
        if stop.is_set():
            raise _Interrupted
        _write_all(dst, chunk)


class _Interrupted(Exception):
    """The put was cancelled: its temporary file is removed and no object made."""


async def _interruptible(fn: Callable[[threading.Event], None]) -> None:
    """Run `fn` in a thread; if the caller is cancelled, tell `fn` to stop (it drops its
    temporary file at its next step) and return at once (a blocked read may take a while)."""
    stop = threading.Event()
    task = asyncio.ensure_future(asyncio.to_thread(fn, stop))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        stop.set()
        task.add_done_callback(_swallow)
        raise


def _swallow(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()


def _take(it: Iterator[ObjectInfo], n: int) -> list[ObjectInfo]:
    out: list[ObjectInfo] = []
    for info in it:
        out.append(info)
        if len(out) == n:
            break
    return out


def _entries(fd: int) -> list[tuple[str, str, os.stat_result]]:
    """(sort key, entry name, lstat) of a directory: a directory sorts as `name/`, so walking
    in this order yields full names in string order."""
    out = []
    for entry in os.listdir(fd):
        try:
            st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        key = entry + "/" if stat_mod.S_ISDIR(st.st_mode) else entry
        out.append((key, entry, st))
    out.sort()
    return out


def _walk_dir(fd: int, base: str, match: str) -> Iterator[ObjectInfo]:
    try:
        for _key, entry, st in _entries(fd):
            if not entry.startswith(match):
                continue
            if stat_mod.S_ISDIR(st.st_mode):
                try:
                    sub = os.open(entry, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue  # swapped for a link since: not followed
                yield from _walk_dir(sub, f"{base}{entry}/", "")
            elif stat_mod.S_ISREG(st.st_mode):
                full = base + entry
                try:
                    check_name(full)
                except TargetError:
                    continue  # temporary files and anything not ours
                yield ObjectInfo(full, st.st_size)
    finally:
        os.close(fd)


def _clean_dir(fd: int, cutoff: float) -> None:
    try:
        for _key, entry, st in _entries(fd):
            if stat_mod.S_ISDIR(st.st_mode):
                try:
                    sub = os.open(entry, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue
                _clean_dir(sub, cutoff)
            elif stat_mod.S_ISREG(st.st_mode) and _TEMP.fullmatch(entry) and st.st_mtime < cutoff:
                try:
                    os.unlink(entry, dir_fd=fd)
                except FileNotFoundError:
                    pass
    finally:
        os.close(fd)
