"""The identity read model as the LDAP endpoint's Directory (services/identity/ldap/server.py).

Nothing here is cached but unsealed text (immutable; `IdentityStore.plain`): every bind and every
search reads the users, groups and app accounts from Postgres again, so a disabled user, a
removed app or a narrowed access list takes effect on the next operation, open connections
included. A user's password is checked as for every other service's sign-in (password_check.py:
argon2 in a thread under the service's bound, the same work for an unknown name, the row read
again after the hash, so a user disabled while their password was being checked is refused).

A refused user bind is recorded as a `LoginFailed` (reason `ldap_*`, no address: the endpoint
sees the app, not the person) and counts toward the per-account limit of SECURITY.md: past
`signin_account_limit` failures within an hour, LDAP binds of that account are refused without
looking at the password. That stops an app container from guessing passwords for ever; the
dashboard still checks passwords from addresses the user signed in from before.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import asyncpg

from libs.events import context
from libs.events.sealing import KeyDestroyed, SealingError
from services.identity import events as ev
from services.identity.clock import Clock, utcnow
from services.identity.ldap import AppAccount, DirectoryUnavailable, LdapGroup, LdapUser
from services.identity.ldap_apps import APP_ROW, account_of
from services.identity.password_check import PasswordCheck, Verdict
from services.identity.store import IdentityStore
from services.identity.tokens import token_hash, tokens_equal
from services.identity.validators import USERNAME

__all__ = ["IdentityDirectory"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Compared against when the app is unknown, so that path does the same work as a wrong password.
_NO_APP = token_hash("no such app")
_ACTOR = "ldap"
_ACCOUNT_WINDOW = timedelta(hours=1)
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)
# Users with the names of their groups.
_USERS = (
    "SELECT u.*, ARRAY(SELECT g.name FROM identity.group_members m JOIN identity.groups g"
    " USING (group_id) WHERE m.user_id = u.user_id ORDER BY g.name) AS group_names"
    " FROM identity.users u"
)


class IdentityDirectory:
    """Users, groups and app accounts of identity, read fresh for every LDAP operation."""

    def __init__(
        self,
        store: IdentityStore,
        passwords: PasswordCheck,
        *,
        account_limit: int,
        clock: Clock = utcnow,
    ) -> None:
        self.store = store
        self.passwords = passwords
        self.account_limit = account_limit  # failures within an hour that refuse binds
        self.clock = clock

    async def _db(self, what: str, fn: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
        try:
            return await fn(self.store.pool)
        except _DB_ERRORS as e:
            raise DirectoryUnavailable(f"identity read model: {what} failed: {e!r}") from e

    # -- app accounts ----------------------------------------------------------------------

    async def _app_row(self, app_id: str) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await self._db(
            "reading an app account",
            lambda p: p.fetchrow(f"{APP_ROW} WHERE a.app_id = $1 AND NOT a.removed", app_id),
        )
        return row

    async def app_account(self, app_id: str, password: str) -> AppAccount | None:
        row = await self._app_row(app_id)
        stored = row["password_hash"] if row is not None else _NO_APP
        same = tokens_equal(token_hash(password), stored)
        return account_of(row) if row is not None and same else None

    async def app_access(self, app_id: str) -> AppAccount | None:
        row = await self._app_row(app_id)
        return account_of(row) if row is not None else None

    # -- users -----------------------------------------------------------------------------

    def _plain(self, sealed: str | None) -> str | None:
        return self.store.plain(sealed)

    def _user(self, row: asyncpg.Record) -> LdapUser | None:
        """The row as an LdapUser; None if the user's key is gone (deleted meanwhile)."""
        try:
            username = self._plain(row["username"])
            email = self._plain(row["email"])
            display_name = self._plain(row["display_name"])
        except KeyDestroyed:
            return None
        except SealingError as e:
            log.error("ldap: cannot unseal a user's data: %s", e)
            raise DirectoryUnavailable("a user's data cannot be unsealed: check the keyring") from e
        assert username is not None
        return LdapUser(
            user_id=str(row["user_id"]),
            username=username,
            email=email,
            display_name=display_name,
            groups=tuple(row["group_names"]),
            disabled=bool(row["disabled"]),
            is_admin=bool(row["is_admin"]),
        )

    async def users(self) -> Sequence[LdapUser]:
        rows = await self._db("listing users", lambda p: p.fetch(_USERS))
        return [u for r in rows if (u := self._user(r)) is not None]

    async def check_user_password(self, username: str, password: str) -> LdapUser | None:
        row: asyncpg.Record | None = None
        if USERNAME.fullmatch(username):
            index = self.store.name_index(username)
            row = await self._db(
                "reading a user",
                lambda p: p.fetchrow(f"{_USERS} WHERE u.username_index = $1", index),
            )
        user = self._user(row) if row is not None else None
        if row is None or user is None:
            await self.passwords.dummy(password)
            await self._refused(None, f"ldap_{Verdict.UNKNOWN}")
            return None
        if await self._account_limited(row["user_id"]):
            await self.passwords.dummy(password)
            await self._refused(user.user_id, "ldap_limited")
            return None
        verdict = await self._db(
            "checking a password", lambda _: self.passwords.check(row, password)
        )
        if verdict is not Verdict.RIGHT:
            await self._refused(user.user_id, f"ldap_{verdict}")
            return None
        return user

    async def _account_limited(self, user_id: Any) -> bool:
        failures = await self._db(
            "counting failed sign-ins",
            lambda p: p.fetchval(
                "SELECT count(*) FROM identity.login_failures WHERE user_id = $1 AND at > $2",
                user_id,
                self.clock() - _ACCOUNT_WINDOW,
            ),
        )
        return int(failures) >= self.account_limit

    async def _refused(self, user_id: str | None, reason: str) -> None:
        with context.use(context.Context(actor=_ACTOR)):
            failed = ev.LoginFailed(user_id=user_id, ip=None, reason=reason)
            await self._db(
                "recording a failed bind",
                lambda _: self.store.append(ev.SIGNIN_FAILURES_STREAM, [failed]),
            )

    # -- groups ----------------------------------------------------------------------------

    async def groups(self) -> Sequence[LdapGroup]:
        # members come with each user (LdapUser.groups): no usernames to unseal here
        rows = await self._db(
            "listing groups", lambda p: p.fetch("SELECT name FROM identity.groups ORDER BY name")
        )
        return [LdapGroup(r["name"]) for r in rows]
