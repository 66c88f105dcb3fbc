"""Giving files to the units' users (deploy/ownership.py), as the restore (root's files) and the
move from the one shared user do, with real users of this machine: `nobody` stands for the
old owner, root for a unit's user, `nogroup` for a reader group."""

from __future__ import annotations

import grp
import os
import pwd
import stat
from pathlib import Path

import pytest

from deploy.layout import Layout
from deploy.ownership import _opened, give_to_users


@pytest.fixture
def ids() -> tuple[int, int]:
    if os.geteuid() != 0:
        pytest.skip("giving files to other users needs root here")
    return pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid


def _owner_mode(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_what_the_old_owner_had_goes_to_each_folders_owner_and_nothing_through_a_link(
    tmp_path: Path, ids: tuple[int, int]
) -> None:
    nobody, nogroup = ids
    layout = Layout(tmp_path / "root")
    data = layout.data
    shared, own = data / "certs" / "live", data / "identity"
    for folder in (shared, own):
        folder.mkdir(parents=True)
    (shared / "host").mkdir()
    key, mine, note = shared / "host" / "privkey.pem", shared / "root.pem", own / "note"
    for f in (key, mine, note):
        f.write_text("x")
        f.chmod(0o600)
    outside = tmp_path / "outside"  # not under any unit's folder: must stay as it is
    outside.write_text("secret")
    outside.chmod(0o600)
    (shared / "link").symlink_to(outside)
    for path in (shared, shared / "host", key, own, note, outside):
        os.chown(path, nobody, nobody)
    os.lchown(shared / "link", nobody, nobody)
    folders = {
        data / "certs": ("root", "root", 0o700),  # walks around live/: it has its own entry
        shared: ("root", "nogroup", 0o2750),
        own: ("root", "root", 0o700),
    }
    given = give_to_users(layout, {nobody}, folders)

    assert given == 6  # live, host, privkey, link, identity's note and identity
    assert _owner_mode(shared) == (0, nogroup, 0o2750)
    assert _owner_mode(shared / "host")[:2] == (0, nogroup)
    assert _owner_mode(shared / "host")[2] & 0o750 == 0o750
    assert _owner_mode(key) == (0, nogroup, 0o640)  # the reader group reads it
    assert _owner_mode(mine) == (0, 0, 0o600)  # already someone else's: left alone
    assert _owner_mode(note) == (0, 0, 0o600)  # a folder of one user: no group bits
    assert os.lstat(shared / "link").st_uid == 0
    assert _owner_mode(outside) == (nobody, nobody, 0o600)  # nothing went through the link
    assert give_to_users(layout, {nobody}, folders) == 0  # a second run finds nothing


def test_a_file_swapped_for_a_link_after_it_was_looked_at_is_refused(tmp_path: Path) -> None:
    path, target = tmp_path / "file", tmp_path / "target"
    path.write_text("x")
    target.write_text("y")
    st = os.lstat(path)
    path.rename(tmp_path / "kept")  # kept: its inode is not reused by what comes next
    path.symlink_to(target)
    with pytest.raises(OSError), _opened(path, st):
        pass
    path.unlink()
    path.write_text("another file at the same name")
    with pytest.raises(OSError, match="changed while its owner was being set"), _opened(path, st):
        pass
