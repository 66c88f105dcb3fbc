"""The certificate files on disk (services/certs/store.py): who may read a pair. Alone, a pair
is its owner's only; in a folder shared with a reader group (a server install's
`<data>/certs/live`, group homeport-tls, setgid; nginx's user is in the group) the group reads
it too."""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

import pytest

from services.certs.store import CertFiles


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_pair_is_its_owners_only(tmp_path: Path) -> None:
    root = tmp_path / "live"
    paths = CertFiles(root).write("example.test", "chain\n", "key\n")
    folder = paths.key.parent.resolve()
    assert (_mode(folder), _mode(paths.key), _mode(paths.cert)) == (0o700, 0o600, 0o644)
    assert os.stat(paths.key).st_gid == os.getegid()


def test_a_pair_in_a_folder_shared_with_a_reader_group_is_readable_by_it(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a file another group than one's own needs root here")
    reader = grp.getgrnam("nogroup").gr_gid  # stands for homeport-tls
    assert reader != os.getegid()
    root = tmp_path / "live"
    root.mkdir()
    os.chown(root, -1, reader)
    os.chmod(root, 0o2750)  # as the installer makes it: setgid, what certs makes has its group
    files = CertFiles(root)
    for chain in ("first\n", "renewed\n"):  # a renewal replaces the pair, same rights
        paths = files.write("example.test", chain, "key\n")
        folder = paths.key.parent.resolve()
        assert (_mode(folder), _mode(paths.key)) == (0o750, 0o640)
        assert os.stat(folder).st_gid == os.stat(paths.key).st_gid == reader
        assert paths.cert.read_text() == chain
