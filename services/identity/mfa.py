"""The second factor (TOTP, RFC 6238), the MFA policy and API tokens: rules, read model, bus verbs.

Like accounts, every change is appended and applied to the read model in one transaction
(projections.apply_inline); the steps below join the identity projection via `register_handler`.
SECURITY.md "Accounts" sets the bar:
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
  optional expiry (90 days unless given; null for never), revocable; whoami looks them up on
  every request, so a revoked, expired or disabled user's token fails on the next one.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, TypeVar

import asyncpg

from libs.events.bus import Bus, Conflict, Forbidden, Invalid, NotFound, Unauthorized
from libs.events.envelope import RecordedEvent
from libs.events.errors import ConcurrencyError
from services.identity import mfa_events as mev
from services.identity.accounts import (
    LOGIN_REFUSED,
    Accounts,
    Principal,
    acting_as,
    fields,
    flag,
    now,
    text,
    user_id_of,
    uuid_of,
)
from services.identity.passwords import MAX_LENGTH, hash_password, needs_rehash, verify_password
from services.identity.projections import LOCK_KEY, Effect, apply_inline, register_handler
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
    "RECOVERY_CODES",
    "SCOPES",
    "TICKET_REFUSED",
    "TICKET_TTL",
    "WRONG_CODE",
    "Mfa",
    "register_mfa",
]

T = TypeVar("T")
Handler = Callable[[dict[str, Any]], Awaitable[Any]]

TICKET_TTL: Final = timedelta(minutes=5)
RECOVERY_CODES: Final = 10
MAX_TOKENS: Final = 100  # live tokens per user
DEFAULT_TOKEN_LIFETIME: Final = timedelta(days=90)
SCOPES: Final = ("read", "full")
ENROLMENT_REQUIRED: Final = "totp_enrolment_required"  # the optional key of login and whoami
WRONG_CODE: Final = "wrong code"
TICKET_REFUSED: Final = "the sign-in ticket is unknown, used or expired: sign in again"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_CODE = 32  # characters of a TOTP code as typed (spaces allowed)
_MAX_RECOVERY = 64
_MAX_TICKET = 128
_MAX_TOKEN = 512


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


register_handler("TotpEnrolmentStarted", _enrolment_started, category="mfa")
register_handler("TotpEnabled", _totp_enabled)
register_handler("TotpDisabled", _totp_disabled)
register_handler("SecondFactorUsed", _factor_used, effect=Effect.none)
register_handler("MfaPolicySet", _policy_set, category="identity", effect=Effect.all)
register_handler("ApiTokenCreated", _token_created, category="token", effect=Effect.none)
register_handler("ApiTokenRevoked", _token_revoked)


# -- payloads ---------------------------------------------------------------------------------


def _code(payload: Mapping[str, Any], name: str) -> str | None:
    return text(payload, name, required=False, max_len=_MAX_CODE)


def _one_factor(payload: Mapping[str, Any], code_name: str) -> tuple[str | None, str | None]:
    """(TOTP code, recovery code): at most one of them given."""
    code = _code(payload, code_name)
    recovery = text(payload, "recovery_code", required=False, max_len=_MAX_RECOVERY)
    if code is not None and recovery is not None:
        raise Invalid(f"send either {code_name} or recovery_code, not both", field="recovery_code")
    return code, recovery


def _token_name(payload: Mapping[str, Any]) -> str:
    value = text(payload, "name", max_len=64)
    assert value is not None
    value = value.strip()
    if not value:
        raise Invalid("name must not be empty", field="name")
    if _CONTROL.search(value):
        raise Invalid("name must not contain control characters", field="name")
    return value


def _scope(payload: Mapping[str, Any]) -> str:
    value = text(payload, "scope", max_len=8)
    if value not in SCOPES:
        raise Invalid("scope must be 'read' (GET only) or 'full'", field="scope")
    return value


def _expiry(payload: Mapping[str, Any]) -> datetime | None:
    if "expires_at" not in payload:
        return now() + DEFAULT_TOKEN_LIFETIME
    raw = payload["expires_at"]
    if raw is None:
        return None
    hint = "an ISO 8601 time with a zone in the future (e.g. 2030-01-01T00:00:00Z), or null"
    if not isinstance(raw, str) or len(raw) > 40:
        raise Invalid(f"expires_at must be {hint}", field="expires_at")
    try:
        when = datetime.fromisoformat(raw.upper())  # 't' and 'z' are valid RFC 3339 too
        if when.tzinfo is None or when <= now():
            raise ValueError("no zone, or not in the future")
        return when.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: near year 1 or 9999 in UTC
        raise Invalid(f"expires_at must be {hint}", field="expires_at") from None


# -- the rules --------------------------------------------------------------------------------


class Mfa:
    """TOTP, the MFA policy and API tokens, over the accounts' store, read model and keyring."""

    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts
        self.store = accounts.store

    @property
    def pool(self) -> asyncpg.Pool:
        return self.accounts.pool

    async def _tx(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """`fn` in one transaction that holds the projection lock shared before any row lock
        (apply_inline takes it too: taking it first keeps a rebuild from deadlocking us)."""

        async def locked(conn: asyncpg.Connection) -> T:
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", LOCK_KEY)
            return await fn(conn)

        return await self.accounts.write(locked)

    async def _append(
        self, conn: asyncpg.Connection, stream: str, new: list[Any], expected: int | None = None
    ) -> None:
        await apply_inline(self.store, conn, stream, new, expected)

    # -- TOTP enrolment ------------------------------------------------------------------------

    async def totp_enrol(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Start (or restart) enrolment: a new secret, pending until a code confirms it."""
        fields(payload, {"user_id"})
        user_id = user_id_of(payload)
        self.accounts.require_self(user_id)
        row = await self.accounts.require_user(user_id)
        username = self.accounts.plain(row["username"])
        assert username is not None
        secret = new_secret()
        uri = provisioning_uri(secret, username)
        sealed = await self.accounts.seal(user_id, secret)

        async def step(conn: asyncpg.Connection) -> None:
            enabled = await conn.fetchval(
                "SELECT enabled FROM identity.totp WHERE user_id = $1 FOR UPDATE", user_id
            )
            if enabled:
                raise Conflict(
                    "the second factor is already on: turn it off first to enrol another device"
                )
            started = mev.TotpEnrolmentStarted(user_id, sealed)
            await self._append(conn, mev.mfa_stream(user_id), [started])

        await self._tx(step)
        return {"secret": secret, "otpauth_uri": uri}

    async def totp_confirm(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Turn TOTP on with a code from the new secret; answers the recovery codes, once."""
        fields(payload, {"user_id", "code"})
        user_id = user_id_of(payload)
        code = text(payload, "code", max_len=_MAX_CODE)
        assert code is not None
        self.accounts.require_self(user_id)

        async def step(conn: asyncpg.Connection) -> list[str]:
            row = await conn.fetchrow(
                "SELECT * FROM identity.totp WHERE user_id = $1 FOR UPDATE", user_id
            )
            if row is None:
                raise Conflict("start the enrolment first: no second factor is pending")
            if row["enabled"]:
                raise Conflict("the second factor is already on")
            secret = self.accounts.plain(row["secret"])
            assert secret is not None
            used = verify_totp(secret, code, last_used_step=row["last_step"])
            if used is None:
                raise Invalid(
                    "the code is wrong: enter the 6 digits the authenticator app shows now "
                    "(and check the device's clock)",
                    field="code",
                )
            codes, hashes = new_recovery_codes(RECOVERY_CODES)
            await self._append(
                conn, mev.mfa_stream(user_id), [mev.TotpEnabled(user_id, used, hashes)]
            )
            return codes

        return {"recovery_codes": await self._tx(step)}

    async def totp_disable(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Turn TOTP off (or drop a pending enrolment); needs the current password."""
        fields(payload, {"user_id", "current_password"})
        user_id = user_id_of(payload)
        password = payload.get("current_password")
        if not isinstance(password, str):
            raise Invalid("current_password is required (a string)", field="current_password")
        self.accounts.require_self(user_id)
        row = await self.accounts.require_user(user_id)
        stored = self.accounts.plain(row["password_hash"])
        assert stored is not None
        if not await asyncio.to_thread(verify_password, stored, password[: MAX_LENGTH + 1]):
            raise Invalid("the current password is wrong", field="current_password")

        async def step(conn: asyncpg.Connection) -> None:
            found = await conn.fetchval(
                "SELECT true FROM identity.totp WHERE user_id = $1 FOR UPDATE", user_id
            )
            if found:
                await self._append(conn, mev.mfa_stream(user_id), [mev.TotpDisabled(user_id)])

        await self._tx(step)
        return {}

    async def totp_state(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"user_id"})
        user_id = user_id_of(payload)
        await self.accounts.require_self_or_admin(user_id)
        await self.accounts.require_user(user_id)
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

    async def set_mfa_policy(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"require_admin_totp"})
        if "require_admin_totp" not in payload:
            raise Invalid("require_admin_totp is required", field="require_admin_totp")
        want = flag(payload, "require_admin_totp")
        await self.accounts.require_admin()

        async def step(conn: asyncpg.Connection) -> None:
            current = await conn.fetchval(
                "SELECT require_admin_totp FROM identity.mfa_policy FOR UPDATE"
            )
            if bool(current) != want:
                await self._append(conn, mev.POLICY_STREAM, [mev.MfaPolicySet(want)])

        await self._tx(step)
        return {"require_admin_totp": want}

    async def mfa_policy(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, set())
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
        """Accounts.principal_extra: `totp_enrolment_required: true` for an admin who must
        enrol first; every other key unchanged."""
        if who.get("is_admin") is True and await self.enrolment_required(str(who["user_id"])):
            return {**who, ENROLMENT_REQUIRED: True}
        return who

    # -- sign-in -------------------------------------------------------------------------------

    async def second_factor(
        self, row: asyncpg.Record, payload: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Accounts.login's step after the password: a ticket, a session, or None (go on)."""
        user_id = str(row["user_id"])
        code, recovery = _one_factor(payload, "totp")
        user_agent = text(payload, "user_agent", required=False, max_len=400)
        enabled = await self.pool.fetchval(
            "SELECT enabled FROM identity.totp WHERE user_id = $1", user_id
        )
        if not enabled:
            if row["is_admin"] and await self.require_admin_totp():
                reply = await self.accounts.start_session(
                    user_id, user_agent, rehash=await self._rehash(row, payload)
                )
                return {**reply, ENROLMENT_REQUIRED: True}
            return None  # codes sent for an account without TOTP change nothing
        if code is None and recovery is None:
            ticket, digest = new_link_token()
            rehash = await self._rehash(row, payload)
            await self.pool.execute("DELETE FROM identity.login_tickets WHERE expires_at < now()")
            await self.pool.execute(
                "INSERT INTO identity.login_tickets (ticket_hash, user_id, user_agent, rehash,"
                " expires_at) VALUES ($1, $2, $3, $4, $5)",
                digest,
                user_id,
                user_agent,
                rehash,
                now() + TICKET_TTL,
            )
            return {"totp_required": True, "ticket": ticket}
        await self._pass(user_id, code, recovery)
        return await self.accounts.start_session(
            user_id, user_agent, rehash=await self._rehash(row, payload)
        )

    async def _rehash(self, row: asyncpg.Record, payload: Mapping[str, Any]) -> str | None:
        """The password hashed with today's parameters and sealed, if the stored hash is older
        (what Accounts.login does when it starts the session itself)."""
        stored = self.accounts.plain(row["password_hash"])
        password = payload.get("password")
        if stored is None or not isinstance(password, str) or not needs_rehash(stored):
            return None
        hashed = await asyncio.to_thread(hash_password, password)
        return await self.accounts.seal(str(row["user_id"]), hashed)

    async def login_totp(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Trade a sign-in ticket and a code (or a recovery code) for a session."""
        fields(payload, {"ticket", "code", "recovery_code", "user_agent"})
        ticket = text(payload, "ticket", max_len=_MAX_TICKET)
        assert ticket is not None
        code, recovery = _one_factor(payload, "code")
        if code is None and recovery is None:
            raise Invalid(
                "send code (the authenticator app's 6 digits) or a recovery_code", field="code"
            )
        user_agent = text(payload, "user_agent", required=False, max_len=400)
        # Single use: the ticket is gone whatever happens next.
        row = await self.pool.fetchrow(
            "DELETE FROM identity.login_tickets WHERE ticket_hash = $1 RETURNING *",
            token_hash(ticket),
        )
        if row is None or row["expires_at"] <= now():
            await self.accounts.record_failure(str(row["user_id"]) if row else None, "ticket")
            raise Unauthorized(TICKET_REFUSED)
        user_id = str(row["user_id"])
        user = await self.accounts.user_row(user_id)
        if user is None or user["disabled"]:
            await self.accounts.record_failure(user_id if user else None, "disabled")
            raise Unauthorized(LOGIN_REFUSED)
        await self._pass(user_id, code, recovery)
        return await self.accounts.start_session(
            user_id, user_agent or row["user_agent"], rehash=row["rehash"]
        )

    async def _pass(self, user_id: str, code: str | None, recovery: str | None) -> None:
        """Use up the code or recovery code, or record a failed sign-in and refuse."""
        # passing the second factor is the user's own act, as signing in is (the activity log
        # names them); a failure stays the anonymous caller's
        with acting_as(user_id):
            used = await self._tx(lambda conn: self._use(conn, user_id, code, recovery))
        if not used:
            await self.accounts.record_failure(user_id, "totp")
            raise Unauthorized(WRONG_CODE)

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
            secret = self.accounts.plain(row["secret"])
            assert secret is not None
            step = verify_totp(secret, code, last_used_step=row["last_step"])
            if step is None:
                return False
            used = mev.SecondFactorUsed(user_id, step=step)
        else:
            assert recovery is not None
            hashes: list[str] = list(row["recovery_codes"])
            i = match_recovery_code(recovery, hashes)
            if i is None:
                return False
            used = mev.SecondFactorUsed(user_id, recovery_code_hash=hashes[i])
        await self._append(conn, mev.mfa_stream(user_id), [used])
        return True

    # -- API tokens ----------------------------------------------------------------------------

    async def create_token(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"user_id", "name", "scope", "expires_at"})
        user_id = user_id_of(payload)
        name = _token_name(payload)
        scope = _scope(payload)
        expires = _expiry(payload)
        self.accounts.require_self(user_id)
        row = await self.accounts.require_user(user_id)
        if row["disabled"]:
            raise Forbidden("a disabled account cannot have API tokens")
        live = await self.pool.fetchval(
            "SELECT count(*) FROM identity.api_tokens WHERE user_id = $1", user_id
        )
        if int(live) >= MAX_TOKENS:
            raise Conflict(f"an account may have at most {MAX_TOKENS} tokens: revoke some first")
        token, digest = new_api_token()
        token_id = str(uuid.uuid4())
        created = mev.ApiTokenCreated(
            token_id=token_id,
            user_id=user_id,
            token_hash=digest,
            name=await self.accounts.seal(user_id, name),
            scope=scope,
            expires_at=expires.isoformat() if expires else None,
        )
        await self.accounts.append(mev.token_stream(token_id), [created], 0)
        return {
            "token_id": token_id,
            "token": token,
            "name": name,
            "scope": scope,
            "expires_at": created.expires_at,
        }

    async def tokens(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"user_id"})
        user_id = user_id_of(payload)
        await self.accounts.require_self_or_admin(user_id)
        await self.accounts.require_user(user_id)
        rows = await self.pool.fetch(
            "SELECT * FROM identity.api_tokens WHERE user_id = $1"
            " ORDER BY created_at DESC, token_id",
            user_id,
        )
        at = now()
        return {
            "items": [
                {
                    "token_id": str(r["token_id"]),
                    "name": self.accounts.plain(r["name"]),
                    "scope": r["scope"],
                    "created_at": r["created_at"].isoformat(),
                    "expires_at": r["expires_at"].isoformat() if r["expires_at"] else None,
                    "expired": r["expires_at"] is not None and r["expires_at"] <= at,
                }
                for r in rows
            ]
        }

    async def revoke_token(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Revoke a token of `user_id`: by its owner, or by an admin."""
        fields(payload, {"user_id", "token_id"})
        user_id = user_id_of(payload)
        token_id = uuid_of(payload, "token_id", "a token id")
        await self.accounts.require_self_or_admin(user_id)
        found = await self.pool.fetchval(
            "SELECT true FROM identity.api_tokens WHERE token_id = $1 AND user_id = $2",
            token_id,
            user_id,
        )
        if not found:
            raise NotFound("no such token", field="token_id")
        try:
            # at version 1: of two revocations at once, the second finds nothing
            await self.accounts.append(
                mev.token_stream(token_id), [mev.ApiTokenRevoked(token_id, user_id)], 1
            )
        except ConcurrencyError:
            raise NotFound("no such token", field="token_id") from None
        return {}

    async def token_lookup(self, token: str) -> Principal | None:
        """whoami {token}: the owner and scope of a live token, or None."""
        if not token.startswith(API_TOKEN_PREFIX) or len(token) > _MAX_TOKEN:
            return None
        row = await self.pool.fetchrow(
            "SELECT t.scope, u.user_id, u.username, u.email, u.display_name, u.is_admin,"
            " u.disabled FROM identity.api_tokens t JOIN identity.users u USING (user_id)"
            " WHERE t.token_hash = $1 AND NOT u.disabled"
            " AND (t.expires_at IS NULL OR t.expires_at > now())",
            token_hash(token),
        )
        if row is None:
            return None
        return self.accounts.principal_of(row, row["scope"])


def register_mfa(bus: Bus, accounts: Accounts) -> Mfa:
    """Plug the second factor and API tokens into `accounts` and serve their bus verbs
    (see services/gateway/api/handlers/security.py).
    """
    mfa = Mfa(accounts)
    accounts.second_factor = mfa.second_factor
    accounts.token_lookup = mfa.token_lookup
    accounts.principal_extra = mfa.extend_principal
    commands: dict[str, Handler] = {
        "totp_enrol": mfa.totp_enrol,
        "totp_confirm": mfa.totp_confirm,
        "totp_disable": mfa.totp_disable,
        "login_totp": mfa.login_totp,
        "set_mfa_policy": mfa.set_mfa_policy,
        "create_token": mfa.create_token,
        "revoke_token": mfa.revoke_token,
    }
    queries: dict[str, Handler] = {
        "totp_state": mfa.totp_state,
        "mfa_policy": mfa.mfa_policy,
        "tokens": mfa.tokens,
    }
    for verb, fn in commands.items():
        bus.command(verb)(fn)
    for name, fn in queries.items():
        bus.query(name)(fn)
    return mfa
