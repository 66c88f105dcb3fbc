"""Sessions: started at sign-in, answered by whoami, listed, ended by logout or revocation.

A session id is 256 random bits shown once (the cookie); only its SHA-256 is kept. A session
ends at `expires_at` (absolute) or after `idle_seconds` without a request, whichever is first,
by the service's clock. `last_seen` is operational state, touched by whoami at most once a
minute and not an event: a rebuild sets it to the sign-in time.

Each sign-in also records its place: the client address (an IPv6 one by its /64 network, which
privacy addresses keep) and the browser family, as one keyed hash (the keyring's blind index,
like the email's), so places are compared without keeping either in clear. An administrator's
sign-in, not their first, from a place not seen within the retention period of addresses is a
`new_place` (notify tells them).
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from libs.browsers import browser_family
from libs.events import context
from libs.events.envelope import RecordedEvent
from libs.events.handlers import command, query
from services.identity import events as ev
from services.identity import validators as check
from services.identity.clock import Clock, utcnow
from services.identity.config import IdentityConfig
from services.identity.errors import (
    CredentialsRefused,
    IdentityInvalid,
    IdentityNotFound,
    LoginRefused,
)
from services.identity.readmodel import Effect, Step, Table
from services.identity.store import IdentityStore, acting_as
from services.identity.tokens import new_session_id, token_hash
from services.identity.users import bump

__all__ = [
    "SESSION_KEYS",
    "TABLE",
    "Principal",
    "Sessions",
    "Whoami",
    "place_of",
    "principal_of",
]

Principal = dict[str, Any]
TokenLookup = Callable[[str], Awaitable[Principal | None]]
Extend = Callable[[Principal], Awaitable[Principal]]

_TOUCH_EVERY = timedelta(seconds=60)  # how stale last_seen may get before whoami writes it
# The keys of start_session's reply; a reply with more (e.g. an enrolment demand) is not a plain
# session.
SESSION_KEYS = frozenset(
    {"session", "session_id", "user_id", "username", "is_admin", "expires_at", "idle_timeout_s"}
)


def place_of(store: IdentityStore, ip: str | None, user_agent: str | None) -> str | None:
    """Where a sign-in comes from, as a keyed hash of its client address (an IPv6 address by
    its /64 network) and browser family; None without an address."""
    if not ip:
        return None
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        where = ip
    else:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if isinstance(address, ipaddress.IPv6Address):
            where = str(ipaddress.IPv6Network((address, 64), strict=False))
        else:
            where = str(address)
    return store.keyring.blind_index("signin-place", f"{where}\n{browser_family(user_agent) or ''}")


def principal_of(store: IdentityStore, row: asyncpg.Record, scope: str) -> Principal:
    """whoami's answer for a live credential of the user in `row` (a users row)."""
    profile = store.profile_of(row)
    return {
        "user_id": profile["user_id"],
        "username": profile["username"],
        "is_admin": profile["is_admin"],
        "scope": scope,
        "profile": profile,  # what GET /profile shows, so it needs no second query
    }


class Sessions:
    """Starting, finding, listing and ending sessions."""

    def __init__(self, store: IdentityStore, cfg: IdentityConfig, *, clock: Clock = utcnow) -> None:
        self.store = store
        self.idle_seconds = cfg.session_idle_seconds
        self.max_seconds = cfg.session_max_seconds
        self.retention = timedelta(days=cfg.ip_retention_days)  # how long a place is known
        self.clock = clock

    @property
    def pool(self) -> asyncpg.Pool:
        return self.store.pool

    async def start_session(
        self, user_id: str, user_agent: str | None, *, rehash: str | None = None
    ) -> dict[str, Any]:
        """A new session for an enabled user whose credentials were checked."""
        secret = new_session_id()
        session_id = str(uuid.uuid4())
        expires = self.clock() + timedelta(seconds=self.max_seconds)
        place = place_of(self.store, context.current().ip, user_agent)
        ip = self.store.seal_address(context.current().ip)
        sealed_place = self.store.seal_address(place)
        user_agent = self.store.seal_address(user_agent)

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            if row["disabled"]:
                raise LoginRefused()
            new_place = await self._new_place(conn, row, place)
            new: list[Any] = []
            if rehash is not None:
                new.append(ev.PasswordChanged(user_id=user_id, password_hash=rehash, rehash=True))
            new.append(
                ev.SessionStarted(
                    user_id=user_id,
                    session_id=session_id,
                    session_hash=token_hash(secret),
                    expires_at=expires.isoformat(),
                    idle_seconds=self.idle_seconds,
                    ip=ip,
                    user_agent=user_agent,
                    place=sealed_place,
                    new_place=new_place,
                )
            )
            return new

        with acting_as(user_id):
            row = await self.store.change_user(user_id, decide)
        return {
            "session": secret,
            "session_id": session_id,
            "user_id": user_id,
            "username": self.store.plain(row["username"]),
            "is_admin": row["is_admin"],
            "expires_at": expires.isoformat(),
            "idle_timeout_s": self.idle_seconds,
        }

    async def _new_place(
        self, conn: asyncpg.Connection, row: asyncpg.Record, place: str | None
    ) -> bool:
        """Whether this is an administrator's sign-in, not their first, from a place not seen
        within the retention period (asked in the sign-in's transaction: of two at once from
        one new place, the second decides again after the first, and sees it)."""
        if place is None or not row["is_admin"] or row["signed_in_at"] is None:
            return False
        seen = await conn.fetchval(
            "SELECT last_at > $3 FROM identity.known_places WHERE user_id = $1 AND place = $2",
            row["user_id"],
            place,
            self.clock() - self.retention,
        )
        return not seen

    async def principal(self, secret: str) -> Principal | None:
        """The user of a live session of an enabled account, or None."""
        now = self.clock()
        row = await self.pool.fetchrow(
            "SELECT s.session_id, s.last_seen, u.user_id, u.username, u.email, u.display_name,"
            " u.is_admin, u.disabled"
            " FROM identity.sessions s JOIN identity.users u USING (user_id)"
            " WHERE s.session_hash = $1 AND NOT u.disabled AND s.expires_at > $2"
            " AND s.last_seen > $2 - make_interval(secs => s.idle_seconds)",
            token_hash(secret),
            now,
        )
        if row is None:
            return None
        if row["last_seen"] < now - _TOUCH_EVERY:
            await self.pool.execute(
                "UPDATE identity.sessions SET last_seen = $2 WHERE session_id = $1",
                row["session_id"],
                now,
            )
        return principal_of(self.store, row, "full")

    @command("logout")
    async def logout(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        row = await self.pool.fetchrow(
            "SELECT session_id, user_id FROM identity.sessions WHERE session_hash = $1",
            token_hash(payload["session"]),
        )
        if row is not None:
            user_id, session_id = str(row["user_id"]), str(row["session_id"])
            ended = ev.SessionEnded(user_id=user_id, session_id=session_id, reason="logout")
            await self.store.append(ev.user_stream(user_id), [ended])
        return {}

    @query("sessions")
    async def sessions(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        user_id = check.canonical_id(payload["user_id"])
        await self.store.require_self_or_admin(user_id)
        current = payload.get("session")
        mine = token_hash(current) if current is not None else None
        rows = await self.pool.fetch(
            "SELECT * FROM identity.sessions WHERE user_id = $1 AND expires_at > $2"
            " AND last_seen > $2 - make_interval(secs => idle_seconds)"
            " ORDER BY started_at DESC",
            user_id,
            self.clock(),
        )
        return {"items": [_item(r, mine) for r in rows]}

    @command("revoke_session")
    async def revoke_session(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        user_id = check.canonical_id(payload["user_id"])
        await self.store.require_self_or_admin(user_id)
        session_id = check.canonical_id(payload["session_id"])
        found = await self.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM identity.sessions WHERE session_id = $1"
            " AND user_id = $2)",
            session_id,
            user_id,
        )
        if not found:
            raise IdentityNotFound("no such session", field="session_id")
        ended = ev.SessionEnded(user_id=user_id, session_id=session_id, reason="revoked")
        await self.store.append(ev.user_stream(user_id), [ended])
        return {}

    async def prune(self) -> None:
        """Forget sessions past their end."""
        await self.pool.execute("DELETE FROM identity.sessions WHERE expires_at < $1", self.clock())


def _item(r: asyncpg.Record, mine: str | None) -> dict[str, Any]:
    return {
        "session_id": str(r["session_id"]),
        "ip": r["ip"],
        "user_agent": r["user_agent"],
        "started_at": r["started_at"].isoformat(),
        "last_seen": r["last_seen"].isoformat(),
        "expires_at": r["expires_at"].isoformat(),
        "current": r["session_hash"] == mine,
    }


class Whoami:
    """Who a credential is: a session here; an API token and extra keys from the hooks given."""

    def __init__(
        self,
        sessions: Sessions,
        *,
        token_lookup: TokenLookup | None = None,
        extend: Extend | None = None,
    ) -> None:
        self.sessions = sessions
        self.token_lookup = token_lookup
        self.extend = extend  # adds keys to the answer (mfa: totp_enrolment_required)

    @query("whoami")
    async def whoami(self, payload: Mapping[str, Any]) -> Principal:
        who = await self._who(payload)
        return await self.extend(who) if self.extend is not None else who

    async def _who(self, payload: Mapping[str, Any]) -> Principal:
        if set(payload) == {"token"}:
            found = await self.token_lookup(payload["token"]) if self.token_lookup else None
        elif set(payload) == {"session"}:
            found = await self.sessions.principal(payload["session"])
        else:
            raise IdentityInvalid("send {session} or {token}", field="payload")
        if found is None:
            raise CredentialsRefused()
        return found


# -- read model ---------------------------------------------------------------------------------


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
    if e.place:  # None once its week's key is destroyed: a rebuild keeps only recent places
        await conn.execute(
            "INSERT INTO identity.known_places (user_id, place, last_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (user_id, place) DO UPDATE SET last_at = EXCLUDED.last_at",
            e.user_id,
            e.place,
            r.recorded_at,
        )
    await conn.execute(
        "UPDATE identity.users SET version = $2, signed_in_at = $3 WHERE user_id = $1",
        e.user_id,
        r.version,
        r.recorded_at,
    )


async def _session_ended(conn: asyncpg.Connection, e: ev.SessionEnded, r: RecordedEvent) -> None:
    await conn.execute("DELETE FROM identity.sessions WHERE session_id = $1", e.session_id)
    await bump(conn, e.user_id, r)


TABLE = Table(
    categories=frozenset({"user"}),
    steps={
        "SessionStarted": Step(_session_started, Effect.none),
        "SessionEnded": Step(_session_ended),
    },
)
