"""The notify service's commands and queries (libs/contracts/notify.py).

Administrators read and mark their notification centre and set what reaches them by mail and
push; identity asks for the mails that carry a link (`email`). Each change is an event applied
to the read model in the same transaction, so the answer already holds it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import asyncpg

from libs.contracts.cursors import cursor_in, cursor_out
from libs.contracts.errors import Forbidden, Invalid, Unavailable
from libs.contracts.notify import CATEGORIES
from libs.events import context
from libs.events.bus import BusClient, BusError
from libs.events.handlers import command, query
from libs.events.sealing import Keyring
from libs.events.store import PostgresEventStore
from services.notify import events as ev
from services.notify.config import NotifyConfig
from services.notify.evaluate import utcnow
from services.notify.own import append_own, send_mail
from services.notify.templates import alert_mail, link_mail

__all__ = ["Commands", "DashboardOrigin", "Queries"]

log = logging.getLogger("services.notify")

_PATHS = {"invitation": "invite", "password_reset": "reset"}


class DashboardOrigin:
    """Where links in mail point: HP_NOTIFY_DASHBOARD_URL, else my.<first domain> as the dns
    service lists it (asked at most once a minute)."""

    def __init__(self, cfg: NotifyConfig, bus: BusClient | None) -> None:
        self.cfg = cfg
        self.bus = bus
        self._cached: tuple[float, str | None] | None = None

    async def __call__(self) -> str | None:
        if self.cfg.notify_dashboard_url:
            return self.cfg.notify_dashboard_url.rstrip("/")
        if self._cached is not None and time.monotonic() - self._cached[0] < 60:
            return self._cached[1]
        found = None
        if self.bus is not None:
            try:
                domains = await self.bus.query("dns", "domains", {})
                names = [str(d["domain"]) for d in domains.get("items", [])]
                if names:
                    port = self.cfg.notify_edge_https_port
                    found = f"https://my.{names[0]}" + ("" if port == 443 else f":{port}")
            except BusError as e:
                log.warning("the dashboard's address is not known: dns answered %s", e)
        self._cached = (time.monotonic(), found)
        return found


def _me() -> str:
    """The calling administrator's id (the notification centre is theirs)."""
    c = context.current()
    if not c.admin or c.actor in ("system", "anonymous"):
        raise Forbidden("only administrators have notifications")
    return c.actor


class Commands:
    def __init__(
        self,
        cfg: NotifyConfig,
        store: PostgresEventStore,
        bus: BusClient,
        keyring: Keyring | None,
        origin: Callable[[], Awaitable[str | None]],
        *,
        check_url: Callable[[str], str | None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.bus = bus
        self.keyring = keyring
        self.origin = origin
        self.check_url = check_url

    async def _append(self, stream: str, new: list[Any]) -> None:
        if not await append_own(self.store, stream, new):
            raise Unavailable("too many changes at once; try again")

    @command("email")
    async def email(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A mail with a link of identity's (invitation, password reset); the token is put in
        the link and forgotten."""
        if context.current().actor != "system":
            raise Forbidden("only the platform sends these mails")
        base = await self.origin()
        if not base:
            raise Unavailable(
                "the dashboard's address is not known yet: add a domain (or set"
                " HP_NOTIFY_DASHBOARD_URL) so that mails can link to it"
            )
        template = payload["template"]
        url = f"{base}/#/{_PATHS[template]}/{payload['token']}"
        expires = datetime.fromisoformat(payload["expires_at"].replace("Z", "+00:00"))
        mail = link_mail(self.cfg.notify_platform_name, template, url, expires, payload.get("name"))
        reply = await send_mail(self.bus, payload["to"], mail, self.cfg.notify_platform_name)
        log.info("%s mail sent (%s)", template, reply.get("via"))
        return {"sent": True, "via": reply.get("via")}

    @command("mark_read")
    async def mark_read(self, payload: dict[str, Any]) -> dict[str, Any]:
        me = _me()
        ids = [str(uuid.UUID(i)) for i in payload.get("ids", [])]
        up_to = None
        if payload.get("all"):
            up_to = await self.store.pool.fetchval(
                "SELECT coalesce(max(position), 0) FROM notify.notifications"
            )
        elif not ids:
            raise Invalid("name the notifications to mark (ids), or all=true", field="ids")
        await self._append(
            ev.user_stream(me), [ev.NotificationsRead(user_id=me, ids=ids, up_to=up_to)]
        )
        return {"unread": await unread(self.store.pool, me)}

    @command("set_preferences")
    async def set_preferences(self, payload: dict[str, Any]) -> dict[str, Any]:
        me = _me()
        email = sorted(set(payload["email"]))
        push = sorted(set(payload["push"]))
        urls = payload.get("push_urls")
        if urls is None:
            sealed = await self.store.pool.fetchval(
                "SELECT push_urls FROM notify.preferences WHERE user_id = $1", me
            )
            sealed = list(sealed or [])
        else:
            for i, url in enumerate(urls):
                why = self._check(url)
                if why is not None:
                    raise Invalid(why, field=f"push_urls.{i}")
            if len(set(urls)) != len(urls):
                raise Invalid("the same push URL is listed twice", field="push_urls")
            if self.keyring is None:
                raise Unavailable("push URLs cannot be kept: this service has no keyring")
            keys = self.keyring
            stream = ev.user_stream(me)
            sealed = [await asyncio.to_thread(keys.seal_for, stream, u) for u in urls]
        await self._append(
            ev.user_stream(me),
            [ev.NotifyPreferencesSet(user_id=me, email=email, push=push, push_urls=sealed)],
        )
        return await preferences(self.store.pool, me, self.keyring)

    def _check(self, url: str) -> str | None:
        if "\x00" in url:
            return "a push URL holds a NUL byte"
        if self.check_url is None:
            from services.notify.push import check_url

            self.check_url = check_url
        return self.check_url(url)

    @command("test")
    async def test(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A test notification to the caller alone: by mail and/or push."""
        me = _me()
        out: dict[str, Any] = {"mailed": False, "pushed": 0, "errors": []}
        title = f"Test notification from {self.cfg.notify_platform_name}"
        detail = "If you read this, notifications reach you."
        if payload.get("email", True):
            users = await self.bus.query("identity", "users", {})
            mine = next((u for u in users.get("items", []) if u.get("user_id") == me), None)
            if mine is None or not mine.get("email"):
                out["errors"].append("your account has no email address")
            else:
                mail = alert_mail(
                    self.cfg.notify_platform_name, "notice", title, detail, utcnow(), None
                )
                try:  # as the platform: the mail service sends for no one else
                    await send_mail(self.bus, mine["email"], mail, self.cfg.notify_platform_name)
                    out["mailed"] = True
                except BusError as e:
                    out["errors"].append(e.message)
        if payload.get("push", True):
            sealed = await self.store.pool.fetchval(
                "SELECT push_urls FROM notify.preferences WHERE user_id = $1", me
            )
            if sealed and self.keyring is not None:
                from services.notify.push import push

                keys = self.keyring
                urls = [keys.unseal_str(s) for s in sealed]
                results = await push(urls, title, detail)
                out["pushed"] = sum(1 for r in results if r.ok)
                out["errors"] += [r.error for r in results if not r.ok and r.error]
        return out


async def unread(pool: asyncpg.Pool, me: str) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM notify.notifications n"
            " LEFT JOIN notify.read_marks m ON m.user_id = $1"
            " WHERE (n.user_id IS NULL OR n.user_id = $1)"
            " AND n.position > coalesce(m.up_to, 0)"
            " AND NOT EXISTS (SELECT 1 FROM notify.reads r"
            "   WHERE r.user_id = $1 AND r.notification_id = n.id)",
            me,
        )
    )


async def preferences(pool: asyncpg.Pool, me: str, keyring: Keyring | None) -> dict[str, Any]:
    row = await pool.fetchrow("SELECT * FROM notify.preferences WHERE user_id = $1", me)
    if row is None:
        return {
            "email": list(CATEGORIES),
            "push": list(CATEGORIES),
            "push_urls": [],
            "categories": list(CATEGORIES),
        }
    shown: list[str] = []
    for sealed in row["push_urls"]:
        try:
            from services.notify.push import masked

            shown.append(masked(keyring.unseal_str(sealed)) if keyring else "[sealed]")
        except Exception:
            shown.append("[cannot be read]")
    return {
        "email": list(row["email"]),
        "push": list(row["push"]),
        "push_urls": shown,
        "categories": list(CATEGORIES),
    }


class Queries:
    def __init__(self, pool: asyncpg.Pool, keyring: Keyring | None) -> None:
        self.pool = pool
        self.keyring = keyring

    @query("notifications")
    async def notifications(self, payload: dict[str, Any]) -> dict[str, Any]:
        me = _me()
        limit = int(payload.get("limit", 50))
        before = cursor_in("n", payload["cursor"]) if payload.get("cursor") else None
        rows = await self.pool.fetch(
            "SELECT n.*, (n.position <= coalesce(m.up_to, 0) OR EXISTS (SELECT 1 FROM"
            "   notify.reads r WHERE r.user_id = $1 AND r.notification_id = n.id)) AS read"
            " FROM notify.notifications n LEFT JOIN notify.read_marks m ON m.user_id = $1"
            " WHERE (n.user_id IS NULL OR n.user_id = $1)"
            " AND ($2::bigint IS NULL OR n.position < $2)"
            " AND (NOT $3 OR NOT (n.position <= coalesce(m.up_to, 0) OR EXISTS (SELECT 1 FROM"
            "   notify.reads r WHERE r.user_id = $1 AND r.notification_id = n.id)))"
            " ORDER BY n.position DESC LIMIT $4",
            me,
            before,
            bool(payload.get("unread", False)),
            limit + 1,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        open_keys = {
            r["key"]
            for r in await self.pool.fetch(
                "SELECT key FROM notify.alerts WHERE open AND key = ANY($1::text[])",
                [r["key"] for r in rows],
            )
        }
        return {
            "items": [
                {
                    "id": str(r["id"]),
                    "kind": r["kind"],
                    "category": r["category"],
                    "severity": r["severity"],
                    # before delivery, a notice's address still sealed (events.ADDRESS)
                    "title": r["title"].replace(ev.ADDRESS, "an address"),
                    "detail": r["detail"].replace(ev.ADDRESS, "an address"),
                    "created_at": r["created_at"].isoformat(),
                    "read": r["read"],
                    "open": r["kind"] == "opened" and r["key"] in open_keys,
                    "mailed": r["mailed"],
                    "pushed": r["pushed"],
                    "note": r["note"],
                }
                for r in rows
            ],
            "unread": await unread(self.pool, me),
            "next_cursor": cursor_out("n", rows[-1]["position"]) if more and rows else None,
        }

    @query("unread_count")
    async def unread_count(self, payload: dict[str, Any]) -> dict[str, Any]:
        return {"unread": await unread(self.pool, _me())}

    @query("alerts")
    async def alerts(self, payload: dict[str, Any]) -> dict[str, Any]:
        _me()
        rows = await self.pool.fetch(
            "(SELECT * FROM notify.alerts WHERE open ORDER BY opened_at DESC)"
            " UNION ALL (SELECT * FROM notify.alerts WHERE NOT open"
            " ORDER BY resolved_at DESC LIMIT 20)"
        )
        return {
            "items": [
                {
                    "key": r["key"],
                    "open": r["open"],
                    "category": r["category"],
                    "severity": r["severity"],
                    "title": r["title"],
                    "detail": r["detail"],
                    "opened_at": r["opened_at"].isoformat(),
                    "resolved_at": r["resolved_at"].isoformat() if r["resolved_at"] else None,
                }
                for r in rows
            ]
        }

    @query("preferences")
    async def preferences(self, payload: dict[str, Any]) -> dict[str, Any]:
        return await preferences(self.pool, _me(), self.keyring)
