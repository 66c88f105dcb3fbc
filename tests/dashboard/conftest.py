"""Fixtures of the dashboard tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.dashboard.dashkit import Edged, PlatformStarter, edged_platform
from tests.dns.dnskit import dns_env, running_dns
from tests.gateway.apikit import backup_env, running_backup
from tests.support.mail import running_mail


@pytest.fixture
def platform(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> PlatformStarter:
    """Starts this test's platform (with the backup service, which the app page asks for its
    backups, and the mail service, which the profile asks for the person's mail):
    `async with platform(docker_host=...) as ed:`. With docker_host the whole platform of
    tests/e2e/kit.py runs, backup service and firewall included (the app page asks it for
    the app's ports; without Docker there is no app page to open); without, a backup service
    is added here (a second one would answer half of the backup service's requests from its
    own caches), and dns too with
    `dns=True` (mail is turned on only for a domain dns manages). Mail runs with its servers off
    (HP_MAIL_SERVERS=false): it decides, records and publishes its DNS records."""

    @asynccontextmanager
    async def start(*, dns: bool = False, **kw: Any) -> AsyncIterator[Edged]:
        env = backup_env(dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path)
        whole = kw.get("docker_host") is not None
        async with contextlib.AsyncExitStack() as stack:
            ed = await stack.enter_async_context(
                edged_platform(
                    monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path, **kw
                )
            )
            if not whole:
                await stack.enter_async_context(running_backup(monkeypatch, env))
            if dns and not whole:
                # beside identity, as in tests/e2e/kit.py: it reads the keys identity writes there
                dns_settings = dns_env(dsn=dsn, nats_url=nats_url, tmp_path=tmp_path)
                await stack.enter_async_context(running_dns(monkeypatch, dns_settings))
            await stack.enter_async_context(
                running_mail(
                    monkeypatch,
                    dsn=dsn,
                    nats_url=nats_url,
                    tmp_path=tmp_path,
                    # the identity events this test's relay publishes nudge its sync at once
                    env={"HP_EVENTS_PREFIX": f"t{uniq}.evt"},
                )
            )
            yield ed

    return start
