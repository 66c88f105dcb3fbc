"""LDAP service accounts of apps, and the LDAP endpoint's life in the identity service.

The apps service registers an app that uses the `ldap` addon (`ldap_register_app`, as actor
"system"; an administrator may too) and gets its bind DN, base DN and a fresh password: 256
random bits, shown in that reply only. Identity keeps the SHA-256 of it (the password is
random, so a slow hash would add nothing) and compares in constant time. Registering an app
again rotates its password; `ldap_set_app_access` changes who may log in to it;
`ldap_remove_app` ends its account (idempotent, so an uninstall may retry it).

Each app's account is the stream `ldapapp-<app_id>`, applied inline to `identity.ldap_apps`
like every identity event (store.py; the steps are this module's `TABLE`). A removed app keeps
its row, marked removed and without credential, so the stream's version is known when the app
comes back. The endpoint itself is a part of the service (`endpoint`): listening before the bus
serves, stopped after the bus drained.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg

from libs.events.envelope import RecordedEvent
from libs.events.handlers import command, query
from libs.events.registry import REGISTRY
from libs.service.runner import Service
from services.identity import validators as check
from services.identity.config import IdentityConfig
from services.identity.errors import Changed, IdentityConflict, IdentityNotFound, LdapOff
from services.identity.ldap import AppAccount, Directory, LdapServer
from services.identity.readmodel import Step, Table
from services.identity.store import IdentityStore
from services.identity.tokens import TOKEN_BYTES, token_hash

__all__ = [
    "APP_ROW",
    "CATEGORY",
    "TABLE",
    "Access",
    "LdapAppAccessChanged",
    "LdapAppRegistered",
    "LdapAppRemoved",
    "LdapApps",
    "LdapEndpoint",
    "account_of",
    "app_stream",
    "endpoint",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

CATEGORY = "ldapapp"
_RETRIES = 5


def app_stream(app_id: str) -> str:
    return f"{CATEGORY}-{app_id}"


# -- events -----------------------------------------------------------------------------------


def _who(all_users: bool, user_ids: Sequence[str], group_ids: Sequence[str]) -> str:
    if all_users:
        return "every user"
    return f"{len(user_ids)} user(s) and {len(group_ids)} group(s)"


@REGISTRY.event("LdapAppRegistered")
@dataclass(frozen=True, slots=True, kw_only=True)
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
@dataclass(frozen=True, slots=True, kw_only=True)
class LdapAppAccessChanged:
    app_id: str
    all_users: bool
    user_ids: list[str] = field(default_factory=list)
    group_ids: list[str] = field(default_factory=list)

    def summary(self) -> str:
        who = _who(self.all_users, self.user_ids, self.group_ids)
        return f"LDAP access of app {self.app_id} changed; open to {who}"


@REGISTRY.event("LdapAppRemoved")
@dataclass(frozen=True, slots=True, kw_only=True)
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


# -- access lists -----------------------------------------------------------------------------


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
                raise IdentityNotFound(f"no such user: {missing[0]}", field="access.user_ids")
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
                raise IdentityNotFound(f"no such group: {ref}", field="access.groups")
            group_ids.append(gid)
        return Access(self.all_users, self.user_ids, tuple(dict.fromkeys(group_ids)))


def _uuid(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def access_of(payload: Mapping[str, Any]) -> Access:
    """The `access` field of a payload (its shape checked by the contract), with user ids in
    their canonical form; not yet checked against the read model."""
    raw: Mapping[str, Any] = payload["access"]
    user_ids = check.user_ids(raw.get("user_ids", []), "access.user_ids")
    groups: list[str] = raw.get("groups", [])
    return Access(bool(raw.get("all_users", False)), tuple(user_ids), tuple(dict.fromkeys(groups)))


# -- the endpoint -----------------------------------------------------------------------------


class LdapEndpoint:
    """The LDAP server over the identity read model, on every configured address (none: off)."""

    def __init__(self, cfg: IdentityConfig, directory: Directory) -> None:
        self.cfg = cfg
        self.hosts = tuple(h for h in cfg.ldap_host if h.lower() != "off")
        self.directory = directory
        self.server: LdapServer | None = None

    async def start(self) -> None:
        """Listen on every configured address (none: the endpoint is off)."""
        if not self.hosts:
            log.info("ldap endpoint off (HP_LDAP_HOST=off)")
            return
        if len(self.hosts) > 1 and self.cfg.ldap_port == 0:
            raise ValueError(
                "HP_LDAP_PORT is 0 (any free port) but HP_LDAP_HOST names several addresses:"
                " set a fixed port so apps on every address use the same one"
            )
        server = LdapServer(
            self.directory,
            list(self.hosts),
            self.cfg.ldap_port,
            self.cfg.ldap_base_dn,
            max_connections_per_address=self.cfg.ldap_max_connections_per_address,
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
        try:
            async with asyncio.timeout(1.0):
                _, writer = await asyncio.open_connection(self.hosts[0], self.server.port)
                writer.close()
                await writer.wait_closed()
        except (OSError, TimeoutError):
            return False
        return True

    def require_server(self) -> LdapServer:
        if self.server is None:
            raise LdapOff()
        return self.server


@asynccontextmanager
async def endpoint(
    svc: Service, cfg: IdentityConfig, directory: Directory
) -> AsyncIterator[LdapEndpoint]:
    """The LDAP endpoint as a part of `svc`: listening, with its readiness check, until exit."""
    ldap = LdapEndpoint(cfg, directory)
    await ldap.start()
    try:
        svc.add_readiness_check("ldap", ldap.ready)
        yield ldap
    finally:
        await ldap.stop()


class LdapApps:
    """The bus commands and queries of apps' LDAP accounts."""

    def __init__(self, store: IdentityStore, ldap: LdapEndpoint) -> None:
        self.store = store
        self.ldap = ldap

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
                return await self.store.write(step)
            except Changed:
                continue
        raise IdentityConflict(f"the LDAP account of app {app_id} is being changed; try again")

    @command("ldap_register_app")
    async def register_app(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        await self.store.require_admin()
        app_id: str = payload["app_id"]
        access = access_of(payload)
        server = self.ldap.require_server()
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
            await self.store.append_on(conn, app_stream(app_id), [registered], version)
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
            "host": self.ldap.hosts[0],
            "port": server.port,
        }

    @command("ldap_set_app_access")
    async def set_app_access(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        await self.store.require_admin()
        app_id: str = payload["app_id"]
        access = access_of(payload)

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record | None) -> Access:
            if row is None or row["removed"]:
                raise IdentityNotFound(f"app {app_id} has no LDAP account", field="app_id")
            resolved = await access.resolve(conn)
            changed = LdapAppAccessChanged(
                app_id=app_id,
                all_users=resolved.all_users,
                user_ids=list(resolved.user_ids),
                group_ids=list(resolved.groups),
            )
            await self.store.append_on(conn, app_stream(app_id), [changed], row["version"])
            return resolved

        resolved = await self._change(app_id, decide)
        return {"app_id": app_id, "access": resolved.to_dict()}

    @command("ldap_remove_app")
    async def remove_app(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        await self.store.require_admin()
        app_id: str = payload["app_id"]

        async def decide(conn: asyncpg.Connection, row: asyncpg.Record | None) -> bool:
            if row is None or row["removed"]:
                return False
            removed = LdapAppRemoved(app_id=app_id)
            await self.store.append_on(conn, app_stream(app_id), [removed], row["version"])
            return True

        return {"app_id": app_id, "removed": await self._change(app_id, decide)}

    @query("ldap_apps")
    async def apps(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        await self.store.require_admin()
        rows = await self.store.pool.fetch(f"{APP_ROW} WHERE NOT a.removed ORDER BY a.app_id")
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

    @query("ldap_endpoint")
    async def endpoint(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        server = self.ldap.require_server()
        return {
            "host": self.ldap.hosts[0],
            "hosts": list(self.ldap.hosts),
            "port": server.port,
            "base_dn": server.base_dn,
        }


TABLE = Table(
    categories=frozenset({CATEGORY}),
    steps={
        "LdapAppRegistered": Step(_registered),
        "LdapAppAccessChanged": Step(_access_changed),
        "LdapAppRemoved": Step(_removed),
    },
)
