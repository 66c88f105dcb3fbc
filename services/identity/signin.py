"""Sign-in: a username and password (and, for an account with one, the second factor) for a
session, with the limits of SECURITY.md "Brute force".

Sign-in answers one way for every refusal (unknown name, wrong password, disabled account,
account limit) and spends the same work on each: one argon2 verification, one appended
`LoginFailed`. Only the per-address limit answers differently (403), since it says nothing
about any account. Failures count within windows of the service's clock.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from libs.events import context
from libs.events.envelope import RecordedEvent
from libs.events.handlers import command
from services.identity import events as ev
from services.identity.clock import Clock, utcnow
from services.identity.config import IdentityConfig
from services.identity.errors import (
    AddressLimited,
    IdentityInvalid,
    IdentityUnauthorized,
    LoginRefused,
)
from services.identity.passwords import MAX_LENGTH
from services.identity.readmodel import Effect, Step, Table
from services.identity.sessions import SESSION_KEYS, Sessions
from services.identity.store import IdentityStore

__all__ = ["FAILURE_MEMORY", "TABLE", "Limits", "SecondFactor", "SignIn", "record_failure"]

# Failures older than this no longer count for any limit; older ones are not kept.
FAILURE_MEMORY = timedelta(days=1)
_ACCOUNT_WINDOW = timedelta(hours=1)
# asked for an unknown name, so that it costs what a known one does (no user has the nil id)
_NO_ACCOUNT = uuid.UUID(int=0)
_KNOWN_ADDRESS = timedelta(days=30)

# After the password: a ticket or a session (a reply), or None to go on without one.
SecondFactor = Callable[[asyncpg.Record, Mapping[str, Any]], Awaitable[Mapping[str, Any] | None]]


async def record_failure(store: IdentityStore, user_id: str | None, reason: str) -> None:
    """A failed sign-in of `user_id` (None: no such account) from the caller's address."""
    ip = store.seal_address(context.current().ip)
    failed = ev.LoginFailed(user_id=user_id, ip=ip, reason=reason)
    await store.append(ev.SIGNIN_FAILURES_STREAM, [failed])


_FAILURES_OF_ADDRESS = (
    "SELECT at FROM identity.login_failures WHERE ip = $1 AND at > $2 ORDER BY at DESC LIMIT $3"
)
_FAILURES_WITHOUT_ADDRESS = (
    "SELECT at FROM identity.login_failures WHERE (ip IS NULL OR ip = $1) AND at > $2"
    " ORDER BY at DESC LIMIT $3"
)


class Limits:
    """The per-address and per-account limits of failed sign-ins (SECURITY.md "Brute force"),
    and the check of a signed-in user's current password that counts as one."""

    def __init__(self, store: IdentityStore, cfg: IdentityConfig, *, clock: Clock = utcnow) -> None:
        self.store = store
        self.cfg = cfg
        self.clock = clock

    @property
    def pool(self) -> asyncpg.Pool:
        return self.store.pool

    async def _address_limited(self, ip: str | None) -> int:
        """Seconds until this address may try again (0: it may now). Callers without an
        address (a proxy that passed none, a caller on the bus) share one limit."""
        window = timedelta(seconds=self.cfg.signin_ip_window_seconds)
        now = self.clock()
        rows = await self.pool.fetch(
            _FAILURES_OF_ADDRESS if ip else _FAILURES_WITHOUT_ADDRESS,
            ip or "",
            now - window,
            self.cfg.signin_ip_limit,
        )
        if len(rows) < self.cfg.signin_ip_limit:
            return 0
        oldest: datetime = rows[-1]["at"]
        return max(1, int((oldest + window - now).total_seconds()) + 1)

    async def _check_address(self, ip: str | None, *, reason: str = "limited") -> None:
        """Refuse (AddressLimited, a failure recorded with `reason`) an address over its limit."""
        wait = await self._address_limited(ip)
        if wait:
            await record_failure(self.store, None, reason)
            raise AddressLimited(wait)

    async def _account_limited(self, user_id: Any, ip: str | None) -> bool:
        now = self.clock()
        failures = await self.pool.fetchval(
            "SELECT count(*) FROM identity.login_failures WHERE user_id = $1 AND at > $2",
            user_id,
            now - _ACCOUNT_WINDOW,
        )
        if int(failures) < self.cfg.signin_account_limit:
            return False
        known = await self.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM identity.known_addresses WHERE user_id = $1"
            " AND ip = $2 AND last_at > $3)",
            user_id,
            ip or "",
            now - _KNOWN_ADDRESS,
        )
        return not known

    async def current_password(self, row: asyncpg.Record, password: str) -> None:
        """A signed-in user's proof of their current password (changing it, turning TOTP
        off): a sign-in attempt like any other, so it counts toward both limits and a wrong
        one is a `LoginFailed` (which the firewall bans from). Refused: 400 naming
        current_password, or 403 for an address over its limit."""
        user_id = str(row["user_id"])
        ip = context.current().ip
        await self._check_address(ip)
        if await self._account_limited(row["user_id"], ip):
            await asyncio.to_thread(self.store.hasher.verify_dummy, password)
            await record_failure(self.store, user_id, "limited")
            raise IdentityInvalid(
                "too many wrong passwords for this account: try again in an hour",
                field="current_password",
            )
        stored = self.store.plain(row["password_hash"])
        assert stored is not None
        if not await asyncio.to_thread(
            self.store.hasher.verify, stored, password[: MAX_LENGTH + 1]
        ):
            await record_failure(self.store, user_id, "current_password")
            raise IdentityInvalid("the current password is wrong", field="current_password")


class SignIn(Limits):
    """The `login` command and the limits it applies."""

    def __init__(
        self,
        store: IdentityStore,
        cfg: IdentityConfig,
        sessions: Sessions,
        *,
        second_factor: SecondFactor | None = None,
        clock: Clock = utcnow,
    ) -> None:
        super().__init__(store, cfg, clock=clock)
        self.sessions = sessions
        self.second_factor = second_factor

    async def _refuse(self, user_id: str | None, reason: str) -> LoginRefused:
        await record_failure(self.store, user_id, reason)
        return LoginRefused()

    @command("login")
    async def login(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        username: str = payload["username"]
        password: str = payload["password"][: MAX_LENGTH + 1]  # a longer one cannot match
        user_agent: str | None = payload.get("user_agent")
        ip = context.current().ip
        await self._check_address(ip)
        row = await self.store.user_by_name(username)
        if row is None:
            # the same work as for an account: its limit asked (of an id no user has), a hash
            await self._account_limited(_NO_ACCOUNT, ip)
            await asyncio.to_thread(self.store.hasher.verify_dummy, password)
            raise await self._refuse(None, "unknown_user")
        user_id = str(row["user_id"])
        # Past the account limit, from an address the account never signed in from, only a
        # sign-in that proves the second factor in the same request is evaluated: guessing
        # stops, and the real user with TOTP is not locked out (SECURITY.md "Brute force").
        limited = await self._account_limited(row["user_id"], ip)
        with_code = payload.get("totp") is not None or payload.get("recovery_code") is not None
        if limited and (not with_code or self.second_factor is None):
            await asyncio.to_thread(self.store.hasher.verify_dummy, password)
            raise await self._refuse(user_id, "limited")
        stored = self.store.plain(row["password_hash"])
        assert stored is not None
        if not await asyncio.to_thread(self.store.hasher.verify, stored, password):
            raise await self._refuse(user_id, "password")
        if row["disabled"]:
            raise await self._refuse(user_id, "disabled")
        if limited and self.second_factor is not None:
            try:
                reply = await self.second_factor(row, payload)
            except IdentityUnauthorized:  # a wrong code: answered like a wrong password
                raise LoginRefused() from None
            if reply is None or set(reply) != SESSION_KEYS:
                # no second factor enrolled (or only a session that must enrol): not enough
                raise await self._refuse(user_id, "limited")
            return dict(reply)
        if self.second_factor is not None:
            challenge = await self.second_factor(row, payload)
            if challenge is not None:
                return dict(challenge)
        rehash = (
            await self.store.seal(
                user_id, await asyncio.to_thread(self.store.hasher.hash, password)
            )
            if self.store.hasher.needs_rehash(stored)
            else None
        )
        return await self.sessions.start_session(user_id, user_agent, rehash=rehash)

    async def prune(self) -> None:
        """Forget failures no limit looks at any more."""
        await self.pool.execute(
            "DELETE FROM identity.login_failures WHERE at < $1", self.clock() - FAILURE_MEMORY
        )


# -- read model ---------------------------------------------------------------------------------


async def _login_failed(conn: asyncpg.Connection, e: ev.LoginFailed, r: RecordedEvent) -> None:
    if r.recorded_at < utcnow() - FAILURE_MEMORY:
        return  # a rebuild need not keep what no limit looks at any more
    await conn.execute(
        "INSERT INTO identity.login_failures (event_id, user_id, ip, at) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT DO NOTHING",
        r.id,
        e.user_id,
        e.ip,
        r.recorded_at,
    )


TABLE = Table(
    categories=frozenset({"signin"}),
    steps={"LoginFailed": Step(_login_failed, Effect.none)},
)
