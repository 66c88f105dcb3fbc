"""Groups, invitations and password-reset links: the rules, their read-model steps, the bus verbs.

Like accounts, every change is appended and applied to the read model in one transaction
(projections.apply_inline); the steps below join the identity projection via
`register_handler`. Invitation and reset links follow SECURITY.md "Lessons": 256 random bits
shown once (only the SHA-256 hash is stored), bound to their recipient (the invited email, by
its blind index; the user the link was made for), single use (the use is an event appended at
the version the check read, so of two concurrent uses one fails), and expiring (7 days and
1 hour by default). Every refusal of a link answers the same, so a caller learns nothing about
why. Asking for a reset link answers the same whether or not the email has an account, and does
the same work (one lookup, one appended event).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

import asyncpg

from libs.events.bus import Bus, Conflict, Invalid, NotFound
from libs.events.envelope import RecordedEvent
from libs.events.errors import ConcurrencyError
from services.identity import events as ev
from services.identity import group_events as gev
from services.identity.accounts import (
    EMAIL,
    Accounts,
    acting_as,
    fields,
    flag,
    now,
    text,
    user_id_of,
    uuid_of,
)
from services.identity.passwords import check_password, hash_password
from services.identity.projections import apply_inline, register_handler
from services.identity.tokens import new_link_token, token_hash, tokens_equal

__all__ = [
    "GROUP_NAME",
    "INVITATION_REFUSED",
    "INVITATION_TTL",
    "RESET_REFUSED",
    "RESET_TTL",
    "Groups",
    "register_groups",
]

log = logging.getLogger(__name__)

GROUP_NAME = re.compile(r"[a-z][a-z0-9_-]{1,31}")
# Read when a Groups is made (tests shorten them); SECURITY.md "Lessons" sets the defaults.
INVITATION_TTL = timedelta(days=7)
RESET_TTL = timedelta(hours=1)
MAX_INVITATION_GROUPS = 100
INVITATION_REFUSED = (
    "this invitation is not valid: it was used or revoked, has expired, or was sent to another "
    "email; ask an administrator for a new one"
)
RESET_REFUSED = "this reset link is not valid: it was used or has expired; ask for a new one"
_MAX_TOKEN = 128
_RETRIES = 5

T = TypeVar("T")


def _group_name(payload: Mapping[str, Any]) -> str:
    value = text(
        payload,
        "name",
        max_len=32,
        pattern=GROUP_NAME,
        expect="2 to 32 characters: a lower-case letter, then lower-case letters, digits, '_' "
        "or '-'",
    )
    assert value is not None
    return value


def _group_id(payload: Mapping[str, Any]) -> str:
    return uuid_of(payload, "group_id", "a group id")


def _email(payload: Mapping[str, Any]) -> str:
    value = text(payload, "email", max_len=254, pattern=EMAIL, expect="an email")
    assert value is not None
    return value.strip()


def _token(payload: Mapping[str, Any]) -> str:
    value = text(payload, "token", max_len=_MAX_TOKEN)
    assert value is not None
    return value


def _group_ids(payload: Mapping[str, Any]) -> list[str]:
    raw = payload.get("groups", [])
    if not isinstance(raw, list):
        raise Invalid("groups must be a list of group ids", field="groups")
    if len(raw) > MAX_INVITATION_GROUPS:
        raise Invalid(f"groups must have at most {MAX_INVITATION_GROUPS} items", field="groups")
    out: list[str] = []
    for i, item in enumerate(raw):
        try:
            gid = str(uuid.UUID(item)) if isinstance(item, str) else None
        except ValueError:
            gid = None
        if gid is None:
            raise Invalid(f"groups.{i} must be a group id (a UUID)", field=f"groups.{i}")
        if gid not in out:
            out.append(gid)
    return out


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
    if expires <= now():
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
    if e.user_id is None or e.token_hash is None or expires <= now():
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


register_handler("GroupCreated", _group_created, category="group")
register_handler("GroupRenamed", _group_renamed)
register_handler("GroupDeleted", _group_deleted)
register_handler("GroupMemberAdded", _member_added)
register_handler("GroupMemberRemoved", _member_removed)
register_handler("InvitationCreated", _invitation_created, category="invitation")
register_handler("InvitationAccepted", _invitation_done)
register_handler("InvitationRevoked", _invitation_done)
register_handler("PasswordResetRequested", _reset_requested, category="reset")
register_handler("PasswordResetUsed", _reset_used)


# -- the rules ----------------------------------------------------------------------------------


class Groups:
    """Groups, invitations and reset links, over the stores and keyring of `accounts`."""

    def __init__(
        self,
        accounts: Accounts,
        *,
        invitation_ttl: timedelta | None = None,
        reset_ttl: timedelta | None = None,
    ) -> None:
        self.accounts = accounts
        self.invitation_ttl = invitation_ttl or INVITATION_TTL
        self.reset_ttl = reset_ttl or RESET_TTL

    @property
    def pool(self) -> asyncpg.Pool:
        return self.accounts.pool

    async def _write(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """One transaction (Accounts.write); a taken group name becomes a Conflict naming it."""
        try:
            return await self.accounts.write(fn)
        except asyncpg.UniqueViolationError as e:
            if e.constraint_name == "groups_name_unique":
                raise Conflict("a group with that name exists", field="name") from None
            raise

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
            raise NotFound("no such group", field="group_id")
        return found[0]

    async def groups(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, set())
        return {"items": await self._view()}

    async def group(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"group_id"})
        return await self._one(_group_id(payload))

    async def create_group(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"name"})
        await self.accounts.require_admin()
        name = _group_name(payload)
        group_id = str(uuid.uuid4())
        await self._write(
            lambda conn: apply_inline(
                self.accounts.store,
                conn,
                gev.group_stream(group_id),
                [gev.GroupCreated(group_id, name)],
                0,
            )
        )
        return await self._one(group_id)

    async def _change_group(
        self,
        group_id: str,
        decide: Callable[[asyncpg.Connection, asyncpg.Record], Awaitable[list[Any]]],
    ) -> None:
        """Read the group, let `decide` return the events, append them at the version read."""

        async def step(conn: asyncpg.Connection) -> None:
            row = await conn.fetchrow("SELECT * FROM identity.groups WHERE group_id = $1", group_id)
            if row is None:
                raise NotFound("no such group", field="group_id")
            new = await decide(conn, row)
            if new:
                store = self.accounts.store
                stream = gev.group_stream(group_id)
                await apply_inline(store, conn, stream, new, row["version"])

        for _ in range(_RETRIES):
            try:
                return await self._write(step)
            except ConcurrencyError:
                continue  # the group changed meanwhile: decide again on the new state
        raise Conflict("the group is being changed by someone else; try again")

    async def rename_group(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"group_id", "name"})
        await self.accounts.require_admin()
        group_id = _group_id(payload)
        name = _group_name(payload)

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            if row["name"] == name:
                return []
            return [gev.GroupRenamed(group_id, name, row["name"])]

        await self._change_group(group_id, decide)
        return await self._one(group_id)

    async def delete_group(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"group_id"})
        await self.accounts.require_admin()
        group_id = _group_id(payload)

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            return [gev.GroupDeleted(group_id, row["name"])]

        await self._change_group(group_id, decide)
        return {}

    async def add_group_member(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"group_id", "user_id"})
        await self.accounts.require_admin()
        group_id = _group_id(payload)
        user_id = user_id_of(payload)

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            # KEY SHARE: the user cannot be deleted until this transaction ends
            user = await conn.fetchval(
                "SELECT 1 FROM identity.users WHERE user_id = $1 FOR KEY SHARE", user_id
            )
            if user is None:
                raise NotFound("no such user", field="user_id")
            member = await conn.fetchval(
                "SELECT 1 FROM identity.group_members WHERE group_id = $1 AND user_id = $2",
                group_id,
                user_id,
            )
            return [] if member else [gev.GroupMemberAdded(group_id, user_id)]

        await self._change_group(group_id, decide)
        return {}

    async def remove_group_member(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"group_id", "user_id"})
        await self.accounts.require_admin()
        group_id = _group_id(payload)
        user_id = user_id_of(payload)

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record) -> list[Any]:
            member = await conn.fetchval(
                "SELECT 1 FROM identity.group_members WHERE group_id = $1 AND user_id = $2",
                group_id,
                user_id,
            )
            if member is None:
                raise NotFound("that user is not a member of the group", field="user_id")
            return [gev.GroupMemberRemoved(group_id, user_id)]

        await self._change_group(group_id, decide)
        return {}

    # -- invitations -----------------------------------------------------------------------------

    async def _shred_invitation(self, invitation_id: str) -> None:
        subject = gev.invitation_subject(invitation_id)
        await asyncio.to_thread(self.accounts.keyring.destroy_subject, subject)

    async def invite(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"email", "is_admin", "groups"})
        await self.accounts.require_admin()
        email = _email(payload)
        is_admin = flag(payload, "is_admin")
        group_ids = _group_ids(payload)
        index = self.accounts.email_index(email)
        taken = await self.pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM identity.users WHERE email_index = $1)", index
        )
        if taken:
            raise Conflict("that email belongs to another account", field="email")
        known = {
            str(r["group_id"])
            for r in await self.pool.fetch(
                "SELECT group_id FROM identity.groups WHERE group_id = ANY($1::uuid[])", group_ids
            )
        }
        for i, gid in enumerate(group_ids):
            if gid not in known:
                raise NotFound(f"no such group {gid}", field=f"groups.{i}")
        await self.prune()
        invitation_id = str(uuid.uuid4())
        token, digest = new_link_token()
        expires = now() + self.invitation_ttl
        subject = gev.invitation_subject(invitation_id)
        sealed = await asyncio.to_thread(self.accounts.keyring.seal_for, subject, email)
        created = gev.InvitationCreated(
            invitation_id=invitation_id,
            email=sealed,
            email_index=index,
            token_hash=digest,
            expires_at=expires.isoformat(),
            is_admin=is_admin,
            group_ids=group_ids,
        )
        stream = gev.invitation_stream(invitation_id)
        await self.accounts.append(stream, [created], 0)
        return {"invitation_id": invitation_id, "token": token, "expires_at": expires.isoformat()}

    async def invitations(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, set())
        await self.accounts.require_admin()
        rows = await self.pool.fetch(
            "SELECT * FROM identity.invitations WHERE expires_at > now()"
            " ORDER BY created_at, invitation_id"
        )
        return {
            "items": [
                {
                    "invitation_id": str(r["invitation_id"]),
                    "email": self.accounts.plain(r["recipient"]),
                    "is_admin": r["is_admin"],
                    "groups": [str(g) for g in r["group_ids"]],
                    "created_at": r["created_at"].isoformat(),
                    "expires_at": r["expires_at"].isoformat(),
                }
                for r in rows
            ]
        }

    async def revoke_invitation(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"invitation_id"})
        await self.accounts.require_admin()
        invitation_id = uuid_of(payload, "invitation_id", "an invitation id")
        row = await self.pool.fetchrow(
            "SELECT version FROM identity.invitations WHERE invitation_id = $1", invitation_id
        )
        if row is None:
            raise NotFound("no such pending invitation", field="invitation_id")
        stream = gev.invitation_stream(invitation_id)
        try:
            await self.accounts.append(
                stream, [gev.InvitationRevoked(invitation_id)], row["version"]
            )
        except ConcurrencyError:
            raise NotFound("no such pending invitation", field="invitation_id") from None
        await self._shred_invitation(invitation_id)
        return {}

    async def accept_invitation(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"token", "email", "username", "password", "display_name"})
        token = _token(payload)
        email = _email(payload)
        row = await self.pool.fetchrow(
            "SELECT * FROM identity.invitations WHERE token_hash = $1", token_hash(token)
        )
        if (
            row is None
            or row["expires_at"] <= now()
            or not tokens_equal(row["recipient_index"], self.accounts.email_index(email))
        ):
            raise Invalid(INVITATION_REFUSED, field="token")
        invitation_id = str(row["invitation_id"])
        user_id = str(uuid.uuid4())
        created = await self.accounts._new_user(
            payload, user_id, is_admin=row["is_admin"], via="invitation"
        )
        store = self.accounts.store

        async def accept(conn: asyncpg.Connection) -> None:
            await apply_inline(
                store,
                conn,
                gev.invitation_stream(invitation_id),
                [gev.InvitationAccepted(invitation_id, user_id)],
                row["version"],
            )
            await apply_inline(store, conn, ev.user_stream(user_id), [created], 0)
            # groups deleted since the invitation was sent are skipped
            for g in await conn.fetch(
                "SELECT group_id FROM identity.groups WHERE group_id = ANY($1::uuid[])"
                " ORDER BY group_id",
                row["group_ids"],
            ):
                gid = str(g["group_id"])
                added = gev.GroupMemberAdded(gid, user_id)
                await apply_inline(store, conn, gev.group_stream(gid), [added], None)

        try:
            with acting_as(user_id):
                await self._write(accept)
        except ConcurrencyError:
            raise Invalid(INVITATION_REFUSED, field="token") from None  # used meanwhile
        await self._shred_invitation(invitation_id)
        log.info("invitation %s accepted: account %s", invitation_id, user_id)
        return {"user_id": user_id}

    # -- password reset --------------------------------------------------------------------------

    async def _new_reset(self, user_id: str | None, *, by_admin: bool) -> tuple[str, str]:
        reset_id = str(uuid.uuid4())
        token, digest = new_link_token()
        expires = (now() + self.reset_ttl).isoformat()
        requested = gev.PasswordResetRequested(
            reset_id=reset_id,
            user_id=user_id,
            token_hash=digest if user_id is not None else None,
            expires_at=expires,
            by_admin=by_admin,
        )
        await self.accounts.append(gev.reset_stream(reset_id), [requested], 0)
        return token, expires

    async def request_password_reset(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """Anonymous: the same answer and work whether or not the email has an account."""
        fields(payload, {"email"})
        email = _email(payload)
        row = await self.pool.fetchrow(
            "SELECT user_id, disabled FROM identity.users WHERE email_index = $1",
            self.accounts.email_index(email),
        )
        user_id = str(row["user_id"]) if row is not None and not row["disabled"] else None
        # No mail service yet: the token of a requested link is delivered nowhere (an
        # administrator creates one with create_password_reset instead).
        await self._new_reset(user_id, by_admin=False)
        return {}

    async def create_password_reset(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"user_id"})
        await self.accounts.require_admin()
        row = await self.accounts.require_user(user_id_of(payload))
        token, expires = await self._new_reset(str(row["user_id"]), by_admin=True)
        return {"token": token, "expires_at": expires}

    async def reset_password(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"token", "new_password"})
        token = _token(payload)
        new = payload.get("new_password")
        if not isinstance(new, str):
            raise Invalid("new_password is required (a string)", field="new_password")
        row = await self.pool.fetchrow(
            "SELECT r.reset_id, r.expires_at, u.user_id, u.username, u.email"
            " FROM identity.password_resets r JOIN identity.users u USING (user_id)"
            " WHERE r.token_hash = $1",
            token_hash(token),
        )
        if row is None or row["expires_at"] <= now():
            raise Invalid(RESET_REFUSED, field="token")
        plain = self.accounts.plain
        try:
            check_password(new, username=plain(row["username"]), email=plain(row["email"]))
        except Invalid as e:
            raise Invalid(str(e), field="new_password") from None
        user_id = str(row["user_id"])
        reset_id = str(row["reset_id"])
        sealed = await self.accounts.seal(user_id, await asyncio.to_thread(hash_password, new))
        store = self.accounts.store

        async def use(conn: asyncpg.Connection) -> None:
            live = await conn.fetchval(
                "SELECT 1 FROM identity.password_resets WHERE reset_id = $1 FOR UPDATE", reset_id
            )
            if live is None:
                raise Invalid(RESET_REFUSED, field="token")
            used = gev.PasswordResetUsed(reset_id, user_id)
            await apply_inline(store, conn, gev.reset_stream(reset_id), [used], 1)
            # kept_session_id None: every session of the user ends
            changed = ev.PasswordChanged(user_id, sealed, kept_session_id=None)
            await apply_inline(store, conn, ev.user_stream(user_id), [changed], None)

        try:
            await self._write(use)
        except ConcurrencyError:
            raise Invalid(RESET_REFUSED, field="token") from None  # used meanwhile
        log.info("account %s set a new password with reset link %s", user_id, reset_id)
        return {}

    # -- housekeeping ----------------------------------------------------------------------------

    async def prune(self) -> None:
        """Forget expired invitations (destroying the key of their email) and reset links."""
        expired = await self.pool.fetch(
            "SELECT invitation_id FROM identity.invitations WHERE expires_at <= now()"
        )
        ids = [str(r["invitation_id"]) for r in expired]
        for invitation_id in ids:  # keys first: a crash in between leaves the rows to retry
            await self._shred_invitation(invitation_id)
        if ids:
            await self.pool.execute(
                "DELETE FROM identity.invitations WHERE invitation_id = ANY($1::uuid[])", ids
            )
        await self.pool.execute("DELETE FROM identity.password_resets WHERE expires_at <= now()")


def register_groups(bus: Bus, accounts: Accounts) -> Groups:
    """The bus verbs of groups, invitations and reset links
    (see services/gateway/api/handlers/groups.py)."""
    groups = Groups(accounts)
    commands: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
        "create_group": groups.create_group,
        "rename_group": groups.rename_group,
        "delete_group": groups.delete_group,
        "add_group_member": groups.add_group_member,
        "remove_group_member": groups.remove_group_member,
        "invite": groups.invite,
        "revoke_invitation": groups.revoke_invitation,
        "accept_invitation": groups.accept_invitation,
        "request_password_reset": groups.request_password_reset,
        "create_password_reset": groups.create_password_reset,
        "reset_password": groups.reset_password,
    }
    queries: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
        "groups": groups.groups,
        "group": groups.group,
        "invitations": groups.invitations,
    }
    for verb, fn in commands.items():
        bus.command(verb)(fn)
    for name, fn in queries.items():
        bus.query(name)(fn)
    return groups
