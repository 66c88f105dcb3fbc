"""End to end: an app's container stopped from outside and kept down → the apps service records
its death → notify opens the alert after the down period → the alert mail leaves through the
mail service's relay (a real SMTP smart host here) to the administrator, and the bell counts it;
the app comes back → one resolved notice; down again within the hour → the bell shows it, no
third mail."""

from __future__ import annotations

import asyncio
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import pytest

from libs.events.context import Context
from tests.apps.appskit import STATIC, apps_env, running_apps, static_catalog
from tests.identity.kit import ADMIN, running_identity
from tests.support.bus import relaying
from tests.support.notify import notify_env, running_notify
from tests.support.smart_host import SmartHost, smart_host
from tests.support.waits import wait_until

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

RELAY_LOGIN = ("homeport@relay.test", "the relay's password 1")


def _messages(relay: SmartHost) -> list[EmailMessage]:
    out = []
    for r in relay.got:
        msg = message_from_bytes(r.data.replace(b"\r\n", b"\n"), policy=default)
        assert isinstance(msg, EmailMessage)
        out.append(msg)
    return out


async def test_an_app_kept_down_is_mailed_once_and_its_return_once(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    docker_host: str,
) -> None:
    (tmp_path / "notify").mkdir()
    (tmp_path / "relay").mkdir()
    apps_settings = apps_env(
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path / "apps",
        docker_host=docker_host,
        prefix=f"n{uniq[:8]}",
        catalog=static_catalog(tmp_path / "catalog"),
    )
    notes = notify_env(
        dsn=dsn,
        nats_url=nats_url,
        uniq=uniq,
        tmp_path=tmp_path / "notify",
        extra={"HP_NOTIFY_APP_DOWN_SECONDS": "2", "HP_NOTIFY_MEMORY_AVAILABLE": "0.001"},
    )
    async with (
        running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as ident,
        relaying(dsn, nats_url, uniq),
        running_apps(monkeypatch, apps_settings) as apps,  # with the mail service beside it
        running_notify(monkeypatch, notes),
        smart_host(tmp_path / "relay", login=RELAY_LOGIN) as relay,
    ):
        admin_id = await ident.set_up()
        admin = Context(actor=admin_id, admin=True)
        relay_body = {
            "host": "127.0.0.1",
            "port": relay.port,
            "tls": "tls",
            "username": RELAY_LOGIN[0],
            "password": RELAY_LOGIN[1],
        }
        await ident.bus.command("mail", "set_relay", relay_body, ctx=admin, timeout=30)

        reply = await apps.cmd(
            "install",
            {
                "manifest_id": STATIC,
                "version": "1.0.0",
                "location": "watch",
                "access": {"all_users": True},
            },
        )
        assert (await apps.wait_task(reply["task_id"]))["type"] == "TaskSucceeded"
        app_id = str(reply["app_id"])
        c = apps.container(app_id)

        async def notifications() -> list[dict[str, Any]]:
            got = await ident.bus.query("notify", "notifications", {}, ctx=admin)
            return [n for n in got["items"] if "is down" in n["title"]]

        async def mails(n: int) -> bool:
            return len(relay.got) >= n

        # stopped from outside, and kept down: Docker's restart policy leaves it stopped
        await asyncio.to_thread(c.stop, timeout=2)
        await wait_until(lambda: mails(1), 60, "the alert mail")
        [alert] = _messages(relay)
        assert alert["To"] == ADMIN["email"]
        assert alert["Subject"].startswith("[Homeport] ") and alert["Subject"].endswith("is down")
        assert "has not come back" in alert.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        assert alert.get_body(("html",)) is not None
        assert relay.got[0].recipients == [ADMIN["email"]]
        unread = await ident.bus.query("notify", "unread_count", {}, ctx=admin)
        assert unread["unread"] >= 1  # the bell

        async def recorded_as_mailed() -> bool:  # after the relay took it, as the send returns
            found = await notifications()
            return len(found) == 1 and found[0]["mailed"] == 1

        await wait_until(recorded_as_mailed, 30, "the alert recorded as mailed")
        [opened] = await notifications()
        assert opened["open"] is True and opened["mailed"] == 1

        # back: one resolved notice
        await asyncio.to_thread(c.start)
        await wait_until(lambda: mails(2), 60, "the resolved notice")
        resolved = _messages(relay)[1]
        title = alert["Subject"].removeprefix("[Homeport] ")
        assert resolved["Subject"] == f"[Homeport] Resolved: {title}"

        # down again within the hour: the bell shows it, no third mail
        await asyncio.to_thread(c.stop, timeout=2)

        async def reopened() -> bool:
            found = [n for n in await notifications() if n["kind"] == "opened"]
            return len(found) == 2 and bool(found[0]["note"])

        await wait_until(reopened, 60, "the second opening, delivered")
        again = next(n for n in await notifications() if n["kind"] == "opened")
        assert again["mailed"] == 0 and "within the hour" in again["note"]
        assert again["open"] is True and again["read"] is False
        assert len(relay.got) == 2

        # an administrator's test notification by mail goes out through the same way
        got = await ident.bus.command(
            "notify", "test", {"email": True, "push": False}, ctx=admin, timeout=60
        )
        assert got["mailed"] is True and got["errors"] == [], got
        assert _messages(relay)[2]["Subject"] == "[Homeport] Test notification from Homeport"
