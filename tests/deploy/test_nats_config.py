"""NATS's pre-start on a server (deploy/nats_config.py): each service's password file goes to
the user its *installed* unit runs as. An install whose unit files are still an older
release's (every service `User=homeport`) keeps working after `homeport update` switched the
code: its services can still read their passwords (before, the new code gave them to users
that only install.sh makes, and NATS did not start)."""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

import pytest

from deploy.nats_config import installed_user, write_config
from deploy.units import unit_name, unit_user
from libs.events.nats_access import SERVICE_USERS


def test_a_password_goes_to_the_user_of_the_installed_unit(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving files to other users needs root here")
    units = tmp_path / "units"
    units.mkdir()
    # the identity unit as an older release wrote it (another user: nobody stands for
    # `homeport`); the gateway's as this one does but naming root; the rest have no unit file
    (units / unit_name("identity")).write_text("[Service]\nUser=nobody\nGroup=nogroup\n")
    (units / unit_name("gateway")).write_text("[Service]\nUser=\nUser=root\n")
    assert installed_user("identity", units) == "nobody"
    assert installed_user("gateway", units) == "root"
    assert installed_user("apps", units) == unit_user("apps") == "homeport-apps"

    creds, out = tmp_path / "creds", tmp_path / "auth.conf"
    only = [u for u in SERVICE_USERS if u not in ("identity", "gateway")]
    for user in only:  # their installed units are missing: theirs would be homeport-<name>
        (units / unit_name(user)).write_text("[Service]\nUser=root\n")
    assert write_config(creds, out, "root", unit_dir=units)
    nobody = pwd.getpwnam("nobody")
    st = os.stat(creds / "identity")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (nobody.pw_uid, nobody.pw_gid, 0o600)
    assert os.stat(creds / "gateway").st_uid == 0
    assert stat.S_IMODE(os.stat(creds).st_mode) == 0o711
    # the text changes only with the passwords or permissions: a second start writes nothing
    assert not write_config(creds, out, "root", unit_dir=units)
