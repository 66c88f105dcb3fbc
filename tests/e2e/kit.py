"""The real identity service, the real gateway and the relay, together in this process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.apps.appskit import apps_env, running_apps, static_catalog
from tests.certs.certskit import running_certs
from tests.dns.dnskit import dns_env, running_dns
from tests.gateway.apikit import Client, backup_env, running_backup, running_gateway
from tests.identity.kit import Identity, running_identity
from tests.support.bus import relaying
from tests.support.firewall import firewall_env, running_firewall
from tests.support.notify import notify_env, running_notify


@dataclass
class Platform:
    identity: Identity
    client: Client


@asynccontextmanager
async def running_platform(
    monkeypatch: pytest.MonkeyPatch,
    *,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    docker_host: str | None = None,
    gateway_env: Mapping[str, str] | None = None,
    apps_extra: Mapping[str, str] | None = None,
    notify_extra: Mapping[str, str] | None = None,
) -> AsyncIterator[Platform]:
    """Identity, gateway and relay; with `docker_host`, the whole platform: the apps service
    too (the static app in several versions as its catalog), dns, certs (no ACME CA is
    reachable: nothing here orders a certificate), backup and the firewall (recording, never
    applying). `gateway_env` adds settings of
    the gateway (the edge, for one), `apps_extra` settings of the apps service. Notify always
    runs (the bell), with `notify_extra` on top of tests/support/notify.py's settings."""
    async with contextlib.AsyncExitStack() as stack:
        ident = await stack.enter_async_context(
            running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path)
        )
        (tmp_path / "notify").mkdir(exist_ok=True)
        notes = notify_env(
            dsn=dsn,
            nats_url=nats_url,
            uniq=uniq,
            tmp_path=tmp_path / "notify",
            # identity's address keys (its data dir is tmp_path): addresses are sealed to them
            extra={"HP_IP_KEYS": str(tmp_path / "ip-keys.json"), **(notify_extra or {})},
        )
        await stack.enter_async_context(running_notify(monkeypatch, notes))
        if docker_host is not None:
            env = apps_env(
                dsn=dsn,
                nats_url=nats_url,
                tmp_path=tmp_path,
                docker_host=docker_host,
                prefix=f"e{uniq[:8]}",
                catalog=static_catalog(tmp_path / "catalog"),
                extra=apps_extra,
            )
            await stack.enter_async_context(running_apps(monkeypatch, env))
            dns = dns_env(dsn=dsn, nats_url=nats_url, tmp_path=tmp_path)
            await stack.enter_async_context(running_dns(monkeypatch, dns))
            certs = {
                **dns,
                "HP_ACME_DIRECTORY": "https://127.0.0.1:9/directory",  # nothing answers there
                "HP_CERTS_DIR": str(tmp_path / "certs"),
                "HP_ACME_DIR": str(tmp_path / "acme"),
            }
            await stack.enter_async_context(running_certs(monkeypatch, certs))
            backup = backup_env(dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path)
            await stack.enter_async_context(running_backup(monkeypatch, backup))
            fw = firewall_env(dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path)
            await stack.enter_async_context(running_firewall(monkeypatch, fw))
        gateway = await stack.enter_async_context(
            running_gateway(
                monkeypatch,
                dsn=dsn,
                nats_url=nats_url,
                uniq=uniq,
                tmp_path=tmp_path,
                env=gateway_env,
            )
        )
        await stack.enter_async_context(relaying(dsn, nats_url, uniq))
        yield Platform(ident, gateway.client)
