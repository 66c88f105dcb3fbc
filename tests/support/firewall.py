"""The real firewall service (services.firewall.__main__.build) running in this process, for
tests of its callers (the API, the dashboard): its commands, queries and read models work, and
it never touches the host's packet filter (HP_FIREWALL_APPLY=false, no container egress floor).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from libs.service.runner import Service
from tests.support.serving import serving

__all__ = ["firewall_env", "running_firewall"]


def firewall_env(
    *, dsn: str, nats_url: str, uniq: str, tmp_path: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The firewall's settings beside services of the same test (events stream, data dir)."""
    return {
        "HP_DATABASE_URL": dsn,
        "HP_NATS_URL": nats_url,
        "HP_EVENTS_STREAM": f"EV_{uniq}",
        "HP_EVENTS_PREFIX": f"t{uniq}.evt",
        "HP_DATA_DIR": str(tmp_path),
        "HP_HTTP_PORT": "0",
        "HP_DRAIN_SECONDS": "1",
        "HP_FIREWALL_APPLY": "false",  # the host's filter is left alone
        "HP_FIREWALL_EGRESS": "false",  # ... and its container egress rules too
        **(extra or {}),
    }


@asynccontextmanager
async def running_firewall(
    monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]
) -> AsyncIterator[Service]:
    """The firewall service with `env` (firewall_env), served until the block ends."""
    from services.firewall.__main__ import build

    async with serving(monkeypatch, build, env, "firewall", ready_within=30) as svc:
        yield svc
