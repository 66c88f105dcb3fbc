"""The real dns service (services.dns.__main__.build) running in this process, for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest

from libs.events.bus import BusClient
from libs.events.context import Context
from libs.events.store import PostgresEventStore
from libs.service.runner import Service
from tests.support.bus import ActorBus
from tests.support.pdns import PdnsZone
from tests.support.serving import serving

__all__ = ["Dns", "dns_env", "pdns_provider", "running_dns"]

SYSTEM = Context("system", "dns-test", None, None)


def dns_env(
    *, dsn: str, nats_url: str, tmp_path: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    return {
        "HP_DATABASE_URL": dsn,
        "HP_NATS_URL": nats_url,
        "HP_KEYRING": str(tmp_path / "keyring.json"),
        "HP_DATA_DIR": str(tmp_path),
        "HP_DRAIN_SECONDS": "1",
        "HP_HTTP_PORT": "0",
        "HP_APPS_TIMEOUT": "2",
        "HP_TXT_PROPAGATION_DEADLINE": "20",
        "HP_ALLOW_LOOPBACK_PROVIDERS": "true",  # the test PowerDNS and moto listen on loopback
        **(extra or {}),
    }


def pdns_provider(zone: PdnsZone, /, **change: Any) -> dict[str, Any]:
    """The provider config of `zone` on the test PowerDNS, as a user gives it."""
    host, port = zone.nameservers[0]
    return {
        "kind": "powerdns",
        "api_url": zone.api_url,
        "api_key": zone.api_key,
        "zone": zone.name,
        "nameservers": [f"{host}:{port}"],
        **change,
    }


@dataclass
class Dns:
    svc: Service
    bus: BusClient
    store: PostgresEventStore

    async def cmd(self, verb: str, payload: dict[str, Any], timeout: float = 30) -> Any:
        return await self.bus.command("dns", verb, payload, ctx=SYSTEM, timeout=timeout)

    async def ask(self, name: str, payload: dict[str, Any]) -> Any:
        return await self.bus.query("dns", name, payload, ctx=SYSTEM, timeout=10)

    async def events(self, domain: str) -> list[tuple[str, dict[str, Any]]]:
        """(type, data) of every event of the domain's stream."""
        return [(e.type, e.data) for e in await self.store.read_stream(f"domain-{domain}")]


@asynccontextmanager
async def running_dns(
    monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]
) -> AsyncIterator[Dns]:
    """The dns service in this process, ready; stopped (exit code 0) at the end."""
    from services.dns.__main__ import build

    async with serving(monkeypatch, build, env, "dns", ready_within=30) as svc:
        nc = await nats.connect(env["HP_NATS_URL"])
        store = await PostgresEventStore.open(env["HP_DATABASE_URL"], max_size=2)
        try:
            yield Dns(svc, ActorBus(nc, default_timeout=30), store)
        finally:
            await store.close()
            await nc.close()
