"""What every area of identity shares: the event store with the read model applied inline, the
keyring (sealing, blind indexes), and who may act.

Every change is appended and applied to the read model in one transaction (projections.py),
through `IdentityStore.write`: a taken username, email or group name fails the whole
transaction with a Conflict naming the field; a stream appended to since it was read fails
with `Changed` (decide again); once the transaction commits, the users whose whoami answer it
changed are announced (changes.py) before the command replies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, TypeVar, cast

import asyncpg

from libs.events import context
from libs.events.envelope import RecordedEvent
from libs.events.inline import inline_lock_key
from libs.events.periods import PeriodKeys
from libs.events.projection import Projection
from libs.events.repository import OnDemand, Repository
from libs.events.sealing import Keyring
from libs.events.store import PostgresEventStore
from services.identity import changes
from services.identity import events as ev
from services.identity.addresses import sealed
from services.identity.errors import (
    Changed,
    EmailTaken,
    GroupNameTaken,
    IdentityConflict,
    NoSuchUser,
    NotAdmin,
    NotOwnAccount,
    NotPlatform,
    UsernameTaken,
)
from services.identity.passwords import DEFAULT as DEFAULT_HASHER
from services.identity.passwords import Hasher
from services.identity.validators import USERNAME

__all__ = ["Announce", "Decide", "IdentityStore", "acting_as", "from_address"]

T = TypeVar("T")
Announce = Callable[[changes.Changes], Awaitable[None]]
Decide = Callable[[asyncpg.Connection, asyncpg.Record], Awaitable[list[Any]]]

_RETRIES = 5

# The tables `change` reads a row of, and their key column.
_KEYS = {"users": "user_id", "groups": "group_id"}

# One row whatever happens: whether the actor ($2; NULL: the platform) is an enabled
# administrator, and the row keyed $1 (all NULL when there is none).
_ADMIN_AND_ROW = (
    "SELECT a.hp_actor_admin, t.* FROM (SELECT $2::uuid IS NULL OR coalesce("
    "(SELECT is_admin AND NOT disabled FROM identity.users WHERE user_id = $2), false)"
    " AS hp_actor_admin) a LEFT JOIN identity.{table} t ON t.{column} = $1"
)

_PLAIN_CACHE = 20_000  # unsealed values kept


def _stream(key: str) -> str:
    return key  # identity names its streams itself (events.py, mfa_events.py, ...)


def _version(key: str, events: Sequence[RecordedEvent]) -> int:
    return events[-1].version if events else 0


class IdentityStore:
    """Identity's streams, read model and keyring, shared by every area."""

    def __init__(
        self,
        store: PostgresEventStore,
        keyring: Keyring,
        projection: Projection,
        *,
        announce: Announce | None = None,
        addresses: PeriodKeys | None = None,
        hasher: Hasher = DEFAULT_HASHER,
    ) -> None:
        self.events = store
        self.hasher = hasher  # passwords' argon2id (HP_PASSWORD_MEMORY_KIB)
        self.keyring = keyring
        self.addresses = addresses  # the weeks' keys of client addresses (addresses.py)
        self.projection = projection
        self._announce = announce
        self._plain: OrderedDict[str, str] = OrderedDict()  # sealed -> plaintext, bounded
        self._lock = inline_lock_key(type(projection))
        self.repository: Repository[int] = Repository(
            store,
            _stream,
            _version,
            projection,
            conflict=Changed,
            unique={"username": UsernameTaken, "email": EmailTaken, "groups_name": GroupNameTaken},
        )

    @property
    def pool(self) -> asyncpg.Pool:
        return self.events.pool

    # -- sealing ---------------------------------------------------------------------------

    def name_index(self, username: str) -> str:
        return self.keyring.blind_index("username", username.lower())

    def email_index(self, email: str) -> str:
        return self.keyring.blind_index("email", email.strip().lower())

    async def seal(self, user_id: str, value: str) -> str:
        # the first seal for a user creates their key: a file write, so off the event loop
        return await asyncio.to_thread(self.keyring.seal_for, ev.subject_of(user_id), value)

    async def seal_for(self, subject: str, value: str) -> str:
        return await asyncio.to_thread(self.keyring.seal_for, subject, value)

    def seal_address(self, value: str | None) -> str | None:
        """A client address or browser string for an event: sealed to this week's key."""
        return sealed(self.addresses, value)

    async def shred(self, subject: str) -> None:
        """Destroy `subject`'s key: what it sealed in the log can never be read again."""
        await asyncio.to_thread(self.keyring.destroy_subject, subject)

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
        if len(self._plain) > _PLAIN_CACHE:
            self._plain.popitem(last=False)
        return value

    # -- transactions ----------------------------------------------------------------------

    async def write(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `fn` in one transaction (errors translated); announce what it changed."""
        return await self._announced(self.repository.transaction(fn))

    async def _write_on_demand(self, fn: Callable[[OnDemand], Awaitable[T]]) -> T:
        """`write`, the transaction begun only if `fn` needs one (Repository.on_demand)."""
        return await self._announced(self.repository.on_demand(fn))

    async def _announced(self, writing: Awaitable[T]) -> T:
        """Await `writing`, collecting what it changed; once it committed, announce that."""
        with changes.collecting() as changed:
            result = await writing
        if changed and self._announce is not None:
            await self._announce(changed)
        return result

    async def locked_write(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """`write`, holding the projection lock shared before `fn` takes any row lock (the
        inline append takes it too: taking it first keeps a rebuild from deadlocking us)."""

        async def locked(conn: asyncpg.Connection) -> T:
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", self._lock)
            return await fn(conn)

        return await self.write(locked)

    async def append_on(
        self, conn: asyncpg.Connection, stream: str, new: Sequence[Any], expected: int | None
    ) -> list[RecordedEvent]:
        """Append `new` to `stream` at `expected` and apply it, in the caller's transaction."""
        return await self.repository.append(stream, new, expected, conn=conn)

    async def append(
        self, stream: str, new: Sequence[Any], expected: int | None = None
    ) -> list[RecordedEvent]:
        """Append `new` to `stream` in a transaction of its own."""
        return await self.write(lambda conn: self.append_on(conn, stream, new, expected))

    # -- users and who acts ----------------------------------------------------------------

    async def user_row(self, user_id: str, conn: Any = None) -> asyncpg.Record | None:
        return await (conn or self.pool).fetchrow(
            "SELECT * FROM identity.users WHERE user_id = $1", user_id
        )

    async def user_by_name(self, username: str) -> asyncpg.Record | None:
        """The user a sign-in names (any case); None for a name no account can have."""
        if not USERNAME.fullmatch(username):
            return None
        row: asyncpg.Record | None = await self.pool.fetchrow(
            "SELECT * FROM identity.users WHERE username_index = $1", self.name_index(username)
        )
        return row

    async def change(
        self,
        table: str,
        key: str,
        stream: str,
        decide: Decide,
        *,
        missing: Callable[[], Exception],
        busy: str,
        admin: bool = False,
    ) -> asyncpg.Record:
        """Read the row of `table` (users or groups) whose id is `key` (`missing()` when there
        is none), let `decide` return the events, append them to `stream` at the row's version;
        decide again if it changed meanwhile (`busy` after a few tries). With `admin`, only an
        enabled administrator (or the platform) may: asked in the same query as the row, and
        checked first, so a non-admin learns nothing of the row.

        The row is read on its own (the append checks its version). A decision that queries
        begins the transaction the append then joins; one that does not lets the append and
        its read-model change run as one statement (libs/events/repository.py, OnDemand)."""
        column = _KEYS[table]
        if admin:
            actor = self._actor_for_admin()
            sql = _ADMIN_AND_ROW.format(table=table, column=column)
            args: tuple[Any, ...] = (key, actor)
        else:
            sql = f"SELECT * FROM identity.{table} WHERE {column} = $1"  # noqa: S608 - ours
            args = (key,)

        async def step(od: OnDemand) -> asyncpg.Record:
            row = await od.conn.fetchrow(sql, *args)
            if admin and not row["hp_actor_admin"]:
                raise NotAdmin()
            if row is None or row[column] is None:
                raise missing()
            # the decisions take a connection: OnDemand answers its query methods
            new = await decide(cast(asyncpg.Connection, od), row)
            if new:
                await self.repository.append_decided(od, stream, new, row["version"])
            return row

        for _ in range(_RETRIES):
            try:
                return await self._write_on_demand(step)
            except Changed:
                continue  # the row changed meanwhile: decide again on the new state
        raise IdentityConflict(busy)

    async def change_user(
        self, user_id: str, decide: Decide, *, admin: bool = False
    ) -> asyncpg.Record:
        """`change` of the user's row and stream (`admin`: by an administrator only)."""
        return await self.change(
            "users",
            user_id,
            ev.user_stream(user_id),
            decide,
            missing=NoSuchUser,
            busy="the user is being changed by someone else; try again",
            admin=admin,
        )

    async def require_user(self, user_id: str) -> asyncpg.Record:
        row = await self.user_row(user_id)
        if row is None:
            raise NoSuchUser()
        return row

    @staticmethod
    def _actor_for_admin() -> uuid.UUID | None:
        """The acting user's id for an administrator check (None: the platform itself);
        NotAdmin for an actor that is no user at all."""
        actor = context.current().actor
        if actor == "system":
            return None
        try:
            return uuid.UUID(actor)
        except ValueError:
            raise NotAdmin() from None

    async def require_admin(self, conn: Any = None) -> str:
        """The acting user's id, if they are an enabled administrator (or the platform itself);
        asked on `conn` when given (a command's transaction), else on a pooled connection."""
        actor_id = self._actor_for_admin()
        if actor_id is None:
            return "system"
        admin = await (conn or self.pool).fetchval(
            "SELECT is_admin AND NOT disabled FROM identity.users WHERE user_id = $1", actor_id
        )
        if not admin:
            raise NotAdmin()
        return str(actor_id)

    async def require_self_or_admin(self, user_id: str) -> None:
        """The caller acts on their own account, or is an administrator (or the platform)."""
        if context.current().actor != user_id:
            await self.require_admin()

    @staticmethod
    def require_platform() -> None:
        """Only the platform's own services (actor "system") may do this, no user, not even an
        administrator: the bus lets only a service send "system" (libs/events/bus.py)."""
        if context.current().actor != "system":
            raise NotPlatform()

    def require_self(self, user_id: str) -> None:
        """Only the account's own user (or the platform) may do this, not even an admin."""
        if context.current().actor not in (user_id, "system"):
            raise NotOwnAccount()

    def profile_of(self, row: asyncpg.Record) -> dict[str, Any]:
        """A user as GET /profile shows them."""
        return {
            "user_id": str(row["user_id"]),
            "username": self.plain(row["username"]),
            "email": self.plain(row["email"]),
            "display_name": self.plain(row["display_name"]),
            "is_admin": row["is_admin"],
            "disabled": row["disabled"],
        }


def acting_as(user_id: str) -> AbstractContextManager[context.Context]:
    """Events of a person's own act before they have a session (setup, sign-in, accepting an
    invitation) name that person as the actor, not "anonymous"; the client IP stays."""
    return context.use(dataclasses.replace(context.current(), actor=user_id))


def from_address(ip: str | None) -> AbstractContextManager[context.Context]:
    """A sign-in a service relays for a client (the mail service, for an IMAP login) is
    recorded as coming from the client's address, like the dashboard's: the limits count it,
    its events hold it sealed (meta.ip, `LoginFailed.ip`) and the firewall bans from it."""
    return context.use(dataclasses.replace(context.current(), ip=ip))
