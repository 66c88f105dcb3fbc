"""Groups, invitations and password-reset links: the rules, their read-model steps, the bus verbs.

Like every area, changes are appended and applied to the read model in one transaction
(store.py); the read-model steps are this module's `TABLE`. Invitation and reset links follow
SECURITY.md "Lessons": 256 random bits shown once (only the SHA-256 hash is stored), bound to
their recipient (the invited email, by its blind index; the user the link was made for), single
use (the use is an event appended at the version the check read, so of two concurrent uses one
fails), and expiring (7 days and 1 hour by default, by the service's clock). Every refusal of a
link answers the same, so a caller learns nothing about why. Asking for a reset link answers the
same whether or not the email has an account; only a request for an account's email appends an
event (one for an unknown email would let anyone fill the log). Requests are limited per client
address (past it, 403 saying when to try again: it says nothing of any account) and per email
asked for (past it, the same answer and nothing done).

Links go out by email through notify (link_mail.py): an invitation's before the administrator's
answer (which says whether it did), a requested reset's in the background (only to an enabled
account, and never in the answer: nothing in it or in its timing tells whether one went out).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from libs.events import context
from libs.events.envelope import RecordedEvent
from libs.events.handlers import command, query
from services.identity import events as ev
from services.identity import group_events as gev
from services.identity import validators as check
from services.identity.clock import Clock, utcnow
from services.identity.errors import (
    INVITATION_REFUSED,
    RESET_REFUSED,
    AddressLimited,
    Changed,
    EmailTaken,
    IdentityNotFound,
    InvitationRefused,
    ResetRefused,
)
from services.identity.link_mail import LinkMail
from services.identity.readmodel import Step, Table
from services.identity.store import Decide, IdentityStore, acting_as
from services.identity.tokens import new_link_token, token_hash, tokens_equal
from services.identity.users import Users

__all__ = [
    "INVITATION_REFUSED",
    "INVITATION_TTL",
    "RESET_REFUSED",
    "RESET_TTL",
    "TABLE",
    "Groups",
]

log = logging.getLogger(__name__)

# Read when a Groups is made (tests shorten them); SECURITY.md "Lessons" sets the defaults.
INVITATION_TTL = timedelta(days=7)
RESET_TTL = timedelta(hours=1)
_RESET_WINDOW = timedelta(hours=1)  # what the limits of reset requests count


# -- the rules ----------------------------------------------------------------------------------


class Groups:
    """Groups, invitations and reset links, over identity's store; accounts come from `users`."""

    def __init__(
        self,
        store: IdentityStore,
        users: Users,
        *,
        clock: Clock = utcnow,
        invitation_ttl: timedelta | None = None,
        reset_ttl: timedelta | None = None,
        reset_limits: tuple[int, int] = (10, 3),
        mail: LinkMail | None = None,
    ) -> None:
        self.store = store
        self.users = users
        self.clock = clock
        self.mail = mail if mail is not None else LinkMail(None)  # links by email (notify)
        self.reset_ip_limit, self.reset_email_limit = reset_limits  # per hour
        self.invitation_ttl = invitation_ttl or INVITATION_TTL
        self.reset_ttl = reset_ttl or RESET_TTL

    @property
    def pool(self) -> asyncpg.Pool:
        return self.store.pool

    # -- groups ----------------------------------------------------------------------------------

    async def _view(self, group_id: str | None = None) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT g.group_id, g.name,"
            " coalesce(array_agg(m.user_id ORDER BY m.added_at, m.user_id)"
            "          FILTER (WHERE m.user_id IS NOT NULL), '{}') AS members"
            " FROM identity.groups g LEFT JOIN identity.group_members m USING (group_id)"
            " WHERE $1::uuid IS NULL OR g.group_id = $1::uuid"
            " GROUP BY g.group_id ORDER BY g.name",
            group_id,
        )
        return [
            {
                "group_id": str(r["group_id"]),
                "name": r["name"],
                "members": [str(m) for m in r["members"]],
            }
            for r in rows
        ]

    async def _one(self, group_id: str) -> dict[str, Any]:
        found = await self._view(group_id)
        if not found:
            raise IdentityNotFound("no such group", field="group_id")
        return found[0]

    @query("groups")
    async def groups(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return {"items": await self._view()}

    @query("group")
    async def group(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        return await self._one(check.canonical_id(payload["group_id"]))

    @command("create_group")
    async def create_group(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        await self.store.require_admin()
        name: str = payload["name"]
        group_id = str(uuid.uuid4())
        created = gev.GroupCreated(group_id=group_id, name=name)
        await self.store.append(gev.group_stream(group_id), [created], 0)
        return await self._one(group_id)

    async def _change_group(self, group_id: str, decide: Decide) -> None:
        """Read the group, let `decide` return the events, append them at the version read
        (administrators only: checked first, in the same transaction)."""
        await self.store.change(
            "groups",
            group_id,
            gev.group_stream(group_id),
            decide,
            missing=lambda: IdentityNotFound("no such group", field="group_id"),
            busy="the group is being changed by someone else; try again",
            admin=True,
        )

    @command("rename_group")
    async def rename_group(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        group_id = check.canonical_id(payload["group_id"])
        name: str = payload["name"]

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            if row["name"] == name:
                return []
            return [gev.GroupRenamed(group_id=group_id, name=name, old_name=row["name"])]

        await self._change_group(group_id, decide)
        return await self._one(group_id)

    @command("delete_group")
    async def delete_group(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        group_id = check.canonical_id(payload["group_id"])

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            return [gev.GroupDeleted(group_id=group_id, name=row["name"])]

        await self._change_group(group_id, decide)
        return {}

    @command("add_group_member")
    async def add_group_member(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        group_id = check.canonical_id(payload["group_id"])
        user_id = check.canonical_id(payload["user_id"])

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            # KEY SHARE: the user cannot be deleted until this transaction ends
            user = await conn.fetchval(
                "SELECT 1 FROM identity.users WHERE user_id = $1 FOR KEY SHARE", user_id
            )
            if user is None:
                raise IdentityNotFound("no such user", field="user_id")
            member = await _is_member(conn, group_id, user_id)
            return [] if member else [gev.GroupMemberAdded(group_id=group_id, user_id=user_id)]

        await self._change_group(group_id, decide)
        return {}

    @command("remove_group_member")
    async def remove_group_member(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        group_id = check.canonical_id(payload["group_id"])
        user_id = check.canonical_id(payload["user_id"])

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            member = await _is_member(conn, group_id, user_id)
            if not member:
                raise IdentityNotFound("that user is not a member of the group", field="user_id")
            return [gev.GroupMemberRemoved(group_id=group_id, user_id=user_id)]

        await self._change_group(group_id, decide)
        return {}

    # -- invitations -----------------------------------------------------------------------------

    async def _shred_invitation(self, invitation_id: str) -> None:
        await self.store.shred(gev.invitation_subject(invitation_id))

    @command("invite")
    async def invite(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        await self.store.require_admin()
        email = check.email(payload["email"])
        is_admin = bool(payload.get("is_admin", False))
        group_ids = check.group_ids(payload.get("groups", []))
        index = self.store.email_index(email)
        taken = await self.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM identity.users WHERE email_index = $1)", index
        )
        if taken:
            raise EmailTaken()
        known = {
            str(r["group_id"])
            for r in await self.pool.fetch(
                "SELECT group_id FROM identity.groups WHERE group_id = ANY($1::uuid[])", group_ids
            )
        }
        for i, gid in enumerate(group_ids):
            if gid not in known:
                raise IdentityNotFound(f"no such group {gid}", field=f"groups.{i}")
        await self.prune()
        invitation_id = str(uuid.uuid4())
        token, digest = new_link_token()
        expires = self.clock() + self.invitation_ttl
        sealed = await self.store.seal_for(gev.invitation_subject(invitation_id), email)
        created = gev.InvitationCreated(
            invitation_id=invitation_id,
            email=sealed,
            email_index=index,
            token_hash=digest,
            expires_at=expires.isoformat(),
            is_admin=is_admin,
            group_ids=group_ids,
        )
        await self.store.append(gev.invitation_stream(invitation_id), [created], 0)
        # recorded first: a mail that fails leaves the invitation, whose link is in the answer
        why_not = await self.mail.send("invitation", email, token, expires.isoformat())
        if why_not is not None:
            log.info("invitation %s was not emailed: %s", invitation_id, why_not)
        return {
            "invitation_id": invitation_id,
            "token": token,
            "expires_at": expires.isoformat(),
            "emailed": why_not is None,
            "email_error": why_not,
        }

    @query("invitations")
    async def invitations(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        await self.store.require_admin()
        rows = await self.pool.fetch(
            "SELECT * FROM identity.invitations WHERE expires_at > $1"
            " ORDER BY created_at, invitation_id",
            self.clock(),
        )
        return {
            "items": [
                {
                    "invitation_id": str(r["invitation_id"]),
                    "email": self.store.plain(r["recipient"]),
                    "is_admin": r["is_admin"],
                    "groups": [str(g) for g in r["group_ids"]],
                    "created_at": r["created_at"].isoformat(),
                    "expires_at": r["expires_at"].isoformat(),
                }
                for r in rows
            ]
        }

    @command("revoke_invitation")
    async def revoke_invitation(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        await self.store.require_admin()
        invitation_id = check.canonical_id(payload["invitation_id"])
        row = await self.pool.fetchrow(
            "SELECT version FROM identity.invitations WHERE invitation_id = $1", invitation_id
        )
        if row is None:
            raise IdentityNotFound("no such pending invitation", field="invitation_id")
        revoked = gev.InvitationRevoked(invitation_id=invitation_id)
        try:
            await self.store.append(gev.invitation_stream(invitation_id), [revoked], row["version"])
        except Changed:
            raise IdentityNotFound("no such pending invitation", field="invitation_id") from None
        await self._shred_invitation(invitation_id)
        return {}

    @command("accept_invitation")
    async def accept_invitation(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        token: str = payload["token"]
        email = check.email(payload["email"])
        row = await self.pool.fetchrow(
            "SELECT * FROM identity.invitations WHERE token_hash = $1", token_hash(token)
        )
        if (
            row is None
            or row["expires_at"] <= self.clock()
            or not tokens_equal(row["recipient_index"], self.store.email_index(email))
        ):
            raise InvitationRefused()
        invitation_id = str(row["invitation_id"])
        user_id = str(uuid.uuid4())
        created = await self.users.new_user(
            payload, user_id, is_admin=row["is_admin"], via="invitation"
        )
        append_on = self.store.append_on

        async def accept(conn: asyncpg.Connection) -> None:
            accepted = gev.InvitationAccepted(invitation_id=invitation_id, user_id=user_id)
            stream = gev.invitation_stream(invitation_id)
            await append_on(conn, stream, [accepted], row["version"])
            await append_on(conn, ev.user_stream(user_id), [created], 0)
            # groups deleted since the invitation was sent are skipped
            for g in await conn.fetch(
                "SELECT group_id FROM identity.groups WHERE group_id = ANY($1::uuid[])"
                " ORDER BY group_id",
                row["group_ids"],
            ):
                gid = str(g["group_id"])
                added = gev.GroupMemberAdded(group_id=gid, user_id=user_id)
                await append_on(conn, gev.group_stream(gid), [added], None)

        try:
            with acting_as(user_id):
                await self.store.write(accept)
        except Changed:
            raise InvitationRefused() from None  # used meanwhile
        await self._shred_invitation(invitation_id)
        log.info("invitation %s accepted: account %s", invitation_id, user_id)
        return {"user_id": user_id}

    # -- password reset --------------------------------------------------------------------------

    async def _new_reset(self, user_id: str | None, *, by_admin: bool) -> tuple[str, str]:
        reset_id = str(uuid.uuid4())
        token, digest = new_link_token()
        expires = (self.clock() + self.reset_ttl).isoformat()
        requested = gev.PasswordResetRequested(
            reset_id=reset_id,
            user_id=user_id,
            token_hash=digest if user_id is not None else None,
            expires_at=expires,
            by_admin=by_admin,
        )
        await self.store.append(gev.reset_stream(reset_id), [requested], 0)
        return token, expires

    @command("request_password_reset")
    async def request_password_reset(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Anonymous: the same answer whether or not the email has an account; limited per
        client address and per email; an event only for an account's email."""
        email = check.email(payload["email"])
        index = self.store.email_index(email)
        if not await self._reset_allowed(context.current().ip, index):
            return {}  # this email was asked for too often: nothing more is done
        row = await self.pool.fetchrow(
            "SELECT user_id, disabled, email, username, display_name FROM identity.users"
            " WHERE email_index = $1",
            index,
        )
        if row is not None and not row["disabled"]:
            token, expires = await self._new_reset(str(row["user_id"]), by_admin=False)
            plain = self.store.plain
            to, name = plain(row["email"]), plain(row["display_name"]) or plain(row["username"])
            assert to is not None
            # not awaited: the answer must not wait on (or tell of) a mail
            self.mail.send_later("password_reset", to, token, expires, name=name)
        return {}

    async def _reset_allowed(self, ip: str | None, index: str) -> bool:
        """Count this request; AddressLimited past the address's limit, False past the
        email's (within the last hour, by the service's clock)."""
        now = self.clock()
        since = now - _RESET_WINDOW
        async with self.pool.acquire() as conn, conn.transaction():
            # one request at a time per email and address: counts cannot be raced past
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"reset:{ip}")
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"reset:{index}")
            by_ip = await conn.fetch(
                "SELECT at FROM identity.reset_requests WHERE ip IS NOT DISTINCT FROM $1"
                " AND at > $2 ORDER BY at DESC LIMIT $3",
                ip,
                since,
                self.reset_ip_limit,
            )
            if len(by_ip) >= self.reset_ip_limit:
                wait = by_ip[-1]["at"] + _RESET_WINDOW - now
                raise AddressLimited(max(1, int(wait.total_seconds()) + 1), what="reset requests")
            by_email = await conn.fetchval(
                "SELECT count(*) FROM identity.reset_requests WHERE email_index = $1 AND at > $2",
                index,
                since,
            )
            await conn.execute(
                "INSERT INTO identity.reset_requests (at, ip, email_index) VALUES ($1, $2, $3)",
                now,
                ip,
                index,
            )
        return int(by_email) < self.reset_email_limit

    @command("create_password_reset")
    async def create_password_reset(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        await self.store.require_admin()
        row = await self.store.require_user(check.canonical_id(payload["user_id"]))
        token, expires = await self._new_reset(str(row["user_id"]), by_admin=True)
        return {"token": token, "expires_at": expires}

    @command("reset_password")
    async def reset_password(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        token: str = payload["token"]
        new: str = payload["new_password"]
        row = await self.pool.fetchrow(
            "SELECT r.reset_id, r.expires_at, u.user_id, u.username, u.email"
            " FROM identity.password_resets r JOIN identity.users u USING (user_id)"
            " WHERE r.token_hash = $1",
            token_hash(token),
        )
        if row is None or row["expires_at"] <= self.clock():
            raise ResetRefused()
        plain = self.store.plain
        check.new_password(new, username=plain(row["username"]), email=plain(row["email"]))
        user_id = str(row["user_id"])
        reset_id = str(row["reset_id"])
        sealed = await self.store.seal(
            user_id, await asyncio.to_thread(self.store.hasher.hash, new)
        )
        append_on = self.store.append_on

        async def use(conn: asyncpg.Connection) -> None:
            live = await conn.fetchval(
                "SELECT 1 FROM identity.password_resets WHERE reset_id = $1 FOR UPDATE", reset_id
            )
            if live is None:
                raise ResetRefused()
            used = gev.PasswordResetUsed(reset_id=reset_id, user_id=user_id)
            await append_on(conn, gev.reset_stream(reset_id), [used], 1)
            # kept_session_id None: every session of the user ends
            changed = ev.PasswordChanged(
                user_id=user_id, password_hash=sealed, kept_session_id=None
            )
            await append_on(conn, ev.user_stream(user_id), [changed], None)

        try:
            await self.store.write(use)
        except Changed:
            raise ResetRefused() from None  # used meanwhile
        log.info("account %s set a new password with reset link %s", user_id, reset_id)
        return {}

    # -- housekeeping ----------------------------------------------------------------------------

    async def prune(self) -> None:
        """Forget expired invitations (destroying the key of their email) and reset links."""
        now = self.clock()
        expired = await self.pool.fetch(
            "SELECT invitation_id FROM identity.invitations WHERE expires_at <= $1", now
        )
        ids = [str(r["invitation_id"]) for r in expired]
        for invitation_id in ids:  # keys first: a crash in between leaves the rows to retry
            await self._shred_invitation(invitation_id)
        if ids:
            await self.pool.execute(
                "DELETE FROM identity.invitations WHERE invitation_id = ANY($1::uuid[])", ids
            )
        await self.pool.execute("DELETE FROM identity.password_resets WHERE expires_at <= $1", now)
        await self.pool.execute(
            "DELETE FROM identity.reset_requests WHERE at <= $1", now - timedelta(days=1)
        )


async def _is_member(conn: asyncpg.Connection, group_id: str, user_id: str) -> bool:
    found = await conn.fetchval(
        "SELECT 1 FROM identity.group_members WHERE group_id = $1 AND user_id = $2",
        group_id,
        user_id,
    )
    return found is not None


# -- read-model steps ---------------------------------------------------------------------------


async def _group_version(conn: asyncpg.Connection, group_id: str, r: RecordedEvent) -> None:
    await conn.execute(
        "UPDATE identity.groups SET version = $2 WHERE group_id = $1", group_id, r.version
    )


async def _group_created(conn: asyncpg.Connection, e: gev.GroupCreated, r: RecordedEvent) -> None:
    await conn.execute(
        "INSERT INTO identity.groups (group_id, name, created_at, version) VALUES ($1, $2, $3, $4)",
        e.group_id,
        e.name,
        r.recorded_at,
        r.version,
    )


async def _group_renamed(conn: asyncpg.Connection, e: gev.GroupRenamed, r: RecordedEvent) -> None:
    await conn.execute(
        "UPDATE identity.groups SET name = $2, version = $3 WHERE group_id = $1",
        e.group_id,
        e.name,
        r.version,
    )


async def _group_deleted(conn: asyncpg.Connection, e: gev.GroupDeleted, r: RecordedEvent) -> None:
    # its memberships go with the row (ON DELETE CASCADE)
    await conn.execute("DELETE FROM identity.groups WHERE group_id = $1", e.group_id)


async def _member_added(
    conn: asyncpg.Connection, e: gev.GroupMemberAdded, r: RecordedEvent
) -> None:
    # A user deleted meanwhile is not added back (their row, and memberships, are gone).
    await conn.execute(
        "INSERT INTO identity.group_members (group_id, user_id, added_at)"
        " SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM identity.users WHERE user_id = $2)"
        " ON CONFLICT DO NOTHING",
        e.group_id,
        e.user_id,
        r.recorded_at,
    )
    await _group_version(conn, e.group_id, r)


async def _member_removed(
    conn: asyncpg.Connection, e: gev.GroupMemberRemoved, r: RecordedEvent
) -> None:
    await conn.execute(
        "DELETE FROM identity.group_members WHERE group_id = $1 AND user_id = $2",
        e.group_id,
        e.user_id,
    )
    await _group_version(conn, e.group_id, r)


async def _invitation_created(
    conn: asyncpg.Connection, e: gev.InvitationCreated, r: RecordedEvent
) -> None:
    expires = datetime.fromisoformat(e.expires_at)
    if expires <= utcnow():
        return  # a rebuild need not bring back what nobody can use
    await conn.execute(
        "INSERT INTO identity.invitations (invitation_id, token_hash, recipient_index, recipient,"
        " is_admin, group_ids, created_at, expires_at, version)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        e.invitation_id,
        e.token_hash,
        e.email_index,
        e.email,
        e.is_admin,
        list(e.group_ids),
        r.recorded_at,
        expires,
        r.version,
    )


async def _invitation_done(conn: asyncpg.Connection, e: Any, r: RecordedEvent) -> None:
    await conn.execute("DELETE FROM identity.invitations WHERE invitation_id = $1", e.invitation_id)


async def _reset_requested(
    conn: asyncpg.Connection, e: gev.PasswordResetRequested, r: RecordedEvent
) -> None:
    expires = datetime.fromisoformat(e.expires_at)
    if e.user_id is None or e.token_hash is None or expires <= utcnow():
        return
    await conn.execute(
        "INSERT INTO identity.password_resets (reset_id, token_hash, user_id, created_at,"
        " expires_at) SELECT $1, $2, $3, $4, $5"
        " WHERE EXISTS (SELECT 1 FROM identity.users WHERE user_id = $3)"
        " ON CONFLICT DO NOTHING",
        e.reset_id,
        e.token_hash,
        e.user_id,
        r.recorded_at,
        expires,
    )


async def _reset_used(conn: asyncpg.Connection, e: gev.PasswordResetUsed, r: RecordedEvent) -> None:
    # the new password makes every other link of this user void too
    await conn.execute("DELETE FROM identity.password_resets WHERE user_id = $1", e.user_id)


TABLE = Table(
    categories=frozenset({"group", "invitation", "reset"}),
    steps={
        "GroupCreated": Step(_group_created),
        "GroupRenamed": Step(_group_renamed),
        "GroupDeleted": Step(_group_deleted),
        "GroupMemberAdded": Step(_member_added),
        "GroupMemberRemoved": Step(_member_removed),
        "InvitationCreated": Step(_invitation_created),
        "InvitationAccepted": Step(_invitation_done),
        "InvitationRevoked": Step(_invitation_done),
        "PasswordResetRequested": Step(_reset_requested),
        "PasswordResetUsed": Step(_reset_used),
    },
)
