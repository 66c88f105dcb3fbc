"""Users: the first setup, accounts an administrator manages, profiles and passwords.

A user's stream (`user-<uuid>`) is read back through its read-model row: a command reads the
row, decides, and appends at the row's version; a concurrent change makes it decide again.
Personal data is sealed with the user's own key; deleting the user destroys the key.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

from libs.events import context
from libs.events.envelope import RecordedEvent
from libs.events.handlers import command, query
from libs.events.statements import Statement
from services.identity import events as ev
from services.identity import validators as check
from services.identity.errors import (
    Changed,
    IdentityConflict,
    NoSuchUser,
    SetupDone,
)
from services.identity.passwords import check_password
from services.identity.readmodel import Effect, Step, Table
from services.identity.setup_token import check_setup_token, forget_setup_token
from services.identity.store import IdentityStore, acting_as
from services.identity.tokens import token_hash

if TYPE_CHECKING:  # signin.py imports this module (through sessions.py)
    from services.identity.signin import Limits

__all__ = ["TABLE", "Users"]

log = logging.getLogger(__name__)

# Held while a transaction decides whether it removes the last enabled administrator: two
# admins demoting (or disabling, deleting) each other at once each see the other still there
# unless the second decides after the first commits.
_ADMINS_LOCK = 0x4850_41444D  # "HPADM"
# The users read model with what an admin's list shows beside it: TOTP and groups.
_USER_ITEMS = """
SELECT u.*, coalesce(t.enabled, false) AS totp_enabled,
       coalesce((SELECT json_agg(json_build_object('group_id', g.group_id::text, 'name', g.name)
                                 ORDER BY g.name, g.group_id)::text
                 FROM identity.group_members m JOIN identity.groups g USING (group_id)
                 WHERE m.user_id = u.user_id), '[]') AS group_list
FROM identity.users u LEFT JOIN identity.totp t USING (user_id)
"""


class Users:
    """Setup, the accounts an administrator manages, profiles and passwords."""

    def __init__(
        self, store: IdentityStore, limits: Limits, *, data_dir: Path | None = None
    ) -> None:
        self.store = store
        self.limits = limits  # a check of the current password counts as a sign-in attempt
        self.data_dir = data_dir  # where the setup token's file is (setup_token.py)

    @property
    def pool(self) -> asyncpg.Pool:
        return self.store.pool

    # -- setup -----------------------------------------------------------------------------

    async def setup_done(self) -> bool:
        return bool(
            await self.pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM identity.platform WHERE key = 'setup')"
            )
        )

    @query("setup_state")
    async def setup_state(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return {"setup_done": await self.setup_done()}

    @query("check_setup_token")
    async def setup_token_ok(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Refuse unless setup is not done and the setup token is right (nothing changes)."""
        if await self.setup_done():
            raise SetupDone()
        await check_setup_token(self.pool, str(payload["setup_token"]))
        return {"setup_done": False}

    @command("setup")
    async def setup(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The first administrator, with the one-time setup token (setup_token.py)."""
        if await self.setup_done():
            raise SetupDone()
        given: str = payload["setup_token"]
        await check_setup_token(self.pool, given)  # a wrong token costs no password hash
        user_id = str(uuid.uuid4())
        created = await self.new_user(payload, user_id, is_admin=True, via="setup")

        async def both(conn: asyncpg.Connection) -> None:
            set_up = ev.PlatformSetUp(admin_id=user_id)
            await self.store.append_on(conn, ev.SETUP_STREAM, [set_up], 0)
            await self.store.append_on(conn, ev.user_stream(user_id), [created], 0)
            # after the appends: of two setups at once, the second is told setup is done
            await check_setup_token(conn, given, use=True)

        try:
            with acting_as(user_id):
                await self.store.write(both)
        except Changed:
            raise SetupDone() from None
        if self.data_dir is not None:
            forget_setup_token(self.data_dir)
        log.info("platform set up; first administrator %s", user_id)
        return {"user_id": user_id}

    async def new_user(
        self, payload: Mapping[str, Any], user_id: str, *, is_admin: bool, via: str
    ) -> ev.UserCreated:
        """The event that creates the account `payload` describes (password policy checked)."""
        username: str = payload["username"]
        email = check.email(payload["email"])
        display_name = check.display_name(payload)
        password: str = payload["password"]
        check_password(password, username=username, email=email)
        hashed = await asyncio.to_thread(self.store.hasher.hash, password)
        seal = self.store.seal
        return ev.UserCreated(
            user_id=user_id,
            username=await seal(user_id, username),
            username_index=self.store.name_index(username),
            email=await seal(user_id, email),
            email_index=self.store.email_index(email),
            display_name=await seal(user_id, display_name) if display_name else None,
            password_hash=await seal(user_id, hashed),
            is_admin=is_admin,
            via=via,
        )

    # -- reading ---------------------------------------------------------------------------

    @query("profile")
    async def profile(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        user_id = check.canonical_id(payload["user_id"])
        await self.store.require_self_or_admin(user_id)
        return self.store.profile_of(await self.store.require_user(user_id))

    def user_item(self, row: asyncpg.Record) -> dict[str, Any]:
        """A user as an admin's list shows them: the profile, TOTP and groups (_USER_ITEMS)."""
        return {
            **self.store.profile_of(row),
            "totp_enabled": row["totp_enabled"],
            "groups": json.loads(row["group_list"]),
        }

    @query("users")
    async def users(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        rows = await self.pool.fetch(_USER_ITEMS + " ORDER BY u.created_at, u.user_id")
        return {"items": [self.user_item(r) for r in rows]}

    # -- changing --------------------------------------------------------------------------

    @command("create_user")
    async def create_user(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        await self.store.require_admin()
        user_id = str(uuid.uuid4())
        is_admin = bool(payload.get("is_admin", False))
        created = await self.new_user(payload, user_id, is_admin=is_admin, via="admin")
        await self.store.append(ev.user_stream(user_id), [created], 0)
        return {"user_id": user_id}

    async def _last_admin(self, conn: asyncpg.Connection, user_id: str) -> bool:
        """Whether no enabled administrator but `user_id` remains; call it in the transaction
        that would remove them, which it serialises with any other such (_ADMINS_LOCK)."""
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _ADMINS_LOCK)
        others = await conn.fetchval(
            "SELECT count(*) FROM identity.users WHERE is_admin AND NOT disabled AND user_id <> $1",
            user_id,
        )
        return int(others) == 0

    def _not_self(self, row: asyncpg.Record, what: str, field: str = "user_id") -> None:
        if str(row["user_id"]) == context.current().actor:
            raise IdentityConflict(f"you cannot {what} your own account", field=field)

    async def _admin_change(
        self, conn: asyncpg.Connection, row: asyncpg.Record, want: bool
    ) -> list[Any]:
        """The events that make the user an administrator or not; never the last enabled one
        dropped, never by themselves (a 409 naming is_admin)."""
        if row["is_admin"] == want:
            return []
        uid = str(row["user_id"])
        if not want:
            if not row["disabled"] and await self._last_admin(conn, uid):
                raise IdentityConflict(
                    "the last enabled administrator cannot lose the role: make another user "
                    "an administrator first",
                    field="is_admin",
                )
            self._not_self(row, "remove the administrator role of", "is_admin")
        return [ev.AdminChanged(user_id=uid, is_admin=want)]

    @command("disable_user")
    async def disable_user(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            self._not_self(row, "disable")
            if row["disabled"]:
                return []
            if row["is_admin"] and await self._last_admin(conn, str(row["user_id"])):
                raise IdentityConflict(
                    "the last enabled administrator cannot be disabled", field="user_id"
                )
            return [ev.UserDisabled(user_id=str(row["user_id"]))]

        await self.store.change_user(check.canonical_id(payload["user_id"]), decide, admin=True)
        return {}

    @command("enable_user")
    async def enable_user(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            return [ev.UserEnabled(user_id=str(row["user_id"]))] if row["disabled"] else []

        await self.store.change_user(check.canonical_id(payload["user_id"]), decide, admin=True)
        return {}

    @command("set_admin")
    async def set_admin(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        want = bool(payload.get("is_admin", False))

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            return await self._admin_change(conn, row, want)

        await self.store.change_user(check.canonical_id(payload["user_id"]), decide, admin=True)
        return {}

    async def _updated(
        self, row: asyncpg.Record, email: str | None, name: str | None, clear: bool
    ) -> list[Any]:
        if email is None and name is None and not clear:
            return []
        uid = str(row["user_id"])
        seal = self.store.seal
        return [
            ev.UserUpdated(
                user_id=uid,
                email=await seal(uid, email) if email else None,
                email_index=self.store.email_index(email) if email else None,
                display_name=await seal(uid, name) if name else None,
                clear_display_name=clear,
            )
        ]

    @command("update_user")
    async def update_user(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """An administrator edits a user: any of is_admin, email and display_name, all in one
        transaction (a taken email changes nothing); answers the user as `users` lists them."""
        want: bool | None = payload.get("is_admin")
        email = check.email(payload["email"]) if payload.get("email") is not None else None
        display_name = check.display_name(payload)
        clear = "display_name" in payload and not display_name
        plain = self.store.plain

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            new_email = email if email is not None and email != plain(row["email"]) else None
            new_name = (
                display_name
                if display_name is not None and display_name != plain(row["display_name"])
                else None
            )
            drop_name = clear and row["display_name"] is not None
            new = await self._updated(row, new_email, new_name, drop_name)
            if want is not None:
                new += await self._admin_change(conn, row, want)
            return new

        row = await self.store.change_user(
            check.canonical_id(payload["user_id"]), decide, admin=True
        )
        found = await self.pool.fetchrow(_USER_ITEMS + " WHERE u.user_id = $1", row["user_id"])
        if found is None:  # deleted right after this change committed
            raise NoSuchUser()
        return self.user_item(found)

    @command("update_profile")
    async def update_profile(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        user_id = check.canonical_id(payload["user_id"])
        await self.store.require_self_or_admin(user_id)
        email = check.email(payload["email"]) if payload.get("email") is not None else None
        display_name = check.display_name(payload)
        clear = "display_name" in payload and not display_name

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            return await self._updated(row, email, display_name, clear)

        row = await self.store.change_user(user_id, decide)
        return self.store.profile_of(await self.store.require_user(str(row["user_id"])))

    @command("delete_user")
    async def delete_user(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            self._not_self(row, "delete")
            if row["is_admin"] and await self._last_admin(conn, str(row["user_id"])):
                raise IdentityConflict(
                    "the last enabled administrator cannot be deleted", field="user_id"
                )
            return [ev.UserDeleted(user_id=str(row["user_id"]))]

        row = await self.store.change_user(
            check.canonical_id(payload["user_id"]), decide, admin=True
        )
        await self.store.shred(ev.subject_of(str(row["user_id"])))
        return {}

    async def shred_deleted(self) -> int:
        """At start: finish shredding users whose deletion committed before a crash."""
        ids = await self.pool.fetch(
            "SELECT DISTINCT data ->> 'user_id' AS user_id FROM events.events"
            " WHERE type = 'UserDeleted'"
        )
        for r in ids:
            await self.store.shred(ev.subject_of(r["user_id"]))
        return len(ids)

    @command("change_password")
    async def change_password(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        user_id = check.canonical_id(payload["user_id"])
        self.store.require_self(user_id)
        current: str = payload["current_password"]
        new: str = payload["new_password"]
        session: str | None = payload.get("session")
        row = await self.store.require_user(user_id)
        plain = self.store.plain
        await self.limits.current_password(row, current)
        check.new_password(new, username=plain(row["username"]), email=plain(row["email"]))
        hashed = await asyncio.to_thread(self.store.hasher.hash, new)
        kept = None
        if session:
            kept = await self.pool.fetchval(
                "SELECT session_id::text FROM identity.sessions WHERE session_hash = $1"
                " AND user_id = $2",
                token_hash(session),
                row["user_id"],
            )
        sealed = await self.store.seal(user_id, hashed)

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            return [ev.PasswordChanged(user_id=user_id, password_hash=sealed, kept_session_id=kept)]

        await self.store.change_user(user_id, decide)
        return {}


# -- read model ---------------------------------------------------------------------------------


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


async def bump(conn: asyncpg.Connection, user_id: str, r: RecordedEvent, sets: str = "") -> None:
    """Record that the user's stream is at `r`'s version (and set `sets` with it)."""
    await conn.execute(
        f"UPDATE identity.users SET version = $2{sets} WHERE user_id = $1",  # noqa: S608 - code
        user_id,
        r.version,
    )


# The steps of a user's own stream are statements (libs/events/statements.py): a command that
# decided on the user's row alone appends and applies them in one statement, no transaction.
_AT_VERSION = "UPDATE identity.users u SET version = a.out_version{sets} FROM appended a"
_OF_USER = " WHERE u.user_id = $1"


def _at_version(user_id: str, sets: str = "", *args: Any) -> Statement:
    """The user's row at the appended event's version, with `sets` ($2 on) set too."""
    return Statement(_AT_VERSION.format(sets=sets) + _OF_USER, (user_id, *args))


def _user_updated(e: ev.UserUpdated) -> list[Statement]:
    sets: list[str] = []
    args: list[Any] = []
    if e.email is not None:
        sets += [f"email = ${len(args) + 2}", f"email_index = ${len(args) + 3}"]
        args += [e.email, e.email_index]
    if e.display_name is not None or e.clear_display_name:
        sets.append(f"display_name = ${len(args) + 2}")
        args.append(None if e.clear_display_name else e.display_name)
    return [_at_version(e.user_id, "".join(", " + x for x in sets), *args)]


def _password_changed(e: ev.PasswordChanged) -> list[Statement]:
    out = [_at_version(e.user_id, ", password_hash = $2", e.password_hash)]
    if not e.rehash:
        out.append(
            Statement(
                "DELETE FROM identity.sessions s USING appended WHERE s.user_id = $1"
                " AND s.session_id IS DISTINCT FROM $2::uuid",
                (e.user_id, e.kept_session_id),
            )
        )
        # a new password ends every API token of the user too (made under the old one); a
        # rebuild replays this after the tokens' creation, in the log's order
        out.append(
            Statement(
                "DELETE FROM identity.api_tokens t USING appended WHERE t.user_id = $1",
                (e.user_id,),
            )
        )
    return out


def _password_effect(e: ev.PasswordChanged) -> Effect:
    # the same password hashed anew at sign-in: sessions stay, whoami answers too
    return Effect.none if e.rehash else Effect.user


def _admin_changed(e: ev.AdminChanged) -> list[Statement]:
    return [_at_version(e.user_id, ", is_admin = $2", e.is_admin)]


def _user_disabled(e: ev.UserDisabled) -> list[Statement]:
    # the row, and the end of the user's sessions
    return [
        _at_version(e.user_id, ", disabled = true"),
        Statement(
            "DELETE FROM identity.sessions s USING appended WHERE s.user_id = $1", (e.user_id,)
        ),
    ]


def _user_enabled(e: ev.UserEnabled) -> list[Statement]:
    return [_at_version(e.user_id, ", disabled = false")]


def _user_deleted(e: ev.UserDeleted) -> list[Statement]:
    # sessions and known addresses go with the row (ON DELETE CASCADE)
    return [
        Statement("DELETE FROM identity.users u USING appended WHERE u.user_id = $1", (e.user_id,)),
        Statement(
            "DELETE FROM identity.login_failures f USING appended WHERE f.user_id = $1",
            (e.user_id,),
        ),
    ]


TABLE = Table(
    categories=frozenset({"user", "identity"}),
    steps={
        "PlatformSetUp": Step(_platform_set_up, Effect.none),
        "UserCreated": Step(_user_created, Effect.none),
        "UserUpdated": Step(sql=_user_updated),
        "PasswordChanged": Step(sql=_password_changed, effect_of=_password_effect),
        "AdminChanged": Step(sql=_admin_changed),
        "UserDisabled": Step(sql=_user_disabled),
        "UserEnabled": Step(sql=_user_enabled),
        "UserDeleted": Step(sql=_user_deleted),
    },
)
