"""The real identity service, the real gateway and the relay, together in this process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.events.relaykit import relaying
from tests.gateway.apikit import Client, running_gateway
from tests.identity.kit import Identity, running_identity


@dataclass
class Platform:
    identity: Identity
    client: Client


@asynccontextmanager
async def running_platform(
    monkeypatch: pytest.MonkeyPatch, *, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> AsyncIterator[Platform]:
    async with (
        running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as ident,
        running_gateway(
            monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
        ) as gateway,
        relaying(dsn, nats_url, uniq),
    ):
        yield Platform(ident, gateway.client)
