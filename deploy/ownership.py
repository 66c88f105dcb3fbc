"""Who owns the files under a server install's data folder (deploy/units.py `directories`).

`give_to_users(layout, from_uids)` walks each unit's folder, deepest folders first, and gives
every file or folder owned by one of `from_uids` to that folder's owner (and group: the
folder's reader group where it has one, else the owner's). No link is followed (lchown), and a
file already owned by anybody else keeps its owner. In a folder shared with a reader group
(units.READER_GROUPS, e.g. the certificates nginx reads), what it gives gets the group's read
access too (folders g+rx, files g+r), and each unit's folder gets its mode back. Used:
- by the restore (deploy/server_restore.py): what root wrote goes to the units' users;
- by the installer on an install from before each service had a user of its own: what the
  one shared user `homeport` owned goes to each service's user.
`move_ip_keys(layout)`: identity's address keys from `<data>/identity/` (where they were) to
their own folder (`units.ip_keys_file`), once.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Callable, Collection
from pathlib import Path

from deploy.layout import Layout
from deploy.units import directories, ip_keys_file, unit_user

__all__ = ["give_to_users", "move_ip_keys"]


def give_to_users(layout: Layout, from_uids: Collection[int]) -> int:
    """Give what `from_uids` own under each unit's folder to its owner; how many changed."""
    folders = sorted(directories(layout).items(), key=lambda kv: len(kv[0].parts), reverse=True)
    done: set[Path] = set()
    changed = 0
    for folder, (owner, group, mode) in folders:
        if folder == layout.data or folder.is_symlink() or not folder.is_dir():
            continue
        user = pwd.getpwnam(owner)
        gid = user.pw_gid if group == owner else grp.getgrnam(group).gr_gid
        shared = group != owner
        for root, dirs, files in os.walk(folder):  # os.walk does not descend into links
            here = Path(root)
            for name in [*dirs, *files, "."]:
                path = (here / name) if name != "." else here
                if path in done:
                    continue
                done.add(path)
                st = os.lstat(path)
                if st.st_uid not in from_uids:
                    continue
                os.lchown(path, user.pw_uid, gid)
                changed += 1
                if shared and stat.S_ISDIR(st.st_mode):
                    os.chmod(path, stat.S_IMODE(st.st_mode) | 0o750)  # noqa: S103 - group r-x
                elif shared and stat.S_ISREG(st.st_mode):
                    os.chmod(path, stat.S_IMODE(st.st_mode) | 0o640)
        if stat.S_IMODE(os.lstat(folder).st_mode) != mode:
            os.chmod(folder, mode)
    return changed


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
    for name, mode in ((new.name, 0o640), (new.name.removesuffix(".json") + ".pub.json", 0o644)):
        src = old.with_name(name)
        if src.is_file() and not src.is_symlink():
            os.rename(src, new.with_name(name))
            os.lchown(new.with_name(name), identity.pw_uid, group)
            os.chmod(new.with_name(name), mode)
    say(f"      moved identity's address keys to {new.parent}")
