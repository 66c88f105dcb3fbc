"""LDAP service accounts of apps, and the LDAP endpoint's life in the identity service.

The apps service registers an app that uses the `ldap` addon (`ldap_register_app`, as actor
"system"; an administrator may too) and gets its bind DN, base DN and a fresh password: 256
random bits, shown in that reply only. Identity keeps the SHA-256 of it (the password is
random, so a slow hash would add nothing) and compares in constant time. Registering an app
again rotates its password; `ldap_set_app_access` changes who may log in to it;
`ldap_remove_app` ends its account (idempotent, so an uninstall may retry it).

Each app's account is the stream `ldapapp-<app_id>`, applied inline to `identity.ldap_apps`
like every identity event (projections.py). A removed app keeps its row, marked removed and
without credential, so the stream's version is known when the app comes back.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

from libs.events.bus import Bus, Conflict, Invalid, NotFound, Unavailable
from libs.events.envelope import RecordedEvent
from libs.events.errors import ConcurrencyError
from libs.events.registry import REGISTRY
from services.identity.accounts import Accounts, fields
from services.identity.config import IdentityConfig
from services.identity.ldap import AppAccount, Directory, LdapServer
from services.identity.projections import apply_inline, register_handler
from services.identity.tokens import TOKEN_BYTES, token_hash

__all__ = [
    "APP_ID",
    "APP_ROW",
    "CATEGORY",
    "Access",
    "LdapAppAccessChanged",
    "LdapAppRegistered",
    "LdapAppRemoved",
    "LdapEndpoint",
    "access_of",
    "account_of",
    "app_stream",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

APP_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
CATEGORY = "ldapapp"
MAX_USERS = 1000
MAX_GROUPS = 200
_RETRIES = 5


def app_stream(app_id: str) -> str:
    return f"{CATEGORY}-{app_id}"


# -- events -----------------------------------------------------------------------------------


def _who(all_users: bool, user_ids: Sequence[str], group_ids: Sequence[str]) -> str:
    if all_users:
        return "every user"
    return f"{len(user_ids)} user(s) and {len(group_ids)} group(s)"


@REGISTRY.event("LdapAppRegistered")
@dataclass(frozen=True, slots=True)
class LdapAppRegistered:
    app_id: str
    password_hash: str  # SHA-256 hex of the random password; the password is never stored
    all_users: bool
    user_ids: list[str] = field(default_factory=list)
    group_ids: list[str] = field(default_factory=list)
    rotated: bool = False  # registered before: the old password stops working

    def summary(self) -> str:
        what = "password rotated" if self.rotated else "registered"
        who = _who(self.all_users, self.user_ids, self.group_ids)
        return f"LDAP account of app {self.app_id} {what}; open to {who}"


@REGISTRY.event("LdapAppAccessChanged")
@dataclass(frozen=True, slots=True)
class LdapAppAccessChanged:
    app_id: str
    all_users: bool
    user_ids: list[str] = field(default_factory=list)
    group_ids: list[str] = field(default_factory=list)

    def summary(self) -> str:
        who = _who(self.all_users, self.user_ids, self.group_ids)
        return f"LDAP access of app {self.app_id} changed; open to {who}"


@REGISTRY.event("LdapAppRemoved")
@dataclass(frozen=True, slots=True)
class LdapAppRemoved:
    app_id: str

    def summary(self) -> str:
        return f"LDAP account of app {self.app_id} removed"


# -- read model -------------------------------------------------------------------------------


async def _registered(conn: asyncpg.Connection, e: LdapAppRegistered, r: RecordedEvent) -> None:
    # an upsert, so a rebuild over rows that are still there ends in the same state
    await conn.execute(
        "INSERT INTO identity.ldap_apps (app_id, password_hash, all_users, user_ids, group_ids,"
        " registered_at, password_set_at, removed, version)"
        " VALUES ($1, $2, $3, $4::uuid[], $5::uuid[], $6, $6, false, $7)"
        " ON CONFLICT (app_id) DO UPDATE SET password_hash = EXCLUDED.password_hash,"
        " all_users = EXCLUDED.all_users, user_ids = EXCLUDED.user_ids,"
        " group_ids = EXCLUDED.group_ids,"
        " registered_at = CASE WHEN identity.ldap_apps.removed OR NOT $8"
        "   THEN EXCLUDED.registered_at ELSE identity.ldap_apps.registered_at END,"
        " password_set_at = EXCLUDED.password_set_at, removed = false, version = EXCLUDED.version",
        e.app_id,
        e.password_hash,
        e.all_users,
        list(e.user_ids),
        list(e.group_ids),
        r.recorded_at,
        r.version,
        e.rotated,
    )


async def _access_changed(
    conn: asyncpg.Connection, e: LdapAppAccessChanged, r: RecordedEvent
) -> None:
    await conn.execute(
        "UPDATE identity.ldap_apps SET all_users = $2, user_ids = $3::uuid[],"
        " group_ids = $4::uuid[], version = $5 WHERE app_id = $1",
        e.app_id,
        e.all_users,
        list(e.user_ids),
        list(e.group_ids),
        r.version,
    )


async def _removed(conn: asyncpg.Connection, e: LdapAppRemoved, r: RecordedEvent) -> None:
    await conn.execute(
        "UPDATE identity.ldap_apps SET removed = true, password_hash = NULL, all_users = false,"
        " user_ids = '{}', group_ids = '{}', version = $2 WHERE app_id = $1",
        e.app_id,
        r.version,
    )


register_handler("LdapAppRegistered", _registered, category=CATEGORY)
register_handler("LdapAppAccessChanged", _access_changed, category=CATEGORY)
register_handler("LdapAppRemoved", _removed, category=CATEGORY)

# An app's row with the current names of the groups on its access list (a rename applies).
APP_ROW = (
    "SELECT a.*, ARRAY(SELECT g.name FROM identity.groups g WHERE g.group_id = ANY (a.group_ids)"
    " ORDER BY g.name) AS group_names FROM identity.ldap_apps a"
)


def account_of(row: asyncpg.Record) -> AppAccount:
    """An APP_ROW row as the endpoint's AppAccount."""
    return AppAccount(
        app_id=row["app_id"],
        all_users=bool(row["all_users"]),
        user_ids=frozenset(str(u) for u in row["user_ids"]),
        groups=frozenset(row["group_names"]),
    )


# -- reading payloads -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Access:
    """Who may log in to an app: every user, or these users and the members of these groups
    (group ids once resolved; a payload may name a group by id or by name)."""

    all_users: bool = False
    user_ids: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "all_users": self.all_users,
            "user_ids": list(self.user_ids),
            "groups": list(self.groups),
        }

    async def resolve(self, conn: asyncpg.Connection) -> Access:
        """The same access with every user checked and every group as its id; NotFound names
        the first reference that matches nothing."""
        if self.user_ids:
            found = await conn.fetch(
                "SELECT user_id::text FROM identity.users WHERE user_id = ANY ($1::uuid[])",
                list(self.user_ids),
            )
            missing = [u for u in self.user_ids if u not in {r["user_id"] for r in found}]
            if missing:
                raise NotFound(f"no such user: {missing[0]}", field="access.user_ids")
        group_ids: list[str] = []
        for ref in self.groups:
            by_id = _uuid(ref)
            gid = await conn.fetchval(
                "SELECT group_id::text FROM identity.groups WHERE group_id = $1::uuid"
                if by_id
                else "SELECT group_id::text FROM identity.groups WHERE name = $1",
                by_id or ref,
            )
            if gid is None:
                raise NotFound(f"no such group: {ref}", field="access.groups")
            group_ids.append(gid)
        return Access(self.all_users, self.user_ids, tuple(dict.fromkeys(group_ids)))


def _uuid(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _app_id(payload: Mapping[str, Any]) -> str:
    value = payload.get("app_id")
    if not isinstance(value, str) or not APP_ID.fullmatch(value):
        raise Invalid(
            "app_id must be 1 to 63 characters: a lower-case letter or digit, then lower-case"
            " letters, digits or '-'",
            field="app_id",
        )
    return value


def _list(raw: Mapping[str, Any], name: str, most: int) -> list[Any]:
    value = raw.get(name, [])
    if not isinstance(value, list):
        raise Invalid(f"access.{name} must be a list", field=f"access.{name}")
    if len(value) > most:
        raise Invalid(f"access.{name} may hold at most {most} entries", field=f"access.{name}")
    return value


def access_of(payload: Mapping[str, Any]) -> Access:
    """The `access` field of a payload, checked for shape (not yet against the read model)."""
    raw = payload.get("access")
    if not isinstance(raw, dict):
        raise Invalid(
            "access is required: {all_users: bool, user_ids: [...], groups: [...]}", field="access"
        )
    for name in raw:
        if name not in {"all_users", "user_ids", "groups"}:
            raise Invalid(f"unknown field access.{name}", field=f"access.{str(name)[:64]}")
    all_users = raw.get("all_users", False)
    if not isinstance(all_users, bool):
        raise Invalid("access.all_users must be true or false", field="access.all_users")
    user_ids: list[str] = []
    for item in _list(raw, "user_ids", MAX_USERS):
        user_id = _uuid(item)
        if user_id is None:
            raise Invalid("access.user_ids must be user ids (UUIDs)", field="access.user_ids")
        user_ids.append(user_id)
    groups: list[str] = []
    for item in _list(raw, "groups", MAX_GROUPS):
        if not isinstance(item, str) or not item or len(item) > 64:
            raise Invalid("access.groups must be group ids or names", field="access.groups")
        groups.append(item)
    return Access(all_users, tuple(dict.fromkeys(user_ids)), tuple(dict.fromkeys(groups)))


# -- the endpoint -----------------------------------------------------------------------------


class LdapEndpoint:
    """Runs the LDAP server over the identity read model and serves the app-account commands."""

    def __init__(
        self, cfg: IdentityConfig, make_directory: Callable[[Accounts], Directory]
    ) -> None:
        self.cfg = cfg
        self.hosts = tuple(h for h in cfg.ldap_host if h.lower() != "off")
        self.make_directory = make_directory
        self.server: LdapServer | None = None
        self._accounts: Accounts | None = None

    @property
    def accounts(self) -> Accounts:
        if self._accounts is None:
            raise RuntimeError("the LDAP endpoint gets the accounts when the service starts")
        return self._accounts

    # lifecycle

    async def start(self, accounts: Accounts) -> None:
        """Listen on every configured address (none: the endpoint is off)."""
        self._accounts = accounts
        if not self.hosts:
            log.info("ldap endpoint off (HP_LDAP_HOST=off)")
            return
        if len(self.hosts) > 1 and self.cfg.ldap_port == 0:
            raise ValueError(
                "HP_LDAP_PORT is 0 (any free port) but HP_LDAP_HOST names several addresses:"
                " set a fixed port so apps on every address use the same one"
            )
        server = LdapServer(
            self.make_directory(accounts),
            list(self.hosts),
            self.cfg.ldap_port,
            self.cfg.ldap_base_dn,
        )
        await server.start()
        self.server = server
        log.info(
            "ldap endpoint listening on %s port %d, base %s",
            ", ".join(self.hosts),
            server.port,
            server.base_dn,
        )

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.stop()

    async def ready(self) -> bool:
        """Off, or accepting connections on its first address."""
        if not self.hosts:
            return True
        if self.server is None:
            return False
        host = self.hosts[0]
        try:
            async with asyncio.timeout(1.0):
                _, writer = await asyncio.open_connection(host, self.server.port)
                writer.close()
                await writer.wait_closed()
        except (OSError, TimeoutError):
            return False
        return True

    def _require_server(self) -> LdapServer:
        if self.server is None:
            raise Unavailable(
                "the LDAP endpoint is off: set HP_LDAP_HOST for the identity service",
            )
        return self.server

    def register(self, bus: Bus) -> None:
        """The bus contract of the LDAP endpoint."""
        bus.command("ldap_register_app")(self.register_app)
        bus.command("ldap_set_app_access")(self.set_app_access)
        bus.command("ldap_remove_app")(self.remove_app)
        bus.query("ldap_apps")(self.apps)
        bus.query("ldap_endpoint")(self.endpoint)

    # writing

    async def _change(
        self,
        app_id: str,
        decide: Callable[[asyncpg.Connection, asyncpg.Record | None], Awaitable[T]],
    ) -> T:
        """Read the app's row, let `decide` append at the version read; retry on a race."""

        async def step(conn: asyncpg.Connection) -> T:
            row = await conn.fetchrow("SELECT * FROM identity.ldap_apps WHERE app_id = $1", app_id)
            return await decide(conn, row)

        for _ in range(_RETRIES):
            try:
                return await self.accounts.write(step)
            except ConcurrencyError:
                continue
        raise Conflict(f"the LDAP account of app {app_id} is being changed; try again")

    async def register_app(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"app_id", "access"})
        await self.accounts.require_admin()
        app_id = _app_id(payload)
        access = access_of(payload)
        server = self._require_server()
        password = secrets.token_urlsafe(TOKEN_BYTES)

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record | None) -> Access:
            resolved = await access.resolve(conn)
            registered = LdapAppRegistered(
                app_id=app_id,
                password_hash=token_hash(password),
                all_users=resolved.all_users,
                user_ids=list(resolved.user_ids),
                group_ids=list(resolved.groups),
                rotated=row is not None and not row["removed"],
            )
            version = row["version"] if row is not None else 0
            await apply_inline(self.accounts.store, conn, app_stream(app_id), [registered], version)
            return resolved

        resolved = await self._change(app_id, decide)
        return {
            "app_id": app_id,
            "access": resolved.to_dict(),
            "bind_dn": server.app_bind_dn(app_id),
            "base_dn": server.app_base_dn(app_id),
            "users_dn": f"ou=users,{server.app_base_dn(app_id)}",
            "groups_dn": f"ou=groups,{server.app_base_dn(app_id)}",
            "password": password,
            "host": self.hosts[0],
            "port": server.port,
        }

    async def set_app_access(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"app_id", "access"})
        await self.accounts.require_admin()
        app_id = _app_id(payload)
        access = access_of(payload)

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record | None) -> Access:
            if row is None or row["removed"]:
                raise NotFound(f"app {app_id} has no LDAP account", field="app_id")
            resolved = await access.resolve(conn)
            changed = LdapAppAccessChanged(
                app_id, resolved.all_users, list(resolved.user_ids), list(resolved.groups)
            )
            await apply_inline(
                self.accounts.store, conn, app_stream(app_id), [changed], row["version"]
            )
            return resolved

        resolved = await self._change(app_id, decide)
        return {"app_id": app_id, "access": resolved.to_dict()}

    async def remove_app(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, {"app_id"})
        await self.accounts.require_admin()
        app_id = _app_id(payload)

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record | None) -> bool:
            if row is None or row["removed"]:
                return False
            removed = LdapAppRemoved(app_id)
            await apply_inline(
                self.accounts.store, conn, app_stream(app_id), [removed], row["version"]
            )
            return True

        return {"app_id": app_id, "removed": await self._change(app_id, decide)}

    # reading

    async def apps(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, set())
        await self.accounts.require_admin()
        rows = await self.accounts.pool.fetch(f"{APP_ROW} WHERE NOT a.removed ORDER BY a.app_id")
        return {
            "items": [
                {
                    "app_id": r["app_id"],
                    "access": Access(
                        r["all_users"],
                        tuple(str(u) for u in r["user_ids"]),
                        tuple(str(g) for g in r["group_ids"]),
                    ).to_dict(),
                    "group_names": list(r["group_names"]),
                    "registered_at": r["registered_at"].isoformat(),
                    "password_set_at": r["password_set_at"].isoformat(),
                }
                for r in rows
            ]
        }

    async def endpoint(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        fields(payload, set())
        server = self._require_server()
        return {
            "host": self.hosts[0],
            "hosts": list(self.hosts),
            "port": server.port,
            "base_dn": server.base_dn,
        }
