"""The dispatcher: each new notification, by mail and push, to the administrators who want it.

Rules (the issue's): at most one mail per condition per `notify_mail_interval_seconds` — an
alert that opens again within the hour shows in the bell but sends no second mail; a resolved
notice is mailed once, and only when its opening was. What was done is recorded
(`NotificationDelivered`), so a restart or a rebuild never mails twice; a notification found
undelivered after `notify_stale_seconds` (a long outage) is recorded without mailing.

Mail leaves through the mail service (`send`: its own Postfix when mail is on, else the relay);
push through apprise (push.py) to each administrator's URLs, unsealed only to send.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import asyncpg

from libs.browsers import browser_family
from libs.contracts.notify import CATEGORIES
from libs.events.bus import BusClient, BusError, Unavailable
from libs.events.sealing import Keyring, SealingError
from libs.events.store import PostgresEventStore
from services.notify import events as ev
from services.notify.config import NotifyConfig
from services.notify.evaluate import Clock, utcnow
from services.notify.own import append_own, send_mail
from services.notify.rounds import Rounds
from services.notify.templates import alert_mail

__all__ = ["Dispatcher", "Recipient"]

log = logging.getLogger("services.notify")

UNSHOWN = "an address we cannot show"  # its week's key is gone, or identity did not answer

Pusher = Callable[[Sequence[str], str, str], Awaitable[list[Any]]]


class Recipient:
    __slots__ = ("email", "email_categories", "push_categories", "push_urls", "user_id")

    def __init__(self, user_id: str, email: str | None) -> None:
        self.user_id = user_id
        self.email = email
        self.email_categories: frozenset[str] = frozenset(CATEGORIES)
        self.push_categories: frozenset[str] = frozenset(CATEGORIES)
        self.push_urls: list[str] = []  # sealed


async def _default_push(urls: Sequence[str], title: str, body: str) -> list[Any]:
    from services.notify.push import push  # apprise is loaded only when someone pushes

    return await push(urls, title, body)


class Dispatcher(Rounds):
    what = "notification round"
    again = True

    def __init__(
        self,
        cfg: NotifyConfig,
        store: PostgresEventStore,
        bus: BusClient,
        keyring: Keyring | None,
        *,
        clock: Clock = utcnow,
        pusher: Pusher = _default_push,
        origin: Callable[[], Awaitable[str | None]] | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.every = cfg.notify_round_seconds
        self.store = store
        self.pool = store.pool
        self.bus = bus
        self.keyring = keyring
        self.clock = clock
        self.pusher = pusher
        self.origin = origin

    async def round(self) -> int:
        """Deliver what is pending (a page at a time); the number delivered."""
        rows = await self.pool.fetch(
            "SELECT * FROM notify.notifications WHERE NOT delivered ORDER BY position LIMIT 20"
        )
        if not rows:
            return 0
        try:
            recipients = await self.recipients()
        except BusError as e:
            log.warning("notifications wait: identity did not list the administrators (%s)", e)
            return 0
        centre = await self._centre()
        for row in rows:
            await self._deliver(row, recipients, centre)
        return len(rows)

    async def recipients(self) -> dict[str, Recipient]:
        """Enabled administrators, with their preferences."""
        users = await self.bus.query("identity", "users", {})
        out = {
            str(u["user_id"]): Recipient(str(u["user_id"]), u.get("email"))
            for u in users.get("items", [])
            if u.get("is_admin") and not u.get("disabled")
        }
        for p in await self.pool.fetch("SELECT * FROM notify.preferences"):
            r = out.get(str(p["user_id"]))
            if r is not None:
                r.email_categories = frozenset(p["email"])
                r.push_categories = frozenset(p["push"])
                r.push_urls = list(p["push_urls"])
        return out

    async def _centre(self) -> str | None:
        base = await self.origin() if self.origin is not None else None
        return f"{base.rstrip('/')}/#/notifications" if base else None

    async def _deliver(
        self, row: asyncpg.Record, recipients: dict[str, Recipient], centre: str | None
    ) -> None:
        now = self.clock()
        title, detail = await self._words(row)
        who = list(recipients.values())
        if row["user_id"] is not None:
            who = [r for r in who if r.user_id == str(row["user_id"])]
        mailed = pushed = 0
        notes: list[str] = []
        if now - row["created_at"] > timedelta(seconds=self.cfg.notify_stale_seconds):
            notes.append("too old to send when it was first seen")
        else:
            may_tell, why = await self._may_tell(row)
            if not may_tell:
                notes.append(why)
            else:
                mail = alert_mail(
                    self.cfg.notify_platform_name,
                    row["kind"],
                    title,
                    detail,
                    row["created_at"],
                    centre,
                )
                for r in who:
                    if row["category"] not in r.email_categories or not r.email:
                        continue
                    try:
                        await send_mail(self.bus, r.email, mail, self.cfg.notify_platform_name)
                        mailed += 1
                    except Unavailable as e:
                        notes.append(e.message)
                        break
                    except BusError as e:
                        notes.append(f"mail to an administrator failed: {e.message}")
                pushed = await self._push(row, who, title, detail)
        await self._record(row, mailed, pushed, "; ".join(dict.fromkeys(notes)), (title, detail))

    async def _may_tell(self, row: asyncpg.Record) -> tuple[bool, str]:
        """Whether this notification may go out by mail and push (the once-an-hour rule, for
        every channel alike), and why not."""
        interval = timedelta(seconds=self.cfg.notify_mail_interval_seconds)
        if row["kind"] == "resolved":
            opened = await self.pool.fetchrow(
                "SELECT mailed + pushed AS told FROM notify.notifications WHERE key = $1"
                " AND kind = 'opened' AND position < $2 ORDER BY position DESC LIMIT 1",
                row["key"],
                row["position"],
            )
            if opened is None or not opened["told"]:
                return False, "its alert was not sent"
        recent = await self.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM notify.notifications WHERE key = $1 AND kind = $2"
            " AND mailed + pushed > 0 AND position < $3 AND created_at > $4)",
            row["key"],
            row["kind"],
            row["position"],
            row["created_at"] - interval,
        )
        if recent:
            return False, "a notice about this went out within the hour"
        return True, ""

    async def _push(
        self, row: asyncpg.Record, who: list[Recipient], title: str, detail: str
    ) -> int:
        urls: list[str] = []
        for r in who:
            if row["category"] not in r.push_categories:
                continue
            for sealed in r.push_urls:
                try:
                    urls.append(self._unseal(sealed))
                except SealingError:
                    log.warning("a push URL of an administrator cannot be read; skipped")
        if not urls:
            return 0
        prefix = (
            "Resolved: " if row["kind"] == "resolved" and not title.startswith("Resolved") else ""
        )
        results = await self.pusher(urls, f"{prefix}{title}", detail or title)
        return sum(1 for r in results if getattr(r, "ok", False))

    def _unseal(self, sealed: str) -> str:
        if self.keyring is None:
            raise SealingError("no keyring")
        return self.keyring.unseal_str(sealed)

    async def _read_back(self, values: list[str]) -> dict[str, str | None]:
        """Sealed client addresses and browser strings as identity reads them back (the week's
        key); none while identity does not answer."""
        values = [v for v in values if v]
        if not values:
            return {}
        try:
            got = await self.bus.query("identity", "addresses", {"values": values})
        except BusError as e:
            log.warning("a notice's address could not be read back (%s)", e)
            return {}
        return dict(zip(values, got["values"], strict=True))

    async def _words(self, row: asyncpg.Record) -> tuple[str, str]:
        """The title and detail as delivered: a sign-in's place, a notice's {address}."""
        title, detail = row["title"], row["detail"]
        sealed = [*row["sealed"], "", ""]
        if row["key"].startswith("signin:"):
            plain = await self._read_back(sealed[:2])
            ip, agent = plain.get(sealed[0]), plain.get(sealed[1])
            when = f"{row['created_at']:%Y-%m-%d %H:%M} UTC"
            detail = (
                f"Your account signed in at {when} from {ip or UNSHOWN}"
                f" with {browser_family(agent) or 'no browser named'}, a place not seen before."
                " If this was not you, change your password on your profile page: every"
                " session ends."
            )
        elif ev.ADDRESS in title or ev.ADDRESS in detail:
            address = (await self._read_back(sealed[:1])).get(sealed[0]) or UNSHOWN
            title, detail = title.replace(ev.ADDRESS, address), detail.replace(ev.ADDRESS, address)
        return title, detail

    async def _record(
        self, row: asyncpg.Record, mailed: int, pushed: int, note: str, words: tuple[str, str]
    ) -> None:
        delivered = ev.NotificationDelivered(
            notification_id=str(row["id"]), mailed=mailed, pushed=pushed, note=note[:500]
        )

        async def words_too(conn: asyncpg.Connection) -> None:
            # a sign-in's place, a notice's address: in the read model only, never an event
            if words != (row["title"], row["detail"]):
                await conn.execute(
                    "UPDATE notify.notifications SET title = $2, detail = $3 WHERE id = $1",
                    row["id"],
                    *words,
                )

        if not await append_own(self.store, row["stream"], [delivered], also=words_too):
            log.warning("notification %s: its delivery could not be recorded", row["id"])
