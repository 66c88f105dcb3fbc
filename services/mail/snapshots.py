"""The mail store in backups: a snapshot for the backup service, and a restored store taken back.

A snapshot (`take`, the `snapshot` command) is `<root>/snapshots/<id>/`, a copy of the store as
it is at one moment that costs almost no space: every message file is hard-linked (Maildir never
changes a delivered message: a flag change renames it, a deletion unlinks it), everything else,
Dovecot's indexes, caches, logs and UID lists, which it writes in place, and Sieve scripts, is
copied. `tmp/` of a maildir (deliveries under way) is left empty. Links are copied as links,
never followed. The backup service stores the folder (kind "mail") and asks it forgotten
(`forget`); one a crash left behind is removed at the next start after a day (`forget_stale`).

Restored (`homeport restore`), the store of a mail backup waits in `<root>/restore-pending/`.
At its next start the mail service, before the servers, takes it in (`adopt`): every file and
folder given to the vmail user (0600 and 0700, links not followed), then each mailbox moved into
the store with one rename (one already there is kept in `<root>/before-restore/`), then the
folder removed. Cut short, the next start finishes it.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from libs.contracts.mail import SNAPSHOTS_FOLDER

__all__ = [
    "BEFORE_RESTORE",
    "PENDING",
    "Taken",
    "adopt",
    "forget",
    "forget_stale",
    "take",
]

PENDING = "restore-pending"  # in the mail root: the store of a restored mail backup
BEFORE_RESTORE = "before-restore"  # mailboxes a restore found in the store, kept aside
STALE_SECONDS = 24 * 3600
_MESSAGES = ("new", "cur")  # a maildir's message folders, in this order (see _take_messages)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@dataclass(frozen=True)
class Taken:
    """What a snapshot holds."""

    mailboxes: int
    files: int
    bytes: int


class _Count:
    def __init__(self) -> None:
        self.files = 0
        self.bytes = 0


def snapshot_dir(root: Path, snapshot_id: str) -> Path:
    return root / SNAPSHOTS_FOLDER / snapshot_id


def take(store: Path, dest: Path) -> Taken:
    """Make `dest` (must not exist; its parent is made 0700) a snapshot of the mail store
    `store`. A store that does not exist yet gives an empty snapshot. The store is walked
    through directory descriptors, each entry looked at as it is when it is taken: a folder
    swapped for a link meanwhile is copied as the link, never followed (root reads here what
    the store's user may change), and a file swapped for a fifo does not block."""
    try:
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(dest.parent)) from None
    dest.mkdir(mode=0o700)
    count = _Count()
    try:
        fd = os.open(store, _DIR_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return Taken(0, 0, 0)
    except OSError as e:
        if e.errno == errno.ELOOP:  # a link in the store's place: nothing of ours
            return Taken(0, 0, 0)
        raise
    try:
        mailboxes = 0
        for name in _names(fd):
            if _take_entry(fd, name, dest / name, count) == "dir":
                mailboxes += 1
    finally:
        os.close(fd)
    return Taken(mailboxes, count.files, count.bytes)


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return sorted(it, key=lambda e: e.name)
    except FileNotFoundError:  # removed meanwhile (a mailbox folder deleted)
        return []


def _names(dir_fd: int) -> list[str]:
    return sorted(os.listdir(dir_fd))


def _kind(dir_fd: int, name: str) -> str | None:
    """What `name` in the folder is now: "dir", "file", "link", another kind, None if gone."""
    try:
        mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "link" if stat.S_ISLNK(mode) else "other"


def _opened(dir_fd: int, name: str, flags: int) -> int | None:
    """`name` in the folder opened without following a link; None when it is gone or was
    swapped for a link (or a folder for something else) since it was looked at."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            return None
        raise


def _take_entry(dir_fd: int, name: str, dest: Path, count: _Count) -> str | None:
    """`name` of the folder into `dest`, as what it is now; that kind."""
    kind = _kind(dir_fd, name)
    try:
        if kind == "link":
            os.symlink(os.readlink(name, dir_fd=dir_fd), dest)
        elif kind == "dir":
            fd = _opened(dir_fd, name, _DIR_FLAGS)
            if fd is None:
                return None
            try:
                _take_dir(fd, dest, count)
            finally:
                os.close(fd)
        elif kind == "file":
            _copy(dir_fd, name, dest, count)
    except FileNotFoundError:  # gone meanwhile: a file Dovecot replaced or removed
        return None
    return kind


def _take_dir(dir_fd: int, dest: Path, count: _Count) -> None:
    dest.mkdir(mode=0o700)
    names = _names(dir_fd)
    maildir = all(_kind(dir_fd, m) == "dir" for m in _MESSAGES)
    for name in names:
        if maildir and name in ("tmp", *_MESSAGES) and _kind(dir_fd, name) == "dir":
            continue
        _take_entry(dir_fd, name, dest / name, count)
    if maildir:
        (dest / "tmp").mkdir(mode=0o700)
        for name in _MESSAGES:
            fd = _opened(dir_fd, name, _DIR_FLAGS)
            (dest / name).mkdir(mode=0o700)
            if fd is not None:
                try:
                    _take_messages(fd, dest / name, count)
                finally:
                    os.close(fd)


def _take_messages(dir_fd: int, dest: Path, count: _Count) -> None:
    """A maildir's `new` or `cur`, every message hard-linked. `new` comes first: a message
    Dovecot moves from `new` to `cur` meanwhile is found in one or the other. A message renamed
    in `cur` (its flags changed) between the listing and the link is found under its new name."""
    for name in _names(dir_fd):
        if _kind(dir_fd, name) != "file":
            continue
        try:
            _link(dir_fd, name, dest / name, count)
        except FileNotFoundError:
            base = name.split(":", 1)[0]
            for again in _names(dir_fd):
                if again.split(":", 1)[0] == base and not (dest / again).exists():
                    try:
                        _link(dir_fd, again, dest / again, count)
                    except FileNotFoundError:
                        continue
                    break


def _link(dir_fd: int, name: str, dest: Path, count: _Count) -> None:
    try:
        os.link(name, dest, src_dir_fd=dir_fd, follow_symlinks=False)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        _copy(dir_fd, name, dest, count)
        return
    count.files += 1
    count.bytes += os.lstat(dest).st_size


def _copy(dir_fd: int, name: str, dest: Path, count: _Count) -> None:
    """A regular file's bytes into a new file (0600), never through a link."""
    fd = _opened(dir_fd, name, _FILE_FLAGS)
    if fd is None:
        return
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            while chunk := os.read(fd, 1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
                count.bytes += len(chunk)
        finally:
            os.close(out)
    finally:
        os.close(fd)
    count.files += 1


def forget(root: Path, snapshot_id: str) -> bool:
    """Remove a snapshot; False when there was none."""
    folder = snapshot_dir(root, snapshot_id)
    if not os.path.lexists(folder):
        return False
    shutil.rmtree(folder)
    return True


def forget_stale(root: Path, now: float | None = None) -> list[str]:
    """Remove snapshots older than a day (a backup that stopped half-way left them)."""
    folder = root / SNAPSHOTS_FOLDER
    now = time.time() if now is None else now
    gone = []
    for entry in _entries(folder):
        if now - entry.stat(follow_symlinks=False).st_mtime > STALE_SECONDS:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
            gone.append(entry.name)
    return gone


def adopt(root: Path, store: Path, uid: int, gid: int) -> list[str]:
    """Take a restored store (`<root>/restore-pending`) into `store`; the mailboxes moved in.
    Nothing pending: nothing done."""
    pending = root / PENDING
    if not pending.is_dir() or pending.is_symlink():
        return []
    _give(pending, uid, gid)
    os.chmod(pending, 0o700)
    moved = []
    for entry in _entries(pending):
        target = store / entry.name
        if os.path.lexists(target):
            aside = root / BEFORE_RESTORE
            aside.mkdir(mode=0o700, exist_ok=True)
            os.rename(target, aside / f"{entry.name}-{int(time.time())}")
        os.rename(entry.path, target)
        moved.append(entry.name)
    os.rmdir(pending)
    return moved


def _give(folder: Path, uid: int, gid: int) -> None:
    """Every entry below `folder` (and it) to uid:gid, folders 0700, files 0600; links are
    changed themselves, never followed; walked through directory descriptors, so a folder
    swapped for a link meanwhile is not entered."""
    fd = os.open(folder, _DIR_FLAGS)
    try:
        _give_fd(fd, uid, gid)
    finally:
        os.close(fd)


def _give_fd(dir_fd: int, uid: int, gid: int) -> None:
    os.fchown(dir_fd, uid, gid)
    os.fchmod(dir_fd, 0o700)
    for name in os.listdir(dir_fd):
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            child = _opened(dir_fd, name, _DIR_FLAGS)
            if child is None:  # swapped for a link meanwhile: left alone
                continue
            try:
                _give_fd(child, uid, gid)
            finally:
                os.close(child)
        elif stat.S_ISREG(st.st_mode):
            fd = _opened(dir_fd, name, _FILE_FLAGS)
            if fd is None:
                continue
            try:
                os.fchown(fd, uid, gid)
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
        elif stat.S_ISLNK(st.st_mode):
            os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        else:  # a fifo, socket or device has no place in a mail store
            os.unlink(name, dir_fd=dir_fd)
