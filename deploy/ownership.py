"""Who owns the files under a server install's data folder (deploy/units.py `directories`).

`give_to_users(layout, from_uids)` walks each unit's folder (a folder inside it that has an
entry of its own is left to that entry) and gives every file or folder owned by one of
`from_uids` to that folder's owner (and group: the folder's reader group where it has one,
else the owner's). No link is followed: links are lchown'd, everything else is changed
through a descriptor opened with O_NOFOLLOW and checked to be the file looked at, so a file
swapped for a link meanwhile changes nothing outside. A file already owned by anybody else
keeps its owner. In a folder shared with a reader group
(units.READER_GROUPS, e.g. the certificates nginx reads), what it gives gets the group's read
access too (folders g+rx, files g+r), and each unit's folder gets its mode back. Used:
- by the restore (deploy/server_restore.py): what root wrote goes to the units' users;
- by the installer on an install from before each service had a user of its own: what the
  one shared user `homeport` owned goes to each service's user.
`move_ip_keys(layout)`: identity's address keys from `<data>/identity/` (where they were) to
their own folder (`units.ip_keys_file`), once.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import stat
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path

from deploy.layout import Layout
from deploy.units import directories, ip_keys_file, unit_user
from libs.events.periods import public_path

__all__ = ["give_to_users", "move_ip_keys"]


def give_to_users(
    layout: Layout,
    from_uids: Collection[int],
    folders: Mapping[Path, tuple[str, str, int]] | None = None,
) -> int:
    """Give what `from_uids` own under each unit's folder (`folders`, by default
    `directories(layout)`) to its owner; how many changed. Each folder is walked once: a
    folder that has an entry of its own is left to that entry."""
    folders = directories(layout) if folders is None else folders
    changed = 0
    for folder, (owner, group, mode) in folders.items():
        if folder == layout.data or folder.is_symlink() or not folder.is_dir():
            continue
        user = pwd.getpwnam(owner)
        gid = user.pw_gid if group == owner else grp.getgrnam(group).gr_gid
        shared = group != owner  # a reader group's folder: what it gives, the group reads
        for root, dirs, files in os.walk(folder):  # os.walk does not descend into links
            here = Path(root)
            dirs[:] = [d for d in dirs if here / d not in folders]
            for path in (here / name for name in (*dirs, *files)):
                changed += _give(path, from_uids, user.pw_uid, gid, 0o750 if shared else 0)
        changed += _give(folder, from_uids, user.pw_uid, gid, 0)
        _set_mode(folder, mode)
    return changed


def _give(path: Path, from_uids: Collection[int], uid: int, gid: int, group_bits: int) -> int:
    """`path` (never through a link) to uid:gid if one of `from_uids` owns it, a folder with
    `group_bits` added and a file with their read bits; 1 if it changed hands."""
    st = os.lstat(path)
    if st.st_uid not in from_uids:
        return 0
    if stat.S_ISLNK(st.st_mode) or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        os.lchown(path, uid, gid)  # a link's or a special file's mode means nothing here
        return 1
    bits = group_bits if stat.S_ISDIR(st.st_mode) else group_bits & 0o640
    with _opened(path, st) as fd:
        os.fchown(fd, uid, gid)
        if bits:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) | bits)
    return 1


def _set_mode(folder: Path, mode: int) -> None:
    st = os.lstat(folder)
    if stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
        with _opened(folder, st) as fd:
            os.fchmod(fd, mode)


@contextlib.contextmanager
def _opened(path: Path, st: os.stat_result) -> Iterator[int]:
    """`path` opened without following a link, and still the file `st` was taken of (a file
    swapped for a link or another file meanwhile is refused: nothing is changed through it)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags | (os.O_DIRECTORY if stat.S_ISDIR(st.st_mode) else 0))
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise OSError(f"{path} changed while its owner was being set: run it again")
        yield fd
    finally:
        os.close(fd)


def move_ip_keys(layout: Layout, say: Callable[[str], None] = lambda _: None) -> None:
    """Identity's address keys (private and public file) from `<data>/identity/` into
    `ip_keys_file(layout)`'s folder, if they are there and not yet moved; the private file
    then readable by the folder's group (the firewall), the public one by all."""
    new = ip_keys_file(layout)
    old = layout.data / "identity" / new.name
    if not old.is_file() or old.is_symlink() or os.path.lexists(new):
        return
    identity = pwd.getpwnam(unit_user("identity"))
    group = os.stat(new.parent).st_gid
    for src, dst, mode in ((old, new, 0o640), (public_path(old), public_path(new), 0o644)):
        st = os.lstat(src) if os.path.lexists(src) else None
        if st is None or not stat.S_ISREG(st.st_mode):
            continue  # missing, or not a plain file (a link is never moved)
        os.rename(src, dst)
        with _opened(dst, st) as fd:
            os.fchown(fd, identity.pw_uid, group)
            os.fchmod(fd, mode)
    say(f"      moved identity's address keys to {new.parent}")
