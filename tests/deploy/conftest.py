"""Fixtures of the update tests (tests/deploy/updatekit.py has the rest): a release key, a
served release directory, a bare virtualenv the test releases run in; and the systemd boxes of
the server install tests (tests/support/systemd_box.py)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deploy.release import generate_key
from tests.support.releases import serve_directory
from tests.support.systemd_box import Boxes


@pytest.fixture(scope="session")
def bare_venv(tmp_root: Path) -> Path:
    """A virtualenv without packages: the test releases need only the standard library."""
    venv = tmp_root / "release-venv"
    if not venv.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return venv


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    return generate_key(tmp_path / "release.key")


@pytest.fixture
def www(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A release directory and the loopback URL it is served at."""
    (tmp_path / "www").mkdir()
    with serve_directory(tmp_path / "www") as url:
        yield tmp_path / "www", url


@pytest.fixture(scope="session")
def boxes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Boxes]:
    """The systemd boxes of this session: the installer's tests leave their installed platform
    to the server restore test (one box booted and installed, not two)."""
    found = Boxes(tmp_path_factory)
    try:
        yield found
    finally:
        found.close()
