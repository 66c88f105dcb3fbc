"""Accounts: setup, users, sign-in, sessions. The rules live here; the bus handlers only route.

Every change is appended and applied to the read model in one transaction (projections.py).
Sign-in answers one way for every refusal (unknown name, wrong password, disabled account,
account limit) and spends the same work on each: one argon2 verification, one appended
`LoginFailed`. Only the per-address limit answers differently (403), since it says nothing
about any account.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg

from libs.events import context
from libs.events.bus import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from libs.events.errors import ConcurrencyError
from libs.events.sealing import Keyring
from libs.events.store import PostgresEventStore
from services.identity import changes
from services.identity import events as ev
from services.identity.config import IdentityConfig
from services.identity.passwords import (
    MAX_LENGTH,
    check_password,
    hash_password,
    needs_rehash,
    verify_dummy,
    verify_password,
)
from services.identity.projections import apply_inline
from services.identity.tokens import new_session_id, token_hash

__all__ = ["LOGIN_REFUSED", "Accounts", "Principal", "acting_as", "now"]

log = logging.getLogger(__name__)

LOGIN_REFUSED = "wrong username or password"
USERNAME = re.compile(r"[A-Za-z][A-Za-z0-9._-]{1,31}")
EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]{1,189}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TOUCH_EVERY = timedelta(seconds=60)  # how stale last_seen may get before whoami writes it
_RETRIES = 5
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

T = TypeVar("T")
Principal = dict[str, Any]


# -- reading payloads (the bus carries JSON; identity checks what it owns) -------------------


def fields(payload: Mapping[str, Any], allowed: set[str]) -> None:
    for name in payload:
        if name not in allowed:
            raise Invalid(f"unknown field {name!r}", field=str(name)[:64])


def text(
    payload: Mapping[str, Any],
    name: str,
    *,
    required: bool = True,
    max_len: int = 256,
    pattern: re.Pattern[str] | None = None,
    expect: str = "",
) -> str | None:
    value = payload.get(name)
    if value is None:
        if required:
            raise Invalid(f"{name} is required", field=name)
        return None
    if not isinstance(value, str):
        raise Invalid(f"{name} must be a string", field=name)
    if len(value) > max_len:
        raise Invalid(f"{name} must be at most {max_len} characters", field=name)
    if pattern is not None and not pattern.fullmatch(value):
        raise Invalid(f"{name} must be {expect}", field=name)
    return value


def flag(payload: Mapping[str, Any], name: str, default: bool = False) -> bool:
    value = payload.get(name, default)
    if not isinstance(value, bool):
        raise Invalid(f"{name} must be true or false", field=name)
    return value


def uuid_of(payload: Mapping[str, Any], name: str, what: str) -> str:
    raw = text(payload, name, max_len=64)
    try:
        return str(uuid.UUID(str(raw)))
    except ValueError:
        raise Invalid(f"{name} must be {what} (a UUID)", field=name) from None


def user_id_of(payload: Mapping[str, Any], name: str = "user_id") -> str:
    return uuid_of(payload, name, "a user id")


def _username(payload: Mapping[str, Any]) -> str:
    value = text(
        payload,
        "username",
        max_len=32,
        pattern=USERNAME,
        expect="2 to 32 characters: a letter, then letters, digits, '.', '_' or '-'",
    )
    assert value is not None
    return value


def _email(payload: Mapping[str, Any], required: bool = True) -> str | None:
    value = text(payload, "email", required=required, max_len=254, pattern=EMAIL, expect="an email")
    return value.strip() if value is not None else None


def _display_name(payload: Mapping[str, Any]) -> str | None:
    value = text(payload, "display_name", required=False, max_len=100)
    if value is not None and _CONTROL.search(value):
        raise Invalid("display_name must not contain control characters", field="display_name")
    return value or None


def _password(payload: Mapping[str, Any], name: str = "password") -> str:
    value = payload.get(name)
    if not isinstance(value, str):
        raise Invalid(f"{name} is required (a string)", field=name)
    return value


def now() -> datetime:
    return datetime.now(UTC)


# The keys of start_session's reply; a reply with more (e.g. an enrolment demand) is not a plain
# session.
_SESSION_KEYS = frozenset(
    {"session", "session_id", "user_id", "username", "is_admin", "expires_at", "idle_timeout_s"}
)


def acting_as(user_id: str) -> AbstractContextManager[context.Context]:
    """Events of a person's own act before they have a session (setup, sign-in, accepting an
    invitation) name that person as the actor, not "anonymous"; the client IP stays."""
    return context.use(dataclasses.replace(context.current(), actor=user_id))


class Accounts:
    """The account rules of identity over its store, read model and keyring."""

    def __init__(self, store: PostgresEventStore, keyring: Keyring, cfg: IdentityConfig) -> None:
        self.store = store
        self.keyring = keyring
        self.cfg = cfg
        self._plain: OrderedDict[str, str] = OrderedDict()  # sealed -> plaintext, bounded
        # Other areas (API tokens, second factors) plug in here.
        self.token_lookup: Callable[[str], Awaitable[Principal | None]] | None = None
        # Adds keys to whoami's answer for a live credential (mfa: totp_enrolment_required).
        self.principal_extra: Callable[[Principal], Awaitable[Principal]] | None = None
        self.second_factor: (
            Callable[[asyncpg.Record, Mapping[str, Any]], Awaitable[Mapping[str, Any] | None]]
            | None
        ) = None
        # Tells gateways whose cached whoami answers a committed transaction changed.
        self.announce: Callable[[changes.Changes], Awaitable[None]] | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        return self.store.pool

    # -- sealing -------------------------------------------------------------------------------

    def name_index(self, username: str) -> str:
        return self.keyring.blind_index("username", username.lower())

    def email_index(self, email: str) -> str:
        return self.keyring.blind_index("email", email.strip().lower())

    async def seal(self, user_id: str, value: str) -> str:
        # the first seal for a user creates their key: a file write, so off the event loop
        return await asyncio.to_thread(self.keyring.seal_for, ev.subject_of(user_id), value)

    def plain(self, sealed: str | None) -> str | None:
        """Unsealed text, cached (values are immutable; a destroyed key is never asked again,
        since its user's rows are gone)."""
        if sealed is None:
            return None
        hit = self._plain.get(sealed)
        if hit is not None:
            self._plain.move_to_end(sealed)
            return hit
        value = self.keyring.unseal_str(sealed)
        self._plain[sealed] = value
        if len(self._plain) > 20_000:
            self._plain.popitem(last=False)
        return value

    # -- transactions ----------------------------------------------------------------------------

    async def write(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `fn` in one transaction; a taken name or email becomes a Conflict naming it.

        Every change goes through here: once the transaction commits, the users whose whoami
        answer it changed are announced (changes.py), before the command replies."""
        with changes.collecting() as changed:
            async with self.pool.acquire() as conn:
                try:
                    async with conn.transaction():
                        result = await fn(conn)
                except asyncpg.UniqueViolationError as e:
                    constraint = e.constraint_name or ""
                    if "username" in constraint:
                        raise Conflict("that username is taken", field="username") from None
                    if "email" in constraint:
                        raise Conflict(
                            "that email belongs to another account", field="email"
                        ) from None
                    raise
        if changed and self.announce is not None:
            await self.announce(changed)
        return result

    async def append(self, stream: str, new: list[Any], expected: int | None = None) -> list[Any]:
        return await self.write(lambda conn: apply_inline(self.store, conn, stream, new, expected))

    async def user_row(self, user_id: str, conn: Any = None) -> asyncpg.Record | None:
        return await (conn or self.pool).fetchrow(
            "SELECT * FROM identity.users WHERE user_id = $1", user_id
        )

    async def require_user(self, user_id: str) -> asyncpg.Record:
        row = await self.user_row(user_id)
        if row is None:
            raise NotFound("no such user", field="user_id")
        return row

    async def require_admin(self) -> str:
        """The acting user's id, if they are an enabled administrator (or the platform itself)."""
        actor = context.current().actor
        if actor == "system":
            return actor
        try:
            row = await self.user_row(str(uuid.UUID(actor)))
        except ValueError:
            row = None
        if row is None or row["disabled"] or not row["is_admin"]:
            raise Forbidden("only an administrator may do this")
        return actor

    async def require_self_or_admin(self, user_id: str) -> None:
        """The caller acts on their own account, or is an administrator (or the platform)."""
        if context.current().actor != user_id:
            await self.require_admin()

    def require_self(self, user_id: str) -> None:
        """Only the account's own user (or the platform) may do this, not even an admin."""
        if context.current().actor not in (user_id, "system"):
            raise Forbidden("only the account's own user may do this")

    # -- setup -----------------------------------------------------------------------------------

    async def setup_done(self) -> bool:
        return bool(
            await self.pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM identity.platform WHERE key = 'setup')"
            )
        )

    async def setup(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"username", "email", "password", "display_name"})
        if await self.setup_done():
            raise Conflict("setup is already done: sign in as an administrator")
        user_id = str(uuid.uuid4())
        created = await self._new_user(payload, user_id, is_admin=True, via="setup")

        async def both(conn: asyncpg.Connection) -> None:
            try:
                await apply_inline(
                    self.store, conn, ev.SETUP_STREAM, [ev.PlatformSetUp(user_id)], 0
                )
            except ConcurrencyError:
                raise Conflict("setup is already done: sign in as an administrator") from None
            await apply_inline(self.store, conn, ev.user_stream(user_id), [created], 0)

        with acting_as(user_id):
            await self.write(both)
        log.info("platform set up; first administrator %s", user_id)
        return {"user_id": user_id}

    async def _new_user(
        self, payload: Mapping[str, Any], user_id: str, *, is_admin: bool, via: str
    ) -> ev.UserCreated:
        username = _username(payload)
        email = _email(payload)
        assert email is not None
        display_name = _display_name(payload)
        password = _password(payload)
        check_password(password, username=username, email=email)
        hashed = await asyncio.to_thread(hash_password, password)
        return ev.UserCreated(
            user_id=user_id,
            username=await self.seal(user_id, username),
            username_index=self.name_index(username),
            email=await self.seal(user_id, email),
            email_index=self.email_index(email),
            display_name=await self.seal(user_id, display_name) if display_name else None,
            password_hash=await self.seal(user_id, hashed),
            is_admin=is_admin,
            via=via,
        )

    # -- users -----------------------------------------------------------------------------------

    def profile_of(self, row: asyncpg.Record) -> dict[str, Any]:
        return {
            "user_id": str(row["user_id"]),
            "username": self.plain(row["username"]),
            "email": self.plain(row["email"]),
            "display_name": self.plain(row["display_name"]),
            "is_admin": row["is_admin"],
            "disabled": row["disabled"],
        }

    async def profile(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"user_id"})
        await self.require_self_or_admin(user_id_of(payload))
        return self.profile_of(await self.require_user(user_id_of(payload)))

    def user_item(self, row: asyncpg.Record) -> dict[str, Any]:
        """A user as an admin's list shows them: the profile, TOTP and groups (_USER_ITEMS)."""
        return {
            **self.profile_of(row),
            "totp_enabled": row["totp_enabled"],
            "groups": json.loads(row["group_list"]),
        }

    async def users(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, set())
        rows = await self.pool.fetch(_USER_ITEMS + " ORDER BY u.created_at, u.user_id")
        return {"items": [self.user_item(r) for r in rows]}

    async def create_user(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"username", "email", "password", "display_name", "is_admin"})
        await self.require_admin()
        is_admin = flag(payload, "is_admin")
        user_id = str(uuid.uuid4())
        created = await self._new_user(payload, user_id, is_admin=is_admin, via="admin")
        await self.append(ev.user_stream(user_id), [created], 0)
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

    async def _change_user(
        self,
        payload: Mapping[str, Any],
        decide: Callable[[asyncpg.Connection, asyncpg.Record], Awaitable[list[Any]]],
    ) -> asyncpg.Record:
        """Read the user, let `decide` return the events, append them at the version read."""
        user_id = user_id_of(payload)

        async def step(conn: asyncpg.Connection) -> asyncpg.Record:
            row = await self.user_row(user_id, conn)
            if row is None:
                raise NotFound("no such user", field="user_id")
            new = await decide(conn, row)
            if new:
                await apply_inline(self.store, conn, ev.user_stream(user_id), new, row["version"])
            return row

        for _ in range(_RETRIES):
            try:
                return await self.write(step)
            except ConcurrencyError:
                continue  # the user changed meanwhile: decide again on the new state
        raise Conflict("the user is being changed by someone else; try again")

    def _not_self(self, row: asyncpg.Record, what: str, field: str = "user_id") -> None:
        if str(row["user_id"]) == context.current().actor:
            raise Conflict(f"you cannot {what} your own account", field=field)

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
                raise Conflict(
                    "the last enabled administrator cannot lose the role: make another user "
                    "an administrator first",
                    field="is_admin",
                )
            self._not_self(row, "remove the administrator role of", "is_admin")
        return [ev.AdminChanged(uid, want)]

    async def disable_user(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"user_id"})
        await self.require_admin()

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            self._not_self(row, "disable")
            if row["disabled"]:
                return []
            if row["is_admin"] and await self._last_admin(conn, str(row["user_id"])):
                raise Conflict("the last enabled administrator cannot be disabled", field="user_id")
            return [ev.UserDisabled(str(row["user_id"]))]

        await self._change_user(payload, decide)
        return {}

    async def enable_user(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"user_id"})
        await self.require_admin()

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            return [ev.UserEnabled(str(row["user_id"]))] if row["disabled"] else []

        await self._change_user(payload, decide)
        return {}

    async def set_admin(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"user_id", "is_admin"})
        await self.require_admin()
        want = flag(payload, "is_admin")

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            return await self._admin_change(conn, row, want)

        await self._change_user(payload, decide)
        return {}

    async def update_user(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """An administrator edits a user: any of is_admin, email and display_name, all in one
        transaction (a taken email changes nothing); answers the user as `users` lists them."""
        fields(payload, {"user_id", "is_admin", "email", "display_name"})
        await self.require_admin()
        want = None if payload.get("is_admin") is None else flag(payload, "is_admin")
        email = _email(payload, required=False)
        display_name = _display_name(payload)
        clear = "display_name" in payload and not display_name

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            uid = str(row["user_id"])
            new_email = email if email is not None and email != self.plain(row["email"]) else None
            new_name = (
                display_name
                if display_name is not None and display_name != self.plain(row["display_name"])
                else None
            )
            drop_name = clear and row["display_name"] is not None
            new: list[Any] = []
            if new_email is not None or new_name is not None or drop_name:
                new.append(
                    ev.UserUpdated(
                        user_id=uid,
                        email=await self.seal(uid, new_email) if new_email else None,
                        email_index=self.email_index(new_email) if new_email else None,
                        display_name=await self.seal(uid, new_name) if new_name else None,
                        clear_display_name=drop_name,
                    )
                )
            if want is not None:
                new += await self._admin_change(conn, row, want)
            return new

        row = await self._change_user(payload, decide)
        found = await self.pool.fetchrow(_USER_ITEMS + " WHERE u.user_id = $1", row["user_id"])
        if found is None:  # deleted right after this change committed
            raise NotFound("no such user", field="user_id")
        return self.user_item(found)

    async def delete_user(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"user_id"})
        await self.require_admin()

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            self._not_self(row, "delete")
            if row["is_admin"] and await self._last_admin(conn, str(row["user_id"])):
                raise Conflict("the last enabled administrator cannot be deleted", field="user_id")
            return [ev.UserDeleted(str(row["user_id"]))]

        row = await self._change_user(payload, decide)
        await self.shred(str(row["user_id"]))
        return {}

    async def shred(self, user_id: str) -> None:
        """Destroy the user's key: their sealed values in the log can never be read again."""
        await asyncio.to_thread(self.keyring.destroy_subject, ev.subject_of(user_id))

    async def shred_deleted(self) -> int:
        """At start: finish shredding users whose deletion committed before a crash."""
        ids = await self.pool.fetch(
            "SELECT DISTINCT data ->> 'user_id' AS user_id FROM events.events"
            " WHERE type = 'UserDeleted'"
        )
        for r in ids:
            await self.shred(r["user_id"])
        return len(ids)

    async def update_profile(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"user_id", "email", "display_name"})
        await self.require_self_or_admin(user_id_of(payload))
        email = _email(payload, required=False)
        display_name = _display_name(payload)
        clear = "display_name" in payload and not display_name

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            uid = str(row["user_id"])
            if email is None and display_name is None and not clear:
                return []
            return [
                ev.UserUpdated(
                    user_id=uid,
                    email=await self.seal(uid, email) if email else None,
                    email_index=self.email_index(email) if email else None,
                    display_name=await self.seal(uid, display_name) if display_name else None,
                    clear_display_name=clear,
                )
            ]

        row = await self._change_user(payload, decide)
        return self.profile_of(await self.require_user(str(row["user_id"])))

    async def change_password(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"user_id", "current_password", "new_password", "session"})
        self.require_self(user_id_of(payload))
        current = _password(payload, "current_password")
        new = _password(payload, "new_password")
        session = text(payload, "session", required=False, max_len=512)
        row = await self.require_user(user_id_of(payload))
        stored = self.plain(row["password_hash"])
        assert stored is not None
        if not await asyncio.to_thread(verify_password, stored, current):
            raise Invalid("the current password is wrong", field="current_password")
        try:
            check_password(
                new, username=self.plain(row["username"]), email=self.plain(row["email"])
            )
        except Invalid as e:
            raise Invalid(str(e), field="new_password") from None
        hashed = await asyncio.to_thread(hash_password, new)
        kept = None
        if session:
            kept = await self.pool.fetchval(
                "SELECT session_id::text FROM identity.sessions WHERE session_hash = $1"
                " AND user_id = $2",
                token_hash(session),
                row["user_id"],
            )
        uid = str(row["user_id"])
        sealed = await self.seal(uid, hashed)

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            return [ev.PasswordChanged(uid, sealed, kept_session_id=kept)]

        await self._change_user({"user_id": uid}, decide)
        return {}

    # -- sign-in ---------------------------------------------------------------------------------

    async def record_failure(self, user_id: str | None, reason: str) -> None:
        ip = context.current().ip
        await self.append(ev.SIGNIN_FAILURES_STREAM, [ev.LoginFailed(user_id, ip, reason)])

    async def _address_limited(self, ip: str | None) -> int:
        """Seconds until this address may try again (0: it may now)."""
        if not ip:
            return 0
        window = timedelta(seconds=self.cfg.signin_ip_window_seconds)
        rows = await self.pool.fetch(
            "SELECT at FROM identity.login_failures WHERE ip = $1 AND at > $2"
            " ORDER BY at DESC LIMIT $3",
            ip,
            now() - window,
            self.cfg.signin_ip_limit,
        )
        if len(rows) < self.cfg.signin_ip_limit:
            return 0
        oldest: datetime = rows[-1]["at"]
        return max(1, int((oldest + window - now()).total_seconds()) + 1)

    async def _account_limited(self, user_id: Any, ip: str | None) -> bool:
        failures = await self.pool.fetchval(
            "SELECT count(*) FROM identity.login_failures WHERE user_id = $1 AND at > $2",
            user_id,
            now() - timedelta(hours=1),
        )
        if int(failures) < self.cfg.signin_account_limit:
            return False
        known = await self.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM identity.known_addresses WHERE user_id = $1"
            " AND ip = $2 AND last_at > $3)",
            user_id,
            ip or "",
            now() - timedelta(days=30),
        )
        return not known

    async def login(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"username", "password", "user_agent", "totp", "recovery_code"})
        username = payload.get("username")
        password = payload.get("password")
        if not isinstance(username, str) or not isinstance(password, str):
            raise Invalid("username and password are required strings", field="username")
        user_agent = text(payload, "user_agent", required=False, max_len=400)
        ip = context.current().ip
        wait = await self._address_limited(ip)
        if wait:
            await self.record_failure(None, "limited")
            raise Forbidden(
                f"too many failed sign-ins from your address; try again in {wait} seconds"
            )
        password = password[: MAX_LENGTH + 1]  # a longer one cannot match; bound the work
        row = None
        if USERNAME.fullmatch(username):
            row = await self.pool.fetchrow(
                "SELECT * FROM identity.users WHERE username_index = $1", self.name_index(username)
            )
        if row is None:
            await asyncio.to_thread(verify_dummy, password)
            await self.record_failure(None, "unknown_user")
            raise Unauthorized(LOGIN_REFUSED)
        user_id = str(row["user_id"])
        # Past the account limit, from an address the account never signed in from, only a
        # sign-in that proves the second factor in the same request is evaluated: guessing
        # stops, and the real user with TOTP is not locked out (SECURITY.md "Brute force").
        limited = await self._account_limited(row["user_id"], ip)
        with_code = payload.get("totp") is not None or payload.get("recovery_code") is not None
        if limited and (not with_code or self.second_factor is None):
            await asyncio.to_thread(verify_dummy, password)
            await self.record_failure(user_id, "limited")
            raise Unauthorized(LOGIN_REFUSED)
        stored = self.plain(row["password_hash"])
        assert stored is not None
        if not await asyncio.to_thread(verify_password, stored, password):
            await self.record_failure(user_id, "password")
            raise Unauthorized(LOGIN_REFUSED)
        if row["disabled"]:
            await self.record_failure(user_id, "disabled")
            raise Unauthorized(LOGIN_REFUSED)
        if limited and self.second_factor is not None:
            try:
                reply = await self.second_factor(row, payload)
            except Unauthorized:  # a wrong code: answered like a wrong password, no oracle
                raise Unauthorized(LOGIN_REFUSED) from None
            if reply is None or set(reply) != _SESSION_KEYS:
                # no second factor enrolled (or only a session that must enrol): not enough
                await self.record_failure(user_id, "limited")
                raise Unauthorized(LOGIN_REFUSED)
            return dict(reply)
        if self.second_factor is not None:
            challenge = await self.second_factor(row, payload)
            if challenge is not None:
                return dict(challenge)
        rehash = (
            await self.seal(user_id, await asyncio.to_thread(hash_password, password))
            if (needs_rehash(stored))
            else None
        )
        return await self.start_session(user_id, user_agent, rehash=rehash)

    async def start_session(
        self, user_id: str, user_agent: str | None, *, rehash: str | None = None
    ) -> dict[str, Any]:
        """A new session for an enabled user whose credentials were checked."""
        secret = new_session_id()
        session_id = str(uuid.uuid4())
        expires = now() + timedelta(seconds=self.cfg.session_max_seconds)
        ip = context.current().ip

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            if row["disabled"]:
                raise Unauthorized(LOGIN_REFUSED)
            new: list[Any] = []
            if rehash is not None:
                new.append(ev.PasswordChanged(user_id, rehash, rehash=True))
            new.append(
                ev.SessionStarted(
                    user_id=user_id,
                    session_id=session_id,
                    session_hash=token_hash(secret),
                    expires_at=expires.isoformat(),
                    idle_seconds=self.cfg.session_idle_seconds,
                    ip=ip,
                    user_agent=user_agent,
                )
            )
            return new

        with acting_as(user_id):
            row = await self._change_user({"user_id": user_id}, decide)
        return {
            "session": secret,
            "session_id": session_id,
            "user_id": user_id,
            "username": self.plain(row["username"]),
            "is_admin": row["is_admin"],
            "expires_at": expires.isoformat(),
            "idle_timeout_s": self.cfg.session_idle_seconds,
        }

    async def whoami(self, payload: Mapping[str, Any]) -> Principal:
        who = await self._whoami(payload)
        return await self.principal_extra(who) if self.principal_extra is not None else who

    async def _whoami(self, payload: Mapping[str, Any]) -> Principal:
        if set(payload) == {"token"} and isinstance(payload["token"], str):
            who = await self.token_lookup(payload["token"]) if self.token_lookup else None
            if who is None:
                raise Unauthorized("unknown, expired or revoked credentials")
            return who
        if set(payload) != {"session"} or not isinstance(payload["session"], str):
            raise Invalid("send {session} or {token}", field="payload")
        row = await self.pool.fetchrow(
            "SELECT s.session_id, s.last_seen, u.user_id, u.username, u.email, u.display_name,"
            " u.is_admin, u.disabled"
            " FROM identity.sessions s JOIN identity.users u USING (user_id)"
            " WHERE s.session_hash = $1 AND NOT u.disabled AND s.expires_at > now()"
            " AND s.last_seen > now() - make_interval(secs => s.idle_seconds)",
            token_hash(payload["session"]),
        )
        if row is None:
            raise Unauthorized("unknown, expired or revoked credentials")
        if row["last_seen"] < now() - _TOUCH_EVERY:
            await self.pool.execute(
                "UPDATE identity.sessions SET last_seen = now() WHERE session_id = $1",
                row["session_id"],
            )
        return self.principal_of(row, "full")

    def principal_of(self, row: asyncpg.Record, scope: str) -> Principal:
        """whoami's answer for a live credential of the user in `row` (a users row)."""
        profile = self.profile_of(row)
        return {
            "user_id": profile["user_id"],
            "username": profile["username"],
            "is_admin": profile["is_admin"],
            "scope": scope,
            "profile": profile,  # what GET /profile shows, so it needs no second query
        }

    async def logout(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"session"})
        secret = text(payload, "session", max_len=512)
        assert secret is not None
        row = await self.pool.fetchrow(
            "SELECT session_id, user_id FROM identity.sessions WHERE session_hash = $1",
            token_hash(secret),
        )
        if row is not None:
            await self.append(
                ev.user_stream(str(row["user_id"])),
                [ev.SessionEnded(str(row["user_id"]), str(row["session_id"]), "logout")],
            )
        return {}

    async def sessions(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"user_id", "session"})
        user_id = user_id_of(payload)
        await self.require_self_or_admin(user_id)
        current = payload.get("session")
        mine = token_hash(current) if isinstance(current, str) else None
        rows = await self.pool.fetch(
            "SELECT * FROM identity.sessions WHERE user_id = $1 AND expires_at > now()"
            " AND last_seen > now() - make_interval(secs => idle_seconds)"
            " ORDER BY started_at DESC",
            user_id,
        )
        return {
            "items": [
                {
                    "session_id": str(r["session_id"]),
                    "ip": r["ip"],
                    "user_agent": r["user_agent"],
                    "started_at": r["started_at"].isoformat(),
                    "last_seen": r["last_seen"].isoformat(),
                    "expires_at": r["expires_at"].isoformat(),
                    "current": r["session_hash"] == mine,
                }
                for r in rows
            ]
        }

    async def revoke_session(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"user_id", "session_id"})
        user_id = user_id_of(payload)
        await self.require_self_or_admin(user_id)
        session_id = uuid_of(payload, "session_id", "a session id")
        found = await self.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM identity.sessions WHERE session_id = $1"
            " AND user_id = $2)",
            session_id,
            user_id,
        )
        if not found:
            raise NotFound("no such session", field="session_id")
        await self.append(
            ev.user_stream(user_id), [ev.SessionEnded(user_id, session_id, "revoked")]
        )
        return {}

    async def prune(self) -> None:
        """Forget failures no limit looks at any more, and sessions past their end."""
        await self.pool.execute(
            "DELETE FROM identity.login_failures WHERE at < now() - interval '1 day'"
        )
        await self.pool.execute("DELETE FROM identity.sessions WHERE expires_at < now()")
