"""EdgeSync with real nginx and NATS and no dns, apps or certs service answering: it serves the
local domain's `my.localhost` alone; `serves()` follows the live nginx generation; an event of a
followed category starts a round at once although the safety-net poll is 300 s, and an event of
another category does not; a burst of events makes one round, not one per event."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from deploy.embedded import free_port
from services.gateway.edge.sync import FOLLOWED, EdgeSettings, EdgeSync, _Host
from tests.support.bus import connect
from tests.support.edge import edge_get
from tests.support.nginx import Upstream, nginx_binary
from tests.support.waits import wait_until


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    conn = await connect(nats_url)
    yield conn
    await conn.close()


def _settings(root: Path, upstream: Upstream, uniq: str) -> EdgeSettings:
    nginx_binary()  # a missing nginx fails (CI) or skips here, naming it
    return EdgeSettings(
        prefix=root / "edge",
        http_port=free_port(),
        https_port=free_port(),
        acme_dir=root / "acme",
        dashboard_upstream=upstream.address,
        bind=("127.0.0.1",),
        interval=300,  # only an event can explain a round within the test
        retry=300,  # (no dns or apps service answers here)
        events_prefix=f"t{uniq}.evt",
    )


async def test_serves_what_the_live_generation_has_and_follows_events(
    nc: NATS, edge_root: Path, upstream: Upstream, uniq: str
) -> None:
    settings = _settings(edge_root, upstream, uniq)
    sync = EdgeSync(settings, nc)
    assert not sync.serves("my.localhost")  # nothing applied yet
    task = asyncio.create_task(sync.run(), name="edge sync under test")
    try:

        async def serving() -> bool:
            return sync.serves("my.localhost")

        await wait_until(serving, 30, "my.localhost in the live generation")
        status, _, body = await edge_get(settings.https_port, "my.localhost", "/hello")
        assert status == 200 and json.loads(body)["path"] == "/hello"  # the dashboard upstream
        assert not sync.serves("blog.localhost")
        assert not sync.serves("my.example.test")

        rounds = sync.rounds
        await nc.publish(f"t{uniq}.evt.group.GroupCreated", b"{}")  # not a followed category
        await nc.flush()
        await asyncio.sleep(0.5)
        assert sync.rounds == rounds

        for category in FOLLOWED:
            before = sync.rounds

            async def another_round(before: int = before) -> bool:
                return sync.rounds > before

            await nc.publish(f"t{uniq}.evt.{category}.Anything", b"{}")
            await wait_until(another_round, 5, f"a round after a {category} event")
            assert sync.serves("my.localhost")

        # a burst of events is one round (debounced), perhaps two, never one per event
        before = sync.rounds
        for n in range(50):
            await nc.publish(f"t{uniq}.evt.{FOLLOWED[n % len(FOLLOWED)]}.Anything", b"{}")
        await nc.flush()

        async def burst_round() -> bool:
            return sync.rounds > before

        await wait_until(burst_round, 5, "a round after a burst of events")
        await asyncio.sleep(0.5)
        assert sync.rounds - before <= 2
    finally:
        sync.stop()
        await asyncio.wait_for(task, 30)
    assert not sync.serves("my.localhost")  # nginx stopped with the sync
    assert not sync.up()


async def test_a_gone_domain_is_forgotten_only_once_dns_and_certs_could_be_asked(
    nc: NATS, edge_root: Path, upstream: Upstream, uniq: str
) -> None:
    """A `my.<domain>` whose domain went away keeps its record and certificate on the list of
    things to forget while dns or certs cannot be asked (here: neither runs), so a later round
    asks again instead of leaving them behind for good."""
    sync = EdgeSync(_settings(edge_root, upstream, uniq), nc)
    sync._hosts["my.gone.test"] = _Host(record=True, certificate=True)
    sync._hosts["my.also-gone.test"] = _Host(certificate=True)
    await sync._forget_gone({"my.localhost"})
    assert set(sync._hosts) == {"my.gone.test", "my.also-gone.test"}
    assert sync._hosts["my.gone.test"] == _Host(record=True, certificate=True)


async def test_apps_are_served_soon_after_the_apps_service_comes_up(
    nc: NATS, edge_root: Path, upstream: Upstream, uniq: str, nats_url: str
) -> None:
    """After a reboot the gateway may start before apps: the edge asks again after `retry`
    seconds (not the 30 s safety net), so apps are back as soon as the apps service answers."""
    from dataclasses import replace

    from tests.gateway.test_api_domains import apps_stand_in

    settings = replace(_settings(edge_root, upstream, uniq), retry=0.5)
    sync = EdgeSync(settings, nc)
    task = asyncio.create_task(sync.run(), name="edge sync under test")
    app = {
        "app_id": "a1",
        "location": "blog",
        "domain": "localhost",
        "http_port": int(upstream.address.rsplit(":", 1)[1]),
        "state": "installed",
        "manifest_id": "org.example.blog",
        "version": "1.0.0",
    }
    try:

        async def dashboard() -> bool:
            return sync.serves("my.localhost")

        await wait_until(dashboard, 30, "my.localhost served without apps")
        assert not sync.serves("blog.localhost")
        async with apps_stand_in(nats_url, [app]):

            async def blog() -> bool:
                return sync.serves("blog.localhost")

            await wait_until(blog, 10, "blog.localhost once apps answers (interval is 300 s)")
    finally:
        sync.stop()
        await asyncio.wait_for(task, 30)


async def test_an_app_is_reached_at_its_upstream_and_one_without_at_its_host_port(
    nc: NATS, edge_root: Path, upstream: Upstream, uniq: str, nats_url: str
) -> None:
    """An app whose container has an address of the app subnet pool is proxied there (its
    `upstream`), not to the port published on 127.0.0.1 (here closed: the page could not come
    from it); an app from before the pool (no upstream), and a stopped one, at
    127.0.0.1:<http_port>."""
    from dataclasses import replace

    from tests.gateway.test_api_domains import apps_stand_in

    settings = replace(_settings(edge_root, upstream, uniq), retry=0.5)
    port = int(upstream.address.rsplit(":", 1)[1])
    common = {"domain": "localhost", "state": "installed", "version": "1.0.0"}
    pooled = {
        **common,
        "app_id": "a1",
        "location": "pooled",
        "manifest_id": "org.example.pooled",
        "http_port": free_port(),  # nothing listens there
        "upstream": upstream.address,
    }
    stopped = {
        **common,
        "app_id": "a3",
        "location": "stopped",
        "manifest_id": "org.example.stopped",
        "http_port": free_port(),
        "upstream": "10.214.0.2:8080",
        "run_state": "stopped",
    }
    older = {
        **common,
        "app_id": "a2",
        "location": "older",
        "manifest_id": "org.example.older",
        "http_port": port,
        "upstream": None,
    }
    sync = EdgeSync(settings, nc)
    task = asyncio.create_task(sync.run(), name="edge sync under test")
    try:
        async with apps_stand_in(nats_url, [pooled, older, stopped]):

            async def all_three() -> bool:
                hosts = ("pooled.localhost", "older.localhost", "stopped.localhost")
                return all(sync.serves(h) for h in hosts)

            await wait_until(all_three, 30, "the three apps served")
            for host in ("pooled.localhost", "older.localhost"):
                status, _, body = await edge_get(settings.https_port, host, "/page")
                assert status == 200, (host, body)
                assert json.loads(body)["path"] == "/page"
        conf = "\n".join(p.read_text() for p in (settings.prefix).rglob("*.conf"))
        assert f"server {upstream.address}" in conf
        assert f"server 127.0.0.1:{pooled['http_port']}" not in conf
        # a stopped app: its closed host port (a 502 at once), not its address
        assert f"server 127.0.0.1:{stopped['http_port']}" in conf
        assert "server 10.214.0.2:8080" not in conf
    finally:
        sync.stop()
        await asyncio.wait_for(task, 30)
