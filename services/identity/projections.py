"""The identity read model (schema `identity`), written inline with the events it reflects.

Identity answers "who is this session?" on every API request and must see its own writes at
once (a session is usable the moment login answers; a disabled user's sessions end at once).
So a command appends its events and applies them to the read model in one transaction
(`apply_inline`), rather than waiting for the read model to catch up through the relay.
Consequences, each relied on:
- The unique indexes of the read model (name, email) guard those invariants: a duplicate makes
  the whole transaction fail, the events included. The log therefore never holds two live
  accounts with one name.
- `homeport replay identity` rebuilds the read model from the log with the same `apply`, under
  the projection's advisory lock held exclusively; inline writers take it shared, so they wait
  for a rebuild and a rebuild waits for them.
- Each row keeps only sealed personal data (and keyed blind indexes for look-ups), so the read
  model needs no keyring to be rebuilt, and a deleted user's row goes with the user.
- `sessions.last_seen` (idle timeout) is operational state, touched by whoami and not an event:
  a rebuild sets it to the sign-in time, so a rebuild may end sessions idle since then early.
- Gateways cache whoami answers for up to a second: `apply_inline` notes the users whose answer
  an event changes (each event type declares its `Effect`), and `Accounts.write` announces
  them once the transaction commits (changes.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from importlib import import_module
from pathlib import Path
from typing import Any, ClassVar

import asyncpg

from libs.events.envelope import RecordedEvent
from libs.events.inline import append_inline, inline_lock_key
from libs.events.projection import Projection, register_projection
from libs.events.registry import REGISTRY
from libs.events.store import PostgresEventStore
from services.identity import changes
from services.identity import events as ev

__all__ = ["CATEGORIES", "Effect", "IdentityProjection", "apply_inline", "register_handler"]

# Stream categories identity writes; its read model applies exactly these (other areas of
# identity add theirs with register_handler).
CATEGORIES: set[str] = {"user", "identity", "signin"}
# Failures older than this no longer count for any limit; older ones are not kept.
FAILURE_MEMORY = timedelta(days=1)


@register_projection
class IdentityProjection(Projection):
    """Accounts, sessions and recent failed sign-ins."""

    name: ClassVar[str] = "identity"
    schema: ClassVar[str] = "identity"
    migrations: ClassVar[Path | None] = Path(__file__).parent / "migrations"

    def __init__(self) -> None:
        # The other areas of identity add their read-model steps when imported; a replay in a
        # process of its own (`homeport replay identity`) would otherwise skip their events.
        import_module("services.identity.groups")
        import_module("services.identity.ldap_apps")
        import_module("services.identity.mfa")

    def wants(self, event: RecordedEvent) -> bool:
        return event.category in CATEGORIES

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            "TRUNCATE identity.sessions, identity.login_failures, identity.known_addresses,"
            " identity.users, identity.platform"
        )

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        for event in events:
            if event.category not in CATEGORIES:
                continue
            handler = _HANDLERS.get(event.type)
            if handler is not None:
                await handler(conn, REGISTRY.decode(event), event)


LOCK_KEY = inline_lock_key(IdentityProjection)
_PROJECTION: list[IdentityProjection] = []  # made on first use: its __init__ imports areas


async def apply_inline(
    store: PostgresEventStore,
    conn: asyncpg.Connection,
    stream: str,
    new: Sequence[Any],
    expected_version: int | None,
) -> list[RecordedEvent]:
    """Append `new` to `stream` and apply it to the read model, in the caller's transaction."""
    if not _PROJECTION:
        _PROJECTION.append(IdentityProjection())
    recorded = await append_inline(store, conn, _PROJECTION[0], stream, new, expected_version)
    _note_changes(recorded)
    return recorded


class Effect(StrEnum):
    """What an event does to whoami's answers (who a credential is, with role and profile),
    which gateways cache for up to a second."""

    none = "none"  # nothing any cached answer holds (a new session or token, a failed sign-in)
    user = "user"  # the answers of `data["user_id"]` change or end
    all = "all"  # every answer may change (the admin TOTP policy)


def _note_changes(recorded: Sequence[RecordedEvent]) -> None:
    users: set[str] = set()
    everyone = False
    for r in recorded:
        effect = _EFFECTS.get(r.type, Effect.user)
        if r.type == "PasswordChanged" and r.data.get("rehash"):
            effect = Effect.none  # the same password hashed anew at sign-in: sessions stay
        user_id = r.data.get("user_id")
        if effect is Effect.all:
            everyone = True
        elif effect is Effect.user and isinstance(user_id, str):
            users.add(user_id)
    if users or everyone:
        changes.note(users, everyone=everyone)


# -- one function per event type --------------------------------------------------------------


async def _platform_set_up(conn: asyncpg.Connection, e: ev.PlatformSetUp, r: RecordedEvent) -> None:
    await conn.execute(
        "INSERT INTO identity.platform (key, value) VALUES ('setup', $1::jsonb) "
        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        json.dumps({"admin_id": e.admin_id, "at": r.recorded_at.isoformat()}),
    )


async def _user_created(conn: asyncpg.Connection, e: ev.UserCreated, r: RecordedEvent) -> None:
    await conn.execute(
        "INSERT INTO identity.users (user_id, username_index, email_index, username, email,"
        " display_name, password_hash, is_admin, disabled, created_at, version)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, false, $9, $10)",
        e.user_id,
        e.username_index,
        e.email_index,
        e.username,
        e.email,
        e.display_name,
        e.password_hash,
        e.is_admin,
        r.recorded_at,
        r.version,
    )


async def _bump(conn: asyncpg.Connection, user_id: str, r: RecordedEvent, sets: str = "") -> None:
    await conn.execute(
        f"UPDATE identity.users SET version = $2{sets} WHERE user_id = $1",  # noqa: S608 - code
        user_id,
        r.version,
    )


async def _user_updated(conn: asyncpg.Connection, e: ev.UserUpdated, r: RecordedEvent) -> None:
    if e.email is not None:
        await conn.execute(
            "UPDATE identity.users SET email = $2, email_index = $3 WHERE user_id = $1",
            e.user_id,
            e.email,
            e.email_index,
        )
    if e.display_name is not None or e.clear_display_name:
        await conn.execute(
            "UPDATE identity.users SET display_name = $2 WHERE user_id = $1",
            e.user_id,
            None if e.clear_display_name else e.display_name,
        )
    await _bump(conn, e.user_id, r)


async def _password_changed(
    conn: asyncpg.Connection, e: ev.PasswordChanged, r: RecordedEvent
) -> None:
    await conn.execute(
        "UPDATE identity.users SET password_hash = $2, version = $3 WHERE user_id = $1",
        e.user_id,
        e.password_hash,
        r.version,
    )
    if not e.rehash:
        await conn.execute(
            "DELETE FROM identity.sessions WHERE user_id = $1"
            " AND session_id IS DISTINCT FROM $2::uuid",
            e.user_id,
            e.kept_session_id,
        )


async def _admin_changed(conn: asyncpg.Connection, e: ev.AdminChanged, r: RecordedEvent) -> None:
    await conn.execute(
        "UPDATE identity.users SET is_admin = $2, version = $3 WHERE user_id = $1",
        e.user_id,
        e.is_admin,
        r.version,
    )


async def _user_disabled(conn: asyncpg.Connection, e: ev.UserDisabled, r: RecordedEvent) -> None:
    await _bump(conn, e.user_id, r, ", disabled = true")
    await conn.execute("DELETE FROM identity.sessions WHERE user_id = $1", e.user_id)


async def _user_enabled(conn: asyncpg.Connection, e: ev.UserEnabled, r: RecordedEvent) -> None:
    await _bump(conn, e.user_id, r, ", disabled = false")


async def _user_deleted(conn: asyncpg.Connection, e: ev.UserDeleted, r: RecordedEvent) -> None:
    # sessions and known addresses go with the row (ON DELETE CASCADE)
    await conn.execute("DELETE FROM identity.users WHERE user_id = $1", e.user_id)
    await conn.execute("DELETE FROM identity.login_failures WHERE user_id = $1", e.user_id)


async def _session_started(
    conn: asyncpg.Connection, e: ev.SessionStarted, r: RecordedEvent
) -> None:
    await conn.execute(
        "INSERT INTO identity.sessions (session_hash, session_id, user_id, ip, user_agent,"
        " started_at, expires_at, idle_seconds, last_seen)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $6) ON CONFLICT DO NOTHING",
        e.session_hash,
        e.session_id,
        e.user_id,
        e.ip,
        e.user_agent,
        r.recorded_at,
        datetime.fromisoformat(e.expires_at),
        e.idle_seconds,
    )
    if e.ip:
        await conn.execute(
            "INSERT INTO identity.known_addresses (user_id, ip, last_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (user_id, ip) DO UPDATE SET last_at = EXCLUDED.last_at",
            e.user_id,
            e.ip,
            r.recorded_at,
        )
    await _bump(conn, e.user_id, r)


async def _session_ended(conn: asyncpg.Connection, e: ev.SessionEnded, r: RecordedEvent) -> None:
    await conn.execute("DELETE FROM identity.sessions WHERE session_id = $1", e.session_id)
    await _bump(conn, e.user_id, r)


async def _login_failed(conn: asyncpg.Connection, e: ev.LoginFailed, r: RecordedEvent) -> None:
    if r.recorded_at < datetime.now(UTC) - FAILURE_MEMORY:
        return  # a rebuild need not keep what no limit looks at any more
    await conn.execute(
        "INSERT INTO identity.login_failures (event_id, user_id, ip, at) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT DO NOTHING",
        r.id,
        e.user_id,
        e.ip,
        r.recorded_at,
    )


_HANDLERS: dict[str, Any] = {
    "PlatformSetUp": _platform_set_up,
    "UserCreated": _user_created,
    "UserUpdated": _user_updated,
    "PasswordChanged": _password_changed,
    "AdminChanged": _admin_changed,
    "UserDisabled": _user_disabled,
    "UserEnabled": _user_enabled,
    "UserDeleted": _user_deleted,
    "SessionStarted": _session_started,
    "SessionEnded": _session_ended,
    "LoginFailed": _login_failed,
}
# Types left out change the whoami answers of their user.
_EFFECTS: dict[str, Effect] = {
    "PlatformSetUp": Effect.none,
    "UserCreated": Effect.none,
    "SessionStarted": Effect.none,
    "LoginFailed": Effect.none,
}


def register_handler(
    event_type: str, handler: Any, category: str | None = None, *, effect: Effect = Effect.user
) -> None:
    """Add the read-model step of another identity event type (groups, tokens, ...), the
    stream category it is written to, and what it does to whoami's answers."""
    if category is not None:
        CATEGORIES.add(category)
    if event_type in _HANDLERS:
        raise ValueError(f"{event_type} already has a read-model handler")
    _HANDLERS[event_type] = handler
    _EFFECTS[event_type] = effect
