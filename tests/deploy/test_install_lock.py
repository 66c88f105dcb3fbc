"""Two `deploy/install.sh` at once: the second stops at once, before apt or any copy, naming the
lock the first holds (the installer test in test_install.py runs it twice in turn)."""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_second_installer_stops_before_touching_anything(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "install.sh runs as root; so do the tests"
    lock = tmp_path / "install.lock"
    env = {**os.environ, "HOMEPORT_INSTALL_LOCK": str(lock)}
    with lock.open("a") as first:  # as a running install.sh holds it
        fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = subprocess.run(
            ["bash", str(REPO / "deploy" / "install.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert f"another install.sh is running (it holds {lock})" in r.stderr, r.stderr
    assert r.stdout == ""  # not one step: no "==> Debian packages"
