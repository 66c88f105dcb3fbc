"""Alerts through the real notify service, identity and the relay: events that other services
write open and clear alerts, the notification centre shows them per administrator, read marks
and preferences are theirs, and a rebuild of the read model tells nobody twice."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from libs.contracts.errors import Forbidden, Invalid
from libs.events.context import Context
from libs.events.projection import replay_by_name
from libs.events.store import PostgresEventStore
from services.apps import events as apps_ev
from services.backup import events as backup_ev
from services.certs import events as certs_ev
from tests.identity.kit import Identity, running_identity
from tests.support.bus import relaying
from tests.support.notify import notify_env, running_notify
from tests.support.waits import wait_until

DOWN_AFTER = 1.0


@dataclass
class World:
    identity: Identity
    store: PostgresEventStore
    admin_id: str
    dsn: str

    def me(self) -> Context:
        return Context(actor=self.admin_id, admin=True, ip="192.0.2.7")

    async def ask(self, name: str, payload: dict[str, Any] | None = None, **kw: Any) -> Any:
        return await self.identity.bus.query(
            "notify", name, payload or {}, ctx=kw.get("ctx") or self.me()
        )

    async def cmd(self, verb: str, payload: dict[str, Any], **kw: Any) -> Any:
        return await self.identity.bus.command(
            "notify", verb, payload, ctx=kw.get("ctx") or self.me()
        )

    async def items(self) -> list[dict[str, Any]]:
        return list((await self.ask("notifications", {"limit": 200}))["items"])

    async def wait_for(self, title: str, kind: str, seconds: float = 15) -> dict[str, Any]:
        found: dict[str, Any] = {}

        async def there() -> bool:
            for n in await self.items():
                if n["title"] == title and n["kind"] == kind:
                    found.update(n)
                    return True
            return False

        await wait_until(there, seconds, f"{kind} notification {title!r}")
        return found


@pytest.fixture
async def world(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> AsyncIterator[World]:
    env = notify_env(
        dsn=dsn,
        nats_url=nats_url,
        uniq=uniq,
        tmp_path=tmp_path / "notify",
        extra={
            "HP_NOTIFY_APP_DOWN_SECONDS": str(DOWN_AFTER),
            "HP_NOTIFY_DISK_PATHS": str(tmp_path),
            "HP_NOTIFY_DISK_WARNING": "100",  # this test's disk is not what it is about
            "HP_NOTIFY_DISK_CRITICAL": "100",
            "HP_NOTIFY_MEMORY_AVAILABLE": "0.001",
            "HP_NOTIFY_MEMORY_PSI": "100",
        },
    )
    (tmp_path / "notify").mkdir()
    async with (
        running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as ident,
        relaying(dsn, nats_url, uniq),
        running_notify(monkeypatch, env),
    ):
        store = await PostgresEventStore.open(dsn, max_size=2)
        try:
            admin_id = await ident.set_up()
            yield World(ident, store, admin_id, dsn)
        finally:
            await store.close()


async def _app(store: PostgresEventStore, app_id: str, *events: Any) -> None:
    stream = apps_ev.app_stream(app_id)
    await store.append(stream, list(events), await store.stream_version(stream))


def _installed(app_id: str) -> list[Any]:
    task = str(uuid.uuid4())
    return [
        apps_ev.AppInstallRequested(
            app_id=app_id,
            manifest_id="org.example.static",
            version="1.0.0",
            location="blog",
            domain="example.org",
            access={"all_users": True, "groups": [], "user_ids": []},
            memory_bytes=1 << 27,
            env={},
            task_id=task,
        ),
        apps_ev.AppInstalled(app_id=app_id, task_id=task, version="1.0.0"),
    ]


async def test_an_app_down_opens_one_alert_and_its_return_resolves_it(world: World) -> None:
    app_id = str(uuid.uuid4())
    await _app(world.store, app_id, *_installed(app_id))
    await _app(world.store, app_id, apps_ev.AppDied(app_id=app_id, exit_code=137))
    title = "org.example.static at blog.example.org is down"
    opened = await world.wait_for(title, "opened")
    assert opened["severity"] == "critical" and opened["category"] == "apps"
    assert opened["open"] is True and opened["read"] is False
    assert (await world.ask("unread_count"))["unread"] >= 1
    alerts = (await world.ask("alerts"))["items"]
    assert [a["key"] for a in alerts if a["open"]] == [f"app-down:{app_id}"]

    # it dies again while down: still one open alert, no second notification
    await _app(world.store, app_id, apps_ev.AppDied(app_id=app_id, exit_code=137))
    await _app(world.store, app_id, apps_ev.AppRecovered(app_id=app_id))
    resolved = await world.wait_for(f"Resolved: {title}", "resolved")
    assert resolved["severity"] == "info"
    kinds = [n["kind"] for n in await world.items() if title in n["title"]]
    assert sorted(kinds) == ["opened", "resolved"]
    assert not [a for a in (await world.ask("alerts"))["items"] if a["open"]]
    # no mail service runs here: delivery is recorded, with why nothing was mailed
    got = await world.wait_for(title, "opened")

    async def delivered() -> bool:
        n = next(n for n in await world.items() if n["id"] == got["id"])
        return bool(n["note"])

    await wait_until(delivered, 15, "the delivery of the alert to be recorded")
    n = next(n for n in await world.items() if n["id"] == got["id"])
    assert n["mailed"] == 0 and n["note"]


async def test_certificates_and_backups_open_alerts_from_their_events(world: World) -> None:
    failed = certs_ev.CertificateRenewalFailed(
        primary="blog.example.org",
        code="unauthorized",
        message="the CA could not validate the challenge",
        retry_at="2026-12-06T13:00:00+00:00",
    )
    await world.store.append("cert-blog.example.org", [failed])
    n = await world.wait_for("The certificate for blog.example.org could not be renewed", "opened")
    assert "could not validate" in n["detail"]
    run = str(uuid.uuid4())
    await world.store.append(
        f"backuprun-{run}",
        [backup_ev.BackupFailed(run_id=run, app_id=None, reason="the target is full")],
    )
    n = await world.wait_for("A backup failed", "opened")
    assert "the target is full" in n["detail"]


async def test_read_marks_are_per_administrator_and_others_are_refused(world: World) -> None:
    app_id = str(uuid.uuid4())
    await _app(world.store, app_id, *_installed(app_id))
    await _app(world.store, app_id, apps_ev.AppOutOfMemory(app_id=app_id, memory_bytes=1 << 27))
    n = await world.wait_for("org.example.static at blog.example.org ran out of memory", "opened")
    reply = await world.cmd("mark_read", {"ids": [n["id"]]})
    assert reply["unread"] == 0
    assert all(i["read"] for i in await world.items())
    assert (await world.ask("notifications", {"unread": True}))["items"] == []
    # another administrator has not read it
    other = str(uuid.uuid4())
    theirs = Context(actor=other, admin=True)
    assert (await world.ask("unread_count", ctx=theirs))["unread"] == 1
    # a user who is not an administrator has no notification centre
    with pytest.raises(Forbidden):
        await world.ask("notifications", ctx=Context(actor=other, admin=False))
    with pytest.raises(Invalid) as e:
        await world.cmd("mark_read", {})
    assert e.value.field == "ids"
    with pytest.raises(Invalid) as e:
        await world.ask("notifications", {"cursor": "bm90LWEtY3Vyc29y"})
    assert e.value.field == "cursor"


async def test_preferences_keep_push_urls_sealed_and_refuse_bad_ones(world: World) -> None:
    url = "json://127.0.0.1:9/hook?token=s3cr3t-t0ken"
    got = await world.cmd(
        "set_preferences", {"email": ["apps", "security"], "push": ["apps"], "push_urls": [url]}
    )
    assert got["email"] == ["apps", "security"] and got["push"] == ["apps"]
    assert len(got["push_urls"]) == 1 and "s3cr3t" not in got["push_urls"][0]
    rows = await world.store.pool.fetch(
        "SELECT data::text AS d FROM events.events WHERE type = 'NotifyPreferencesSet'"
    )
    assert rows and all("s3cr3t" not in r["d"] for r in rows)
    # push_urls null keeps the URLs
    kept = await world.cmd("set_preferences", {"email": [], "push": ["apps"], "push_urls": None})
    assert kept["email"] == [] and len(kept["push_urls"]) == 1
    for bad in ("file:///etc/passwd", "json://169.254.169.254/latest", "x" * 1999):
        with pytest.raises(Invalid) as e:
            await world.cmd("set_preferences", {"email": [], "push": [], "push_urls": [bad]})
        assert e.value.field == "push_urls.0"
    with pytest.raises(Invalid) as e:
        await world.cmd("set_preferences", {"email": ["bogus"], "push": []})
    assert e.value.field.startswith("email")
    assert (await world.ask("preferences"))["email"] == []  # nothing half-changed


async def test_a_rebuild_tells_nobody_twice(world: World) -> None:
    app_id = str(uuid.uuid4())
    await _app(world.store, app_id, *_installed(app_id))
    await _app(world.store, app_id, apps_ev.AppOutOfMemory(app_id=app_id, memory_bytes=1 << 27))
    title = "org.example.static at blog.example.org ran out of memory"
    await world.wait_for(title, "opened")

    async def delivered() -> bool:
        return bool(
            await world.store.pool.fetchval("SELECT bool_and(delivered) FROM notify.notifications")
        )

    await wait_until(delivered, 15, "every notification delivered")
    before = await world.store.pool.fetch(
        "SELECT id, delivered, note FROM notify.notifications ORDER BY position"
    )
    await replay_by_name("notify", world.dsn)
    after = await world.store.pool.fetch(
        "SELECT id, delivered, note FROM notify.notifications ORDER BY position"
    )
    assert [dict(r) for r in after] == [dict(r) for r in before]
    count = await world.store.pool.fetchval(
        "SELECT count(*) FROM events.events WHERE type = 'NotificationDelivered'"
    )
    assert count == len(before)


async def test_an_alert_is_pushed_to_the_administrators_webhook(world: World) -> None:
    import json

    from aiohttp import web

    got: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append(json.loads(await request.read()))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook/{token}", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        url = f"json://127.0.0.1:{port}/hook/t0ken"
        # apps by push only, backups by neither: only the app's alert reaches the hook
        await world.cmd("set_preferences", {"email": [], "push": ["apps"], "push_urls": [url]})
        run = str(uuid.uuid4())
        await world.store.append(
            f"backuprun-{run}", [backup_ev.BackupFailed(run_id=run, app_id=None, reason="x")]
        )
        app_id = str(uuid.uuid4())
        await _app(world.store, app_id, *_installed(app_id))
        await _app(world.store, app_id, apps_ev.AppOutOfMemory(app_id=app_id, memory_bytes=1))
        title = "org.example.static at blog.example.org ran out of memory"
        await wait_until(lambda: _pushed(got, title), 15, "the push of the app's alert")
        n = await world.wait_for(title, "opened")

        async def recorded() -> bool:
            item = next(i for i in await world.items() if i["id"] == n["id"])
            return bool(item["pushed"] == 1)

        await wait_until(recorded, 15, "the push to be recorded")
        backup = await world.wait_for("A backup failed", "opened")
        assert backup["pushed"] == 0
        assert [g["title"] for g in got] == [title]
        assert "Give it a higher memory limit" in got[0]["message"]
    finally:
        await runner.cleanup()


async def _pushed(got: list[dict[str, Any]], title: str) -> bool:
    return any(g.get("title") == title for g in got)


async def test_a_malformed_foreign_event_is_skipped_and_the_rest_applies(world: World) -> None:
    from libs.events.envelope import NewEvent

    app_id = str(uuid.uuid4())
    await _app(world.store, app_id, *_installed(app_id))
    # another service's event not shaped as it writes them (no app_id, a date that is not one)
    await world.store.append(f"app-{uuid.uuid4()}", [NewEvent("AppDied", {"exit_code": 1})])
    await world.store.append(
        "cert-bad.example.org",
        [NewEvent("CertificateIssued", {"primary": "bad.example.org", "not_after": "soon"})],
    )
    await _app(world.store, app_id, apps_ev.AppOutOfMemory(app_id=app_id, memory_bytes=1))
    await world.wait_for("org.example.static at blog.example.org ran out of memory", "opened")
    assert not await world.store.pool.fetchval(
        "SELECT count(*) FROM notify.certs WHERE primary_name = 'bad.example.org'"
    )
