"""Fixtures of the dashboard tests."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from tests.dashboard.dashkit import PlatformStarter, edged_platform


@pytest.fixture
def platform(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> PlatformStarter:
    """Starts this test's platform: `async with platform(docker_host=...) as ed:`."""
    return functools.partial(
        edged_platform, monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
    )
