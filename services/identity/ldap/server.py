"""The read-only LDAPv3 endpoint apps log their users in through.

Directory tree, for base `dc=homeport,dc=local`:

    dc=homeport,dc=local
      ou=apps                              (not searchable)
        cn=<app-id>                        an app's service account: bind DN only
      ou=<app-id>                          the app's context: the base DN an app is given
        ou=users   uid=<username>,...      users allowed to that app
        ou=groups  cn=<group>,...          groups, members limited to those users

Every DN a client uses names an app: `cn=<app-id>,ou=apps,<base>` binds with the app's own
credentials; `uid=<user>,ou=users,ou=<app-id>,<base>` binds as a user *through* that app,
and succeeds only if the password is right, the user is enabled and allowed to the app.
Because the app is in the user's DN, a client may check a user's password on a fresh
connection (as most do) and still cannot log in a user the app is not allowed to see.
A bound session (app or user) sees only its app's context; the access list is read again
for every search, so a change to it takes effect on open connections too. Groups are all
listed, their members limited to the app's users. Anonymous sessions may read the root DSE
and nothing else. Each search rebuilds the app's tree from `Directory.users()`/`groups()`:
sized for a household or small team, not for a directory of millions.

Entries carry the names directory-backed apps commonly ask for, besides inetOrgPerson and
groupOfNames: Active Directory's (`sAMAccountName`, `objectCategory=person`/`group`,
`sAMAccountType`, `userAccountControl`), RFC 2307's (posixAccount `uidNumber`/`gidNumber`/
`homeDirectory`, posixGroup `gidNumber`/`memberUid`), groupOfUniqueNames' `uniqueMember` and
a plain `username`. Numbers are derived from ids, so they stay put. The group `cn=admins`
lists the platform's administrators among the app's users (and the members of a real group
of that name), so an app can tell who administers it; membership of it grants no access.

One client address may hold at most `max_connections_per_address` connections, so one app
cannot take every connection of the endpoint; more are closed at once with a notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from services.identity.ldap.ber import BerError, read_frame
from services.identity.ldap.filters import (
    Dn,
    DnError,
    Entry,
    Equality,
    NormDn,
    attribute_type,
    evaluate,
    format_dn,
    normalize,
    parse_dn,
)
from services.identity.ldap.protocol import (
    COMPARE_RESPONSE,
    PAGED_RESULTS,
    SEARCH_RESULT_DONE,
    WHO_AM_I,
    AbandonRequest,
    BindRequest,
    CompareRequest,
    Control,
    ExtendedRequest,
    Message,
    ResultCode,
    Scope,
    SearchRequest,
    UnbindRequest,
    WriteRequest,
    decode_message,
    decode_paged_control,
    encode_bind_response,
    encode_extended_response,
    encode_notice_of_disconnection,
    encode_paged_control,
    encode_result,
    encode_search_entry,
)

__all__ = [
    "ADMINS_GROUP",
    "DEFAULT_BASE_DN",
    "AppAccount",
    "Directory",
    "DirectoryUnavailable",
    "LdapGroup",
    "LdapServer",
    "LdapUser",
    "posix_id",
]

log = logging.getLogger("homeport.identity.ldap")

DEFAULT_BASE_DN = "dc=homeport,dc=local"
_USER_CLASSES = ("top", "person", "organizationalPerson", "inetOrgPerson", "user", "posixAccount")
_GROUP_CLASSES = ("top", "groupOfNames", "groupOfUniqueNames", "group", "posixGroup")
ADMINS_GROUP = "admins"
USERS_GID = 100  # every user's primary (posix) group: "users", as on most Linux systems
_FIRST_ID = 100_000  # uidNumber/gidNumber from 100000 up, clear of local accounts
_ID_SPAN = 2**31 - _FIRST_ID
_AD_USER, _AD_GROUP = "805306368", "268435456"  # sAMAccountType: normal account, group
_AD_NORMAL_ACCOUNT = "512"  # userAccountControl of an enabled account (disabled ones are hidden)
_FEATURES = (
    "1.3.6.1.4.1.4203.1.5.1",  # all operational attributes: "+" (RFC 3673)
    "1.3.6.1.4.1.4203.1.5.3",  # absolute true and false filters: (&) (|) (RFC 4526)
)
_DRAIN_EVERY = 64

T = TypeVar("T")


# --- the port the identity service implements -------------------------------------------------


@dataclass(frozen=True, slots=True)
class LdapUser:
    user_id: str
    username: str
    email: str | None = None
    display_name: str | None = None
    groups: tuple[str, ...] = ()
    disabled: bool = False
    is_admin: bool = False


@dataclass(frozen=True, slots=True)
class LdapGroup:
    name: str
    members: tuple[str, ...] = ()  # usernames


@dataclass(frozen=True, slots=True)
class AppAccount:
    """An app's service account and its access list: every user, or these users and groups."""

    app_id: str
    all_users: bool = False
    user_ids: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()

    def allows(self, user: LdapUser, groups: Iterable[str]) -> bool:
        """Whether an enabled `user`, member of `groups`, may use this app."""
        if user.disabled:
            return False
        return self.all_users or user.user_id in self.user_ids or not self.groups.isdisjoint(groups)


class DirectoryUnavailable(Exception):
    """The read model behind the endpoint cannot answer now (the adapter translates to this)."""


class Directory(Protocol):
    """What the endpoint reads. Implementations spend the same time on an unknown app or user
    as on a wrong password (hash a dummy), so timing does not tell which names exist."""

    async def app_account(self, app_id: str, password: str) -> AppAccount | None:
        """The app's account if `password` is its LDAP credential, else None."""
        ...

    async def app_access(self, app_id: str) -> AppAccount | None:
        """The app's current access list (no credential check), None for an unknown app."""
        ...

    async def check_user_password(self, username: str, password: str) -> LdapUser | None:
        """The user if the password is right and the user is enabled, else None."""
        ...

    async def users(self) -> Sequence[LdapUser]: ...

    async def groups(self) -> Sequence[LdapGroup]: ...


async def _within(seconds: float, aw: Awaitable[T]) -> T:
    """A directory call with a deadline; a late answer counts as the directory being down."""
    try:
        async with asyncio.timeout(seconds):
            return await aw
    except TimeoutError as e:
        raise DirectoryUnavailable(f"the directory did not answer within {seconds}s") from e


# --- the tree one app sees ----------------------------------------------------------------


def _memberships(users: Sequence[LdapUser], groups: Sequence[LdapGroup]) -> dict[str, set[str]]:
    """user_id -> group names, from both sides of the relation (user.groups, group.members)."""
    by_name: dict[str, set[str]] = {}
    for g in groups:
        for member in g.members:
            by_name.setdefault(member, set()).add(g.name)
    return {u.user_id: set(u.groups) | by_name.get(u.username, set()) for u in users}


def posix_id(kind: str, key: str) -> int:
    """A stable uidNumber ("user", user id) or gidNumber ("group", name) from 100000 up."""
    digest = hashlib.sha256(f"{kind}:{key}".encode()).digest()
    return _FIRST_ID + int.from_bytes(digest[:8], "big") % _ID_SPAN


def _names(display_name: str | None) -> tuple[str | None, str | None]:
    """(givenName, sn) when a display name has at least two words."""
    words = (display_name or "").split()
    if len(words) < 2:
        return None, None
    return " ".join(words[:-1]), words[-1]


@dataclass(frozen=True, slots=True)
class _View:
    entries: tuple[Entry, ...]  # parents before children
    by_ndn: dict[NormDn, Entry]


@dataclass(slots=True)
class _Session:
    app_id: str | None = None  # None: anonymous
    bind_dn: str = ""
    user_id: str | None = None  # set when bound as a user through the app


@dataclass(slots=True)
class _Paged:
    key: bytes  # the encoded search request it continues
    entries: list[Entry]
    total: int
    truncated: bool


class LdapServer:
    """Serves the directory over LDAPv3 (plain TCP; put it where app networks reach it)."""

    def __init__(
        self,
        directory: Directory,
        host: str | Sequence[str] = "127.0.0.1",
        port: int = 0,
        base_dn: str = DEFAULT_BASE_DN,
        *,
        idle_timeout: float = 300.0,
        max_message_size: int = 1 << 20,
        max_connections: int = 512,
        max_connections_per_address: int = 32,
        max_paged_searches: int = 8,
        directory_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        try:
            self._base: Dn = parse_dn(base_dn)
        except DnError as e:
            raise ValueError(f"LDAP base DN {base_dn!r} is not a DN: {e}") from e
        if not self._base:
            raise ValueError("LDAP base DN must not be empty (e.g. dc=homeport,dc=local)")
        self._base_ndn = normalize(self._base)
        self.base_dn = format_dn(self._base)
        self.directory = directory
        self.host = host
        self._port = port
        self.idle_timeout = idle_timeout
        self.max_message_size = max_message_size
        self.max_connections = max_connections
        if max_connections_per_address < 1:
            raise ValueError("max_connections_per_address must be at least 1")
        self.max_connections_per_address = max_connections_per_address
        self._per_address: dict[str, int] = {}
        self.max_paged_searches = max_paged_searches
        self.directory_timeout = directory_timeout
        self.stop_timeout = stop_timeout
        self._server: asyncio.Server | None = None
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()

    # DNs an app is configured with

    def app_bind_dn(self, app_id: str) -> str:
        return format_dn(self._app_dn(app_id))

    def app_base_dn(self, app_id: str) -> str:
        return format_dn(self._context(app_id))

    def user_dn(self, app_id: str, username: str) -> str:
        return format_dn((("uid", username), ("ou", "users"), *self._context(app_id)))

    def group_dn(self, app_id: str, name: str) -> str:
        return format_dn((("cn", name), ("ou", "groups"), *self._context(app_id)))

    def _app_dn(self, app_id: str) -> Dn:
        return (("cn", app_id), ("ou", "apps"), *self._base)

    def _context(self, app_id: str) -> Dn:
        return (("ou", app_id), *self._base)

    # lifecycle

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("LDAP server already started")
        self._closing = False
        self._server = await asyncio.start_server(self._accept, self.host, self._port)
        log.info("ldap listening", extra={"host": self.host, "port": self.port})

    async def stop(self) -> None:
        """Stop listening, close every connection and wait for their tasks."""
        self._closing = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.stop_timeout)
            if pending:
                log.warning("ldap connections did not close in time", extra={"n": len(pending)})
        if server is not None:
            await server.wait_closed()

    async def __aenter__(self) -> LdapServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # a plain callback (not a coroutine), so the task is tracked before it can run
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        held = self._per_address.get(address, 0)
        if self._closing or len(self._tasks) >= self.max_connections:
            why = "too many connections"
        elif held >= self.max_connections_per_address:
            why = (
                f"too many connections from {address} (at most {self.max_connections_per_address})"
            )
            log.warning("ldap: refused a connection", extra={"peer": address, "why": why})
        else:
            why = ""
        if why:
            writer.write(encode_notice_of_disconnection(ResultCode.BUSY, why))
            writer.close()
            return
        self._per_address[address] = held + 1
        conn = _Connection(self, reader, writer)
        task = asyncio.get_running_loop().create_task(conn.run())
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            left = self._per_address.get(address, 1) - 1
            if left > 0:
                self._per_address[address] = left
            else:
                self._per_address.pop(address, None)

        task.add_done_callback(done)

    # directory reads

    async def _view(self, app_id: str, session_user: str | None = None) -> _View | None:
        """The entries `app_id` may see now; None if the app is gone or the user lost access."""
        d, limit = self.directory, self.directory_timeout
        app = await _within(limit, d.app_access(app_id))
        if app is None:
            return None
        users = await _within(limit, d.users())
        groups = await _within(limit, d.groups())
        member_of = _memberships(users, groups)
        visible = sorted(
            (u for u in users if app.allows(u, member_of[u.user_id])),
            key=lambda u: (u.username.casefold(), u.user_id),
        )
        if session_user is not None and all(u.user_id != session_user for u in visible):
            return None
        for u in visible:  # for display only: access was decided on the real groups above
            if u.is_admin:
                member_of[u.user_id] = member_of[u.user_id] | {ADMINS_GROUP}
        context = self._context(app_id)
        users_ou = (("ou", "users"), *context)
        groups_ou = (("ou", "groups"), *context)
        group_names = sorted(
            {g.name for g in groups}
            | {n for u in visible for n in member_of[u.user_id]}
            | {ADMINS_GROUP},
            key=str.casefold,
        )
        group_dn = {n: format_dn((("cn", n), *groups_ou)) for n in group_names}
        entries = [
            self._container(self._base),
            self._container(context),
            self._container(users_ou),
            self._container(groups_ou),
        ]
        seen: set[NormDn] = set()
        members: dict[str, list[str]] = {n: [] for n in group_names}
        member_uids: dict[str, list[str]] = {n: [] for n in group_names}
        for u in visible:
            dn: Dn = (("uid", u.username), *users_ou)
            given, sn = _names(u.display_name)
            name = u.display_name or u.username
            entry = Entry.make(
                dn,
                {
                    "objectClass": _USER_CLASSES,
                    "uid": [u.username],
                    "username": [u.username],
                    "sAMAccountName": [u.username],
                    "objectCategory": ["person"],
                    "sAMAccountType": [_AD_USER],
                    "userAccountControl": [_AD_NORMAL_ACCOUNT],
                    "uidNumber": [str(posix_id("user", u.user_id))],
                    "gidNumber": [str(USERS_GID)],
                    "homeDirectory": [f"/home/{u.username}"],
                    "cn": [name],
                    "sn": [sn or name],
                    "givenName": [given] if given else [],
                    "displayName": [name],
                    "mail": [u.email] if u.email else [],
                    "memberOf": [
                        group_dn[n] for n in sorted(member_of[u.user_id], key=str.casefold)
                    ],
                    "entryUUID": [u.user_id],
                    "entryDN": [format_dn(dn)],
                },
            )
            if entry.ndn in seen:
                log.warning("ldap: two users share a DN; serving the first", extra={"dn": entry.dn})
                continue
            seen.add(entry.ndn)
            entries.append(entry)
            for n in member_of[u.user_id]:
                members[n].append(entry.dn)
                member_uids[n].append(u.username)
        for n in group_names:
            dn = (("cn", n), *groups_ou)
            entries.append(
                Entry.make(
                    dn,
                    {
                        "objectClass": _GROUP_CLASSES,
                        "cn": [n],
                        "sAMAccountName": [n],
                        "objectCategory": ["group"],
                        "sAMAccountType": [_AD_GROUP],
                        "gidNumber": [str(posix_id("group", n))],
                        "member": members[n],
                        "uniqueMember": members[n],
                        "memberUid": member_uids[n],
                        "entryDN": [format_dn(dn)],
                    },
                )
            )
        by_ndn: dict[NormDn, Entry] = {}
        for e in entries:
            by_ndn.setdefault(e.ndn, e)
        return _View(tuple(by_ndn.values()), by_ndn)

    def _container(self, dn: Dn) -> Entry:
        t = attribute_type(dn[0][0])
        kind = t.name if t else ""
        classes = {"dc": "domain", "o": "organization"}.get(kind, "organizationalUnit")
        attrs: dict[str, Sequence[str]] = {
            "objectClass": ("top", classes),
            "entryDN": [format_dn(dn)],
        }
        if t is not None:  # a base DN may lead with a type this directory has no schema for
            attrs[t.name] = [dn[0][1]]
        return Entry.make(dn, attrs)

    def _root_dse(self, session: _Session) -> Entry:
        context = self.app_base_dn(session.app_id) if session.app_id else self.base_dn
        return Entry.make(
            (),
            {
                "objectClass": ["top"],
                "namingContexts": [context],
                "supportedLDAPVersion": ["3"],
                "supportedControl": [PAGED_RESULTS],
                "supportedExtension": [WHO_AM_I],
                "supportedFeatures": _FEATURES,
                "vendorName": ["Homeport"],
            },
        )

    def _classify(self, name: str) -> tuple[str, str | None] | None:
        """A bind DN as (app_id, None) for an app account, (app_id, username) for a user."""
        try:
            dn = parse_dn(name)
        except DnError:
            return None
        ndn = normalize(dn)
        k = len(dn) - len(self._base)
        if k <= 0 or ndn[k:] != self._base_ndn:
            return None
        rel = ndn[:k]
        if k == 2 and rel[0][0] == "cn" and rel[1] == ("ou", "apps"):
            return dn[0][1], None
        if k == 3 and rel[0][0] == "uid" and rel[1] == ("ou", "users") and rel[2][0] == "ou":
            return dn[2][1], dn[0][1]
        return None


# --- one client connection ----------------------------------------------------------------


def _select(
    entry: Entry, requested: Sequence[str], types_only: bool
) -> list[tuple[str, tuple[str, ...]]]:
    wanted = [a.strip() for a in requested]
    all_user = not wanted or "*" in wanted
    all_operational = "+" in wanted
    named = {t.name for a in wanted if (t := attribute_type(a)) is not None}
    out: list[tuple[str, tuple[str, ...]]] = []
    for name, values in entry.attributes.items():
        t = attribute_type(name)
        if t is None:
            continue
        if name in named or (all_operational if t.operational else all_user):
            out.append((name, () if types_only else values))
    return out


def _in_scope(ndn: NormDn, base: NormDn, scope: Scope) -> bool:
    if scope is Scope.BASE:
        return ndn == base
    depth = len(ndn) - len(base)
    if depth < 0 or (base and ndn[depth:] != base):
        return False
    if scope is Scope.ONE:
        return depth == 1
    if scope is Scope.CHILDREN:
        return depth >= 1
    return True


class _Connection:
    def __init__(
        self, server: LdapServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.session = _Session()
        self.paged: dict[bytes, _Paged] = {}
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    async def run(self) -> None:
        try:
            await self._loop()
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                self.writer.write(
                    encode_notice_of_disconnection(ResultCode.UNAVAILABLE, "server shutting down")
                )
            raise
        except (ConnectionError, TimeoutError) as e:
            log.info("ldap connection dropped", extra={"peer": self.peer, "error": repr(e)})
        except Exception:
            log.exception("ldap connection failed; closing it", extra={"peer": self.peer})
            with contextlib.suppress(Exception):
                self.writer.write(
                    encode_notice_of_disconnection(ResultCode.OTHER, "internal error")
                )
        finally:
            self.writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self.writer.wait_closed()

    async def _loop(self) -> None:
        srv = self.server
        while True:
            try:
                async with asyncio.timeout(srv.idle_timeout):
                    frame = await read_frame(self.reader, srv.max_message_size)
            except TimeoutError:
                self.writer.write(encode_notice_of_disconnection(ResultCode.OTHER, "idle timeout"))
                return
            except BerError as e:
                await self._protocol_error(str(e))
                return
            if frame is None:
                return
            try:
                msg = decode_message(frame)
            except BerError as e:
                await self._protocol_error(str(e))
                return
            if isinstance(msg.request, UnbindRequest):
                return
            await self._handle(msg)

    async def _protocol_error(self, why: str) -> None:
        log.info("ldap protocol error; closing", extra={"peer": self.peer, "error": why})
        self.writer.write(encode_notice_of_disconnection(ResultCode.PROTOCOL_ERROR, why))
        await self._drain()

    async def _drain(self) -> None:
        async with asyncio.timeout(self.server.idle_timeout):
            await self.writer.drain()

    async def _send(self, data: bytes) -> None:
        self.writer.write(data)
        await self._drain()

    async def _handle(self, msg: Message) -> None:
        req = msg.request
        if isinstance(req, AbandonRequest):
            return  # operations finish before the next is read: nothing to abandon
        unknown = [
            c
            for c in msg.controls
            if c.critical and not (c.oid == PAGED_RESULTS and isinstance(req, SearchRequest))
        ]
        if unknown:
            await self._send(
                self._reply(
                    msg,
                    ResultCode.UNAVAILABLE_CRITICAL_EXTENSION,
                    f"control {unknown[0].oid} is not supported",
                )
            )
            return
        try:
            if isinstance(req, BindRequest):
                await self._send(encode_bind_response(msg.message_id, *await self._bind(req)))
            elif isinstance(req, SearchRequest):
                await self._search(msg, req)
            elif isinstance(req, CompareRequest):
                code, text = await self._compare(req)
                await self._send(encode_result(msg.message_id, COMPARE_RESPONSE, code, text))
            elif isinstance(req, ExtendedRequest):
                await self._send(self._extended(msg.message_id, req))
            else:
                await self._send(
                    self._reply(msg, ResultCode.UNWILLING_TO_PERFORM, "this directory is read-only")
                )
        except DirectoryUnavailable as e:
            log.warning("ldap: directory unavailable", extra={"peer": self.peer, "error": str(e)})
            await self._send(
                self._reply(
                    msg, ResultCode.UNAVAILABLE, "the directory is unavailable; retry later"
                )
            )

    def _reply(self, msg: Message, code: ResultCode, text: str) -> bytes:
        req = msg.request
        if isinstance(req, BindRequest):
            return encode_bind_response(msg.message_id, code, text)
        if isinstance(req, ExtendedRequest):
            return encode_extended_response(msg.message_id, code, text)
        if isinstance(req, CompareRequest):
            return encode_result(msg.message_id, COMPARE_RESPONSE, code, text)
        if isinstance(req, WriteRequest):
            return encode_result(msg.message_id, req.response_tag, code, text)
        return encode_result(msg.message_id, SEARCH_RESULT_DONE, code, text)

    # bind

    async def _bind(self, req: BindRequest) -> tuple[ResultCode, str]:
        self.session = _Session()  # a bind, even a failed one, leaves the connection anonymous
        self.paged.clear()
        if req.version != 3:
            return ResultCode.PROTOCOL_ERROR, "only LDAPv3 is supported"
        if req.password is None:
            return ResultCode.AUTH_METHOD_NOT_SUPPORTED, "only simple bind is supported"
        if not req.password:
            if not req.name:
                return ResultCode.SUCCESS, ""  # anonymous: root DSE only
            return ResultCode.UNWILLING_TO_PERFORM, "unauthenticated bind (DN without password)"
        refused = ResultCode.INVALID_CREDENTIALS, "invalid credentials"
        try:
            password = req.password.decode("utf-8")
        except UnicodeDecodeError:
            return refused
        target = self.server._classify(req.name)
        directory, limit = self.server.directory, self.server.directory_timeout
        if target is None:
            self._refused(req.name, "DN names no app account or app user")
            return refused
        app_id, username = target
        if username is None:
            account = await _within(limit, directory.app_account(app_id, password))
            if account is None:
                self._refused(req.name, "wrong app credentials")
                return refused
            self.session = _Session(app_id, self.server.app_bind_dn(app_id))
            log.info("ldap bind", extra={"peer": self.peer, "bind_dn": req.name})
            return ResultCode.SUCCESS, ""
        # same calls on every path, so timing does not tell a right password from a refusal
        user = await _within(limit, directory.check_user_password(username, password))
        app = await _within(limit, directory.app_access(app_id))
        groups = await _within(limit, directory.groups())
        if user is None or app is None:
            self._refused(req.name, "wrong password, unknown user or unknown app")
            return refused
        if not app.allows(user, _memberships([user], groups)[user.user_id]):
            self._refused(req.name, "user disabled or not allowed to the app")
            return refused
        self.session = _Session(app_id, self.server.user_dn(app_id, user.username), user.user_id)
        log.info("ldap bind", extra={"peer": self.peer, "bind_dn": req.name})
        return ResultCode.SUCCESS, ""

    def _refused(self, bind_dn: str, why: str) -> None:
        log.info("ldap bind refused", extra={"peer": self.peer, "bind_dn": bind_dn, "why": why})

    # search and compare

    async def _visible(self) -> _View | None:
        s = self.session
        if s.app_id is None:
            return None
        return await self.server._view(s.app_id, s.user_id)

    async def _search(self, msg: Message, req: SearchRequest) -> None:
        mid = msg.message_id
        try:
            base = normalize(parse_dn(req.base))
        except DnError as e:
            await self._done(mid, ResultCode.INVALID_DN_SYNTAX, f"base DN: {e}")
            return
        paged = next((c for c in msg.controls if c.oid == PAGED_RESULTS), None)
        if not base and req.scope is Scope.BASE:
            entries: list[Entry] = [self.server._root_dse(self.session)]
        else:
            view = await self._visible()
            if view is None:
                await self._done(mid, ResultCode.INSUFFICIENT_ACCESS_RIGHTS, self._who_may())
                return
            if base not in view.by_ndn:
                await self._done(
                    mid,
                    ResultCode.NO_SUCH_OBJECT,
                    "no such entry",
                    matched=self._matched(view, base),
                )
                return
            entries = [e for e in view.entries if _in_scope(e.ndn, base, req.scope)]
        matches = [e for e in entries if evaluate(req.filter, e) is True]
        truncated = 0 < req.size_limit < len(matches)
        if truncated:
            matches = matches[: req.size_limit]
        if paged is None:
            await self._entries(mid, matches, req)
            code = ResultCode.SIZE_LIMIT_EXCEEDED if truncated else ResultCode.SUCCESS
            await self._done(mid, code)
            return
        await self._paged_search(msg, req, paged, matches, truncated)

    async def _paged_search(
        self,
        msg: Message,
        req: SearchRequest,
        control: Control,
        matches: list[Entry],
        truncated: bool,
    ) -> None:
        mid = msg.message_id
        try:
            size, cookie = decode_paged_control(control.value)
        except BerError as e:
            await self._done(mid, ResultCode.PROTOCOL_ERROR, f"paged results control: {e}")
            return
        if cookie:
            state = self.paged.pop(cookie, None)
            if state is None or state.key != msg.op_bytes:
                await self._done(
                    mid, ResultCode.UNWILLING_TO_PERFORM, "unknown or expired paged results cookie"
                )
                return
            # the pages that follow show no entry the session may no longer see
            still = {e.ndn for e in matches}
            state.entries = [e for e in state.entries if e.ndn in still]
        else:
            state = _Paged(msg.op_bytes, matches, len(matches), truncated)
        if size == 0:  # RFC 2696: a zero size abandons the paged search
            await self._done(mid, ResultCode.SUCCESS, controls=[encode_paged_control(0, b"")])
            return
        page, rest = state.entries[:size], state.entries[size:]
        await self._entries(mid, page, req)
        next_cookie = b""
        if rest:
            next_cookie = secrets.token_bytes(16)
            state.entries = rest
            while len(self.paged) >= self.server.max_paged_searches:
                self.paged.pop(next(iter(self.paged)))
            self.paged[next_cookie] = state
        code = (
            ResultCode.SIZE_LIMIT_EXCEEDED if state.truncated and not rest else ResultCode.SUCCESS
        )
        await self._done(mid, code, controls=[encode_paged_control(state.total, next_cookie)])

    async def _entries(self, mid: int, entries: Sequence[Entry], req: SearchRequest) -> None:
        for k, e in enumerate(entries, 1):
            self.writer.write(
                encode_search_entry(mid, e.dn, _select(e, req.attributes, req.types_only))
            )
            if k % _DRAIN_EVERY == 0:
                await self._drain()

    async def _done(
        self,
        mid: int,
        code: ResultCode,
        text: str = "",
        *,
        matched: str = "",
        controls: Sequence[bytes] = (),
    ) -> None:
        await self._send(
            encode_result(mid, SEARCH_RESULT_DONE, code, text, matched=matched, controls=controls)
        )

    def _who_may(self) -> str:
        if self.session.app_id is None:
            return (
                "bind first as the app's service account "
                f"({self.server.app_bind_dn('<app-id>')}); anonymous may read only the root DSE"
            )
        return "this session's app or user no longer has access; bind again"

    def _matched(self, view: _View, base: NormDn) -> str:
        for k in range(1, len(base)):
            e = view.by_ndn.get(base[k:])
            if e is not None:
                return e.dn
        return ""

    async def _compare(self, req: CompareRequest) -> tuple[ResultCode, str]:
        try:
            ndn = normalize(parse_dn(req.dn))
        except DnError as e:
            return ResultCode.INVALID_DN_SYNTAX, str(e)
        view = await self._visible()
        if view is None:
            return ResultCode.INSUFFICIENT_ACCESS_RIGHTS, self._who_may()
        entry = view.by_ndn.get(ndn)
        if entry is None:
            return ResultCode.NO_SUCH_OBJECT, "no such entry"
        t = attribute_type(req.attribute)
        if t is None:
            return ResultCode.UNDEFINED_ATTRIBUTE_TYPE, f"unknown attribute {req.attribute!r}"
        if not entry.values(t):
            return ResultCode.NO_SUCH_ATTRIBUTE, f"the entry has no {t.name}"
        same = evaluate(Equality(t.name, req.value), entry)
        return (ResultCode.COMPARE_TRUE if same else ResultCode.COMPARE_FALSE), ""

    def _extended(self, mid: int, req: ExtendedRequest) -> bytes:
        if req.name == WHO_AM_I:
            who = f"dn:{self.session.bind_dn}" if self.session.app_id else ""
            return encode_extended_response(mid, ResultCode.SUCCESS, value=who.encode())
        return encode_extended_response(
            mid, ResultCode.PROTOCOL_ERROR, f"extended operation {req.name} is not supported"
        )
