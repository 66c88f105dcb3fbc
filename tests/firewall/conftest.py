"""Fixtures of the firewall tests: a network namespace of the test's own (nft runs inside it,
so the host's packet filter is never touched) and the ban table in it."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.firewall.nft import BanSet, Nft
from tests.support.servers import need_server


@pytest.fixture
def netns(uniq: str) -> Iterator[str]:
    if shutil.which("nft") is None and not Path("/usr/sbin/nft").exists():
        need_server("nftables", FileNotFoundError("nft is not installed"))
    name = f"hp{uniq}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        need_server("network namespaces", OSError(made.stderr.strip()))
    yield name
    subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture
def ban_set(netns: str) -> BanSet:
    """Homeport's table inside the test's namespace, as the service under test sees it."""
    return BanSet(Nft(["ip", "netns", "exec", netns, "nft"]), "homeport")
