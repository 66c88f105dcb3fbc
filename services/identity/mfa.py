"""The second factor (TOTP, RFC 6238), the MFA policy and API tokens: rules, read model, bus verbs.

Like every area, changes are appended and applied to the read model in one transaction
(store.py); the read-model steps are this module's `TABLE`. Time is the service's clock
(TOTP steps, ticket and token expiry). SECURITY.md "Accounts" sets the bar:
- TOTP: ±1 step of drift; each code works once, since the accepted step is an event
  (`SecondFactorUsed`) appended under a row lock that the next check reads; recovery codes are
  kept only as SHA-256 hashes and each is used up by the same event.
- Sign-in: after the password, an account with TOTP answers a ticket (256 random bits, only its
  hash kept, single use, 5 minutes) that `login_totp` trades with a code for a session; the code
  may also come with the password (one step). A wrong code is a `LoginFailed` (reason "totp"),
  so it counts toward the per-address and per-account limits like a wrong password.
- Admins may be required to enrol (`require_admin_totp`): such an admin without TOTP still gets a
  session, but login and whoami answer `totp_enrolment_required: true`; the gateway then allows
  only the routes needed to enrol (services/gateway/api/app.py).
- API tokens: 32 random bytes shown once, only their SHA-256 kept, scope `read` or `full`,
  always expiring (90 days unless given, a year at most), revocable; creating one needs a
  session started within 10 minutes (a recent sign-in; a token cannot make another); whoami
  looks them up on every request, so a revoked, expired or disabled user's token fails on the
  next one, and a new password ends them all (users.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Final

import asyncpg

from libs.events import context
from libs.events.envelope import RecordedEvent
from libs.events.handlers import command, query
from services.identity import mfa_events as mev
from services.identity import validators as check
from services.identity.clock import Clock, utcnow
from services.identity.errors import (
    TICKET_REFUSED,
    WRONG_CODE,
    Changed,
    IdentityConflict,
    IdentityForbidden,
    IdentityInvalid,
    IdentityNotFound,
    LoginRefused,
    TicketRefused,
    WrongCode,
)
from services.identity.readmodel import Effect, Step, Table
from services.identity.sessions import Principal, Sessions, principal_of
from services.identity.signin import Limits, record_failure
from services.identity.store import IdentityStore, acting_as
from services.identity.tokens import API_TOKEN_PREFIX, new_api_token, new_link_token, token_hash
from services.identity.totp import (
    match_recovery_code,
    new_recovery_codes,
    new_secret,
    provisioning_uri,
    verify_totp,
)

__all__ = [
    "DEFAULT_TOKEN_LIFETIME",
    "ENROLMENT_REQUIRED",
    "MAX_TOKENS",
    "MAX_TOKEN_LIFETIME",
    "RECENT_SIGN_IN",
    "RECOVERY_CODES",
    "SCOPES",
    "TABLE",
    "TICKET_REFUSED",
    "TICKET_TTL",
    "WRONG_CODE",
    "Mfa",
]

TICKET_TTL: Final = timedelta(minutes=5)
RECOVERY_CODES: Final = 10
MAX_TOKENS: Final = 100  # live tokens per user
DEFAULT_TOKEN_LIFETIME: Final = timedelta(days=90)
MAX_TOKEN_LIFETIME: Final = timedelta(days=366)  # a year, leap or not
RECENT_SIGN_IN: Final = timedelta(minutes=10)  # creating a token needs a session this young
SCOPES: Final = ("read", "full")
ENROLMENT_REQUIRED: Final = "totp_enrolment_required"  # the optional key of login and whoami
_MAX_TOKEN = 512


# -- the rules --------------------------------------------------------------------------------


class Mfa:
    """TOTP, the MFA policy and API tokens, over identity's store; sign-in with a second factor
    ends in a session from `sessions`."""

    def __init__(
        self, store: IdentityStore, sessions: Sessions, limits: Limits, *, clock: Clock = utcnow
    ) -> None:
        self.store = store
        self.sessions = sessions
        self.limits = limits  # a check of the current password counts as a sign-in attempt
        self.clock = clock

    @property
    def pool(self) -> asyncpg.Pool:
        return self.store.pool

    def _at(self) -> float:
        """The service's time in Unix seconds (TOTP steps)."""
        return self.clock().timestamp()

    # -- TOTP enrolment ------------------------------------------------------------------------

    @command("totp_enrol")
    async def totp_enrol(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Start (or restart) enrolment: a new secret, pending until a code confirms it."""
        user_id = check.canonical_id(payload["user_id"])
        self.store.require_self(user_id)
        row = await self.store.require_user(user_id)
        username = self.store.plain(row["username"])
        assert username is not None
        secret = new_secret()
        uri = provisioning_uri(secret, username)
        sealed = await self.store.seal(user_id, secret)

        async def step(conn: asyncpg.Connection) -> None:
            enabled = await conn.fetchval(
                "SELECT enabled FROM identity.totp WHERE user_id = $1 FOR UPDATE", user_id
            )
            if enabled:
                raise IdentityConflict(
                    "the second factor is already on: turn it off first to enrol another device"
                )
            started = mev.TotpEnrolmentStarted(user_id=user_id, secret=sealed)
            await self.store.append_on(conn, mev.mfa_stream(user_id), [started], None)

        await self.store.locked_write(step)
        return {"secret": secret, "otpauth_uri": uri}

    @command("totp_confirm")
    async def totp_confirm(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Turn TOTP on with a code from the new secret; answers the recovery codes, once."""
        user_id = check.canonical_id(payload["user_id"])
        code: str = payload["code"]
        self.store.require_self(user_id)

        async def step(conn: asyncpg.Connection) -> list[str]:
            row = await conn.fetchrow(
                "SELECT * FROM identity.totp WHERE user_id = $1 FOR UPDATE", user_id
            )
            if row is None:
                raise IdentityConflict("start the enrolment first: no second factor is pending")
            if row["enabled"]:
                raise IdentityConflict("the second factor is already on")
            secret = self.store.plain(row["secret"])
            assert secret is not None
            used = verify_totp(secret, code, last_used_step=row["last_step"], at=self._at())
            if used is None:
                raise IdentityInvalid(
                    "the code is wrong: enter the 6 digits the authenticator app shows now "
                    "(and check the device's clock)",
                    field="code",
                )
            codes, hashes = new_recovery_codes(RECOVERY_CODES)
            enabled = mev.TotpEnabled(user_id=user_id, step=used, recovery_code_hashes=hashes)
            await self.store.append_on(conn, mev.mfa_stream(user_id), [enabled], None)
            return codes

        return {"recovery_codes": await self.store.locked_write(step)}

    @command("totp_disable")
    async def totp_disable(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Turn TOTP off (or drop a pending enrolment); needs the current password."""
        user_id = check.canonical_id(payload["user_id"])
        password: str = payload["current_password"]
        self.store.require_self(user_id)
        row = await self.store.require_user(user_id)
        await self.limits.current_password(row, password)

        async def step(conn: asyncpg.Connection) -> None:
            found = await conn.fetchval(
                "SELECT true FROM identity.totp WHERE user_id = $1 FOR UPDATE", user_id
            )
            if found:
                disabled = mev.TotpDisabled(user_id=user_id)
                await self.store.append_on(conn, mev.mfa_stream(user_id), [disabled], None)

        await self.store.locked_write(step)
        return {}

    @query("totp_state")
    async def totp_state(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        user_id = check.canonical_id(payload["user_id"])
        await self.store.require_self_or_admin(user_id)
        await self.store.require_user(user_id)
        row = await self.pool.fetchrow(
            "SELECT enabled, cardinality(recovery_codes) AS left FROM identity.totp"
            " WHERE user_id = $1",
            user_id,
        )
        enabled = bool(row is not None and row["enabled"])
        return {"enabled": enabled, "recovery_codes_left": int(row["left"]) if enabled else 0}

    # -- the policy ----------------------------------------------------------------------------

    async def require_admin_totp(self) -> bool:
        return bool(await self.pool.fetchval("SELECT require_admin_totp FROM identity.mfa_policy"))

    @command("set_mfa_policy")
    async def set_mfa_policy(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        want: bool = payload["require_admin_totp"]
        await self.store.require_admin()

        async def step(conn: asyncpg.Connection) -> None:
            current = await conn.fetchval(
                "SELECT require_admin_totp FROM identity.mfa_policy FOR UPDATE"
            )
            if bool(current) != want:
                policy = mev.MfaPolicySet(require_admin_totp=want)
                await self.store.append_on(conn, mev.POLICY_STREAM, [policy], None)

        await self.store.locked_write(step)
        return {"require_admin_totp": want}

    @query("mfa_policy")
    async def mfa_policy(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return {"require_admin_totp": await self.require_admin_totp()}

    async def enrolment_required(self, user_id: str) -> bool:
        """Whether this admin must enrol TOTP before doing anything else."""
        return bool(
            await self.pool.fetchval(
                "SELECT coalesce((SELECT require_admin_totp FROM identity.mfa_policy), false)"
                " AND NOT EXISTS (SELECT 1 FROM identity.totp WHERE user_id = $1 AND enabled)",
                user_id,
            )
        )

    async def extend_principal(self, who: Principal) -> Principal:
        """whoami's extra key: `totp_enrolment_required: true` for an admin who must enrol
        first; every other key unchanged."""
        if who.get("is_admin") is True and await self.enrolment_required(str(who["user_id"])):
            return {**who, ENROLMENT_REQUIRED: True}
        return who

    # -- sign-in -------------------------------------------------------------------------------

    async def second_factor(
        self, row: asyncpg.Record, payload: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Sign-in's step after the password: a ticket, a session, or None (go on)."""
        user_id = str(row["user_id"])
        code, recovery = check.one_factor(payload, "totp")
        user_agent: str | None = payload.get("user_agent")
        enabled = await self.pool.fetchval(
            "SELECT enabled FROM identity.totp WHERE user_id = $1", user_id
        )
        if not enabled:
            if row["is_admin"] and await self.require_admin_totp():
                reply = await self.sessions.start_session(
                    user_id, user_agent, rehash=await self._rehash(row, payload)
                )
                return {**reply, ENROLMENT_REQUIRED: True}
            return None  # codes sent for an account without TOTP change nothing
        if code is None and recovery is None:
            ticket, digest = new_link_token()
            rehash = await self._rehash(row, payload)
            now = self.clock()
            await self.pool.execute("DELETE FROM identity.login_tickets WHERE expires_at < $1", now)
            await self.pool.execute(
                "INSERT INTO identity.login_tickets (ticket_hash, user_id, user_agent, rehash,"
                " expires_at) VALUES ($1, $2, $3, $4, $5)",
                digest,
                user_id,
                user_agent,
                rehash,
                now + TICKET_TTL,
            )
            return {"totp_required": True, "ticket": ticket}
        await self._pass(user_id, code, recovery)
        return await self.sessions.start_session(
            user_id, user_agent, rehash=await self._rehash(row, payload)
        )

    async def _rehash(self, row: asyncpg.Record, payload: Mapping[str, Any]) -> str | None:
        """The password hashed with today's parameters and sealed, if the stored hash is older
        (what sign-in does when it starts the session itself)."""
        stored = self.store.plain(row["password_hash"])
        password = payload.get("password")
        if (
            stored is None
            or not isinstance(password, str)
            or not self.store.hasher.needs_rehash(stored)
        ):
            return None
        hashed = await asyncio.to_thread(self.store.hasher.hash, password)
        return await self.store.seal(str(row["user_id"]), hashed)

    @command("login_totp")
    async def login_totp(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Trade a sign-in ticket and a code (or a recovery code) for a session."""
        ticket: str = payload["ticket"]
        code, recovery = check.one_factor(payload, "code")
        if code is None and recovery is None:
            raise IdentityInvalid(
                "send code (the authenticator app's 6 digits) or a recovery_code", field="code"
            )
        user_agent: str | None = payload.get("user_agent")
        # Single use: the ticket is gone whatever happens next.
        row = await self.pool.fetchrow(
            "DELETE FROM identity.login_tickets WHERE ticket_hash = $1 RETURNING *",
            token_hash(ticket),
        )
        if row is None or row["expires_at"] <= self.clock():
            await record_failure(self.store, str(row["user_id"]) if row else None, "ticket")
            raise TicketRefused()
        user_id = str(row["user_id"])
        user = await self.store.user_row(user_id)
        if user is None or user["disabled"]:
            await record_failure(self.store, user_id if user else None, "disabled")
            raise LoginRefused()
        await self._pass(user_id, code, recovery)
        return await self.sessions.start_session(
            user_id, user_agent or row["user_agent"], rehash=row["rehash"]
        )

    async def _pass(self, user_id: str, code: str | None, recovery: str | None) -> None:
        """Use up the code or recovery code, or record a failed sign-in and refuse."""
        # passing the second factor is the user's own act, as signing in is (the activity log
        # names them); a failure stays the anonymous caller's
        with acting_as(user_id):
            used = await self.store.locked_write(
                lambda conn: self._use(conn, user_id, code, recovery)
            )
        if not used:
            await record_failure(self.store, user_id, "totp")
            raise WrongCode()

    async def _use(
        self, conn: asyncpg.Connection, user_id: str, code: str | None, recovery: str | None
    ) -> bool:
        # The row lock orders two sign-ins with one code: the second reads the first's step.
        row = await conn.fetchrow(
            "SELECT * FROM identity.totp WHERE user_id = $1 AND enabled FOR UPDATE", user_id
        )
        if row is None:
            return False
        if code is not None:
            secret = self.store.plain(row["secret"])
            assert secret is not None
            step = verify_totp(secret, code, last_used_step=row["last_step"], at=self._at())
            if step is None:
                return False
            used = mev.SecondFactorUsed(user_id=user_id, step=step)
        else:
            assert recovery is not None
            hashes: list[str] = list(row["recovery_codes"])
            i = match_recovery_code(recovery, hashes)
            if i is None:
                return False
            used = mev.SecondFactorUsed(user_id=user_id, recovery_code_hash=hashes[i])
        await self.store.append_on(conn, mev.mfa_stream(user_id), [used], None)
        return True

    # -- API tokens ----------------------------------------------------------------------------

    @command("create_token")
    async def create_token(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        user_id = check.canonical_id(payload["user_id"])
        name = check.token_name(payload["name"])
        scope: str = payload["scope"]
        now = self.clock()
        expires = check.expiry(payload, now, DEFAULT_TOKEN_LIFETIME, MAX_TOKEN_LIFETIME)
        self.store.require_self(user_id)
        row = await self.store.require_user(user_id)
        if row["disabled"]:
            raise IdentityForbidden("a disabled account cannot have API tokens")
        await self._recently_signed_in(user_id, payload.get("session"), now)
        live = await self.pool.fetchval(
            "SELECT count(*) FROM identity.api_tokens WHERE user_id = $1", user_id
        )
        if int(live) >= MAX_TOKENS:
            raise IdentityConflict(
                f"an account may have at most {MAX_TOKENS} tokens: revoke some first"
            )
        token, digest = new_api_token()
        token_id = str(uuid.uuid4())
        created = mev.ApiTokenCreated(
            token_id=token_id,
            user_id=user_id,
            token_hash=digest,
            name=await self.store.seal(user_id, name),
            scope=scope,
            expires_at=expires.isoformat(),
        )
        await self.store.append(mev.token_stream(token_id), [created], 0)
        return {
            "token_id": token_id,
            "token": token,
            "name": name,
            "scope": scope,
            "expires_at": created.expires_at,
        }

    async def _recently_signed_in(self, user_id: str, session: str | None, now: datetime) -> None:
        """A token outlives the session that made it: only a user who signed in moments ago
        (a session of theirs, started within RECENT_SIGN_IN) may create one; a token may not.
        The platform itself (a service, not a person) needs none."""
        if context.current().actor == "system":
            return
        expires = None
        if session is not None:
            expires = await self.pool.fetchval(
                "SELECT expires_at FROM identity.sessions WHERE session_hash = $1"
                " AND user_id = $2 AND expires_at > $3",
                token_hash(session),
                user_id,
                now,
            )
        # a session ends max_seconds after it started, both by this service's clock
        started = expires - timedelta(seconds=self.sessions.max_seconds) if expires else None
        if started is None or started < now - RECENT_SIGN_IN:
            minutes = int(RECENT_SIGN_IN.total_seconds() // 60)
            raise IdentityForbidden(
                f"creating an API token needs a recent sign-in: sign in again (in the "
                f"dashboard) and create it within {minutes} minutes",
                field="session",
            )

    @query("tokens")
    async def tokens(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        user_id = check.canonical_id(payload["user_id"])
        await self.store.require_self_or_admin(user_id)
        await self.store.require_user(user_id)
        rows = await self.pool.fetch(
            "SELECT * FROM identity.api_tokens WHERE user_id = $1"
            " ORDER BY created_at DESC, token_id",
            user_id,
        )
        at = self.clock()
        return {
            "items": [
                {
                    "token_id": str(r["token_id"]),
                    "name": self.store.plain(r["name"]),
                    "scope": r["scope"],
                    "created_at": r["created_at"].isoformat(),
                    "expires_at": r["expires_at"].isoformat() if r["expires_at"] else None,
                    "expired": r["expires_at"] is not None and r["expires_at"] <= at,
                }
                for r in rows
            ]
        }

    @command("revoke_token")
    async def revoke_token(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Revoke a token of `user_id`: by its owner, or by an admin."""
        user_id = check.canonical_id(payload["user_id"])
        token_id = check.canonical_id(payload["token_id"])
        await self.store.require_self_or_admin(user_id)
        found = await self.pool.fetchval(
            "SELECT true FROM identity.api_tokens WHERE token_id = $1 AND user_id = $2",
            token_id,
            user_id,
        )
        if not found:
            raise IdentityNotFound("no such token", field="token_id")
        revoked = mev.ApiTokenRevoked(token_id=token_id, user_id=user_id)
        try:
            # at version 1: of two revocations at once, the second finds nothing
            await self.store.append(mev.token_stream(token_id), [revoked], 1)
        except Changed:
            raise IdentityNotFound("no such token", field="token_id") from None
        return {}

    async def token_lookup(self, token: str) -> Principal | None:
        """whoami {token}: the owner and scope of a live token, or None."""
        if not token.startswith(API_TOKEN_PREFIX) or len(token) > _MAX_TOKEN:
            return None
        row = await self.pool.fetchrow(
            "SELECT t.scope, u.user_id, u.username, u.email, u.display_name, u.is_admin,"
            " u.disabled FROM identity.api_tokens t JOIN identity.users u USING (user_id)"
            " WHERE t.token_hash = $1 AND NOT u.disabled"
            " AND (t.expires_at IS NULL OR t.expires_at > $2)",
            token_hash(token),
            self.clock(),
        )
        if row is None:
            return None
        return principal_of(self.store, row, row["scope"])


# -- read-model steps (one per event type) ----------------------------------------------------


async def _enrolment_started(
    conn: asyncpg.Connection, e: mev.TotpEnrolmentStarted, r: RecordedEvent
) -> None:
    await conn.execute(
        "INSERT INTO identity.totp (user_id, secret, enabled) VALUES ($1, $2, false)"
        " ON CONFLICT (user_id) DO UPDATE SET secret = EXCLUDED.secret, enabled = false,"
        " recovery_codes = '{}'",
        e.user_id,
        e.secret,
    )


async def _totp_enabled(conn: asyncpg.Connection, e: mev.TotpEnabled, r: RecordedEvent) -> None:
    await conn.execute(
        "UPDATE identity.totp SET enabled = true, recovery_codes = $2,"
        " last_step = GREATEST(last_step, $3) WHERE user_id = $1",
        e.user_id,
        list(e.recovery_code_hashes),
        e.step,
    )


async def _totp_disabled(conn: asyncpg.Connection, e: mev.TotpDisabled, r: RecordedEvent) -> None:
    await conn.execute("DELETE FROM identity.totp WHERE user_id = $1", e.user_id)
    await conn.execute("DELETE FROM identity.login_tickets WHERE user_id = $1", e.user_id)


async def _factor_used(conn: asyncpg.Connection, e: mev.SecondFactorUsed, r: RecordedEvent) -> None:
    if e.step is not None:
        await conn.execute(
            "UPDATE identity.totp SET last_step = GREATEST(last_step, $2) WHERE user_id = $1",
            e.user_id,
            e.step,
        )
    if e.recovery_code_hash is not None:
        await conn.execute(
            "UPDATE identity.totp SET recovery_codes = array_remove(recovery_codes, $2)"
            " WHERE user_id = $1",
            e.user_id,
            e.recovery_code_hash,
        )


async def _policy_set(conn: asyncpg.Connection, e: mev.MfaPolicySet, r: RecordedEvent) -> None:
    await conn.execute(
        "INSERT INTO identity.mfa_policy (key, require_admin_totp) VALUES (true, $1)"
        " ON CONFLICT (key) DO UPDATE SET require_admin_totp = EXCLUDED.require_admin_totp",
        e.require_admin_totp,
    )


async def _token_created(
    conn: asyncpg.Connection, e: mev.ApiTokenCreated, r: RecordedEvent
) -> None:
    await conn.execute(
        "INSERT INTO identity.api_tokens (token_id, token_hash, user_id, name, scope, created_at,"
        " expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        e.token_id,
        e.token_hash,
        e.user_id,
        e.name,
        e.scope,
        r.recorded_at,
        datetime.fromisoformat(e.expires_at) if e.expires_at else None,
    )


async def _token_revoked(
    conn: asyncpg.Connection, e: mev.ApiTokenRevoked, r: RecordedEvent
) -> None:
    await conn.execute("DELETE FROM identity.api_tokens WHERE token_id = $1", e.token_id)


TABLE = Table(
    categories=frozenset({"mfa", "identity", "token"}),
    steps={
        "TotpEnrolmentStarted": Step(_enrolment_started),
        "TotpEnabled": Step(_totp_enabled),
        "TotpDisabled": Step(_totp_disabled),
        "SecondFactorUsed": Step(_factor_used, Effect.none),
        "MfaPolicySet": Step(_policy_set, Effect.all),
        "ApiTokenCreated": Step(_token_created, Effect.none),
        "ApiTokenRevoked": Step(_token_revoked),
    },
)
