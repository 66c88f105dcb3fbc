"""What notify writes and sends itself: its events, appended and applied to its read model in
one transaction, and mails through the mail service."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from libs.events import context
from libs.events.bus import BusClient
from libs.events.context import Context
from libs.events.errors import ConcurrencyError
from libs.events.inline import append_inline
from libs.events.store import PostgresEventStore
from services.notify.projections import NotifyProjection
from services.notify.templates import Mail

__all__ = ["append_own", "send_mail"]

_PROJECTION = NotifyProjection()
# More in the same transaction as the append (a read-model change that is not an event).
Also = Callable[[asyncpg.Connection], Awaitable[None]]


async def append_own(
    store: PostgresEventStore,
    stream: str,
    new: Sequence[Any],
    *,
    tries: int = 5,
    ip: str | None = None,
    also: Also | None = None,
) -> bool:
    """Append `new` to `stream` at its current version and apply it (`also` too); again on a
    concurrent append, `tries` times in all. False when every try lost the race. As the
    platform itself; `ip` (a client address the events are about) goes to meta.ip, which the
    store seals to its week's key, never into the data."""
    ctx = Context(actor="system", correlation_id=f"notify-{uuid.uuid4()}", ip=ip)
    with context.use(ctx):
        for _ in range(tries):
            version = await store.stream_version(stream)
            try:
                async with store.pool.acquire() as conn, conn.transaction():
                    await append_inline(store, conn, _PROJECTION, stream, new, version)
                    if also is not None:
                        await also(conn)
                return True
            except ConcurrencyError:
                continue
    return False


async def send_mail(bus: BusClient, to: str, mail: Mail, platform: str) -> dict[str, Any]:
    """One mail to one address through the mail service (its `send`: the local Postfix, else
    the relay); the mail service's errors as they are (Unavailable when it has no way)."""
    payload = {
        "to": [to],
        "subject": mail.subject,
        "text": mail.text,
        "html": mail.html,
        "from_name": platform,
    }
    with context.use(Context(actor="system", correlation_id=f"notify-{uuid.uuid4()}")):
        reply: dict[str, Any] = await bus.command("mail", "send", payload, timeout=60)
    return reply
