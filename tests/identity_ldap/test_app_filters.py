"""The LDAP settings of well-known directory-backed apps, against the identity service's real
LDAP endpoint (its bus, Postgres, ldap3 over TCP on loopback); and the per-address limit on
connections, so one app cannot take every connection.

Each app's filters are written down as the app (or its documentation) has them, with the login
name put in where the app puts it. Each must find the right user, with the attributes the app
reads, the right groups, and tell administrators from the rest.

The people: root (platform admin, not allowed to the app), alice (admin, group media), bob
(group media), carol (allowed by name, group family), dave (group family, not allowed).
App "cloud" is open to group media and to carol.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.identity.kit import Identity, running_identity

with warnings.catch_warnings():
    # ldap3 2.9.1 imports names pyasn1 marks deprecated; the warning is theirs, not ours
    warnings.simplefilter("ignore", DeprecationWarning)
    import ldap3

T = TypeVar("T")

BASE = "dc=homeport,dc=local"
CLOUD = f"ou=cloud,{BASE}"
USERS = f"ou=users,{CLOUD}"
GROUPS = f"ou=groups,{CLOUD}"
ADMINS = f"cn=admins,{GROUPS}"
MEDIA = f"cn=media,{GROUPS}"
FAMILY = f"cn=family,{GROUPS}"
PER_ADDRESS = 3

PEOPLE = {
    "alice": {"email": "alice@example.test", "display_name": "Alice Liddell", "is_admin": True},
    "bob": {"email": "bob@example.test", "display_name": "Bob Builder"},
    "carol": {"email": "carol@example.test"},
    "dave": {"email": "dave@example.test", "display_name": "Dave D"},
}
ALLOWED = ["alice", "bob", "carol"]


def pw(name: str) -> str:
    return f"the password of {name}"


def user(name: str) -> str:
    return f"uid={name},{USERS}"


@dataclass
class World:
    ident: Identity
    port: int
    app_password: str
    ids: dict[str, str]


@pytest.fixture
async def world(monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path) -> Any:
    env = {
        "HP_LDAP_HOST": "127.0.0.1",
        "HP_LDAP_PORT": "0",
        "HP_LDAP_MAX_CONNECTIONS_PER_ADDRESS": str(PER_ADDRESS),
    }
    async with running_identity(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, env=env
    ) as ident:
        admin = await ident.set_up()
        ids: dict[str, str] = {}
        for name, extra in PEOPLE.items():
            reply = await ident.cmd(
                "create_user", {"username": name, "password": pw(name), **extra}, actor=admin
            )
            ids[name] = reply["user_id"]
        groups = {}
        for group, members in (("media", ["alice", "bob"]), ("family", ["carol", "dave"])):
            made = await ident.cmd("create_group", {"name": group}, actor=admin)
            groups[group] = made["group_id"]
            for m in members:
                await ident.cmd(
                    "add_group_member",
                    {"group_id": made["group_id"], "user_id": ids[m]},
                    actor=admin,
                )
        access = {"all_users": False, "user_ids": [ids["carol"]], "groups": ["media"]}
        app = await ident.cmd(
            "ldap_register_app", {"app_id": "cloud", "access": access}, actor="system"
        )
        yield World(ident, int(app["port"]), str(app["password"]), ids)


async def in_thread(fn: Callable[[], T]) -> T:
    """ldap3's sync strategy blocks: run it beside the loop that serves it."""
    return await asyncio.wait_for(asyncio.to_thread(fn), 60)


def connection(port: int, who: str = "", password: str = "", source: str = "") -> Any:
    server = ldap3.Server("127.0.0.1", port=port, get_info=ldap3.NONE, connect_timeout=5)
    return ldap3.Connection(
        server,
        user=who or None,
        password=password or None,
        receive_timeout=5,
        raise_exceptions=False,
        return_empty_attributes=False,
        source_address=source or None,
    )


class App:
    """What an app does over LDAP: bind as its service account, search, bind as the user."""

    def __init__(self, world: World) -> None:
        self.port = world.port
        self.conn = connection(world.port, f"cn=cloud,ou=apps,{BASE}", world.app_password)
        assert self.conn.bind(), self.conn.result

    def search(
        self, base: str, flt: str, attributes: Any = None, scope: Any = ldap3.SUBTREE
    ) -> dict[str, dict[str, list[str]]]:
        ok = self.conn.search(base, flt, scope, attributes=attributes or [])
        assert ok or self.conn.result["result"] == 0, (flt, self.conn.result)
        return {
            r["dn"]: {k: [v.decode() for v in vs] for k, vs in r["raw_attributes"].items()}
            for r in self.conn.response or []
            if r["type"] == "searchResEntry"
        }

    def found(self, base: str, flt: str, scope: Any = ldap3.SUBTREE) -> list[str]:
        return sorted(self.search(base, flt, scope=scope))

    def matches(self, dn: str, flt: str) -> bool:
        """How apps check an admin filter: a base search of the user's entry with it."""
        return bool(self.search(dn, flt, scope=ldap3.BASE))

    def login(self, dn: str, password: str) -> bool:
        conn = connection(self.port, dn, password)
        try:
            return bool(conn.bind())
        finally:
            conn.unbind()

    def close(self) -> None:
        self.conn.unbind()


def lower(attrs: dict[str, list[str]]) -> dict[str, list[str]]:
    return {k.lower(): v for k, v in attrs.items()}


async def run_as_app(world: World, fn: Callable[[App], None]) -> None:
    def go() -> None:
        app = App(world)
        try:
            fn(app)
        finally:
            app.close()

    await in_thread(go)


async def test_nextcloud(world: World) -> None:
    """Nextcloud user_ldap, its wizard's filters for an OpenLDAP-style server, and the
    groupOfUniqueNames/uniqueMember association some setups choose."""

    def check(app: App) -> None:
        assert app.found(USERS, "(|(objectclass=inetOrgPerson))") == sorted(map(user, ALLOWED))
        login = "(&(|(objectclass=inetOrgPerson))(|(uid={0})(|(mailPrimaryAddress={0})(mail={0}))))"
        for given in ("bob", "bob@example.test", "BOB"):
            assert app.found(BASE, login.format(given)) == [user("bob")], given
        assert app.found(BASE, login.format("dave")) == []  # not allowed to this app
        wanted = ["dn", "uid", "samaccountname", "memberof", "mail", "displayname",
                  "jpegphoto", "thumbnailphoto", "entryuuid", "gidnumber"]  # fmt: skip
        bob = lower(app.search(user("bob"), "(objectclass=*)", wanted, ldap3.BASE)[user("bob")])
        assert bob["uid"] == ["bob"] and bob["samaccountname"] == ["bob"]
        assert bob["displayname"] == ["Bob Builder"] and bob["mail"] == ["bob@example.test"]
        assert bob["memberof"] == [MEDIA] and bob["entryuuid"] == [world.ids["bob"]]
        assert app.found(GROUPS, "(&(|(objectclass=groupOfNames)))") == sorted(
            [ADMINS, FAMILY, MEDIA]
        )
        assert app.found(GROUPS, f"(&(objectclass=groupOfNames)(member={user('bob')}))") == [MEDIA]
        assert app.found(
            GROUPS, f"(&(objectclass=groupOfUniqueNames)(uniqueMember={user('alice')}))"
        ) == sorted([ADMINS, MEDIA])
        assert app.login(user("bob"), pw("bob")) and not app.login(user("bob"), "wrong")

    await run_as_app(world, check)


async def test_gitea_and_forgejo(world: World) -> None:
    """Gitea's (and Forgejo's) "LDAP (via BindDN)" source: the user filter and admin filter of
    its documentation, the Active Directory user filter, and group sync over memberUid."""

    def check(app: App) -> None:
        flt = "(&(objectClass=posixAccount)(|(uid=%[1]s)(mail=%[1]s)))"
        for given in ("alice", "alice@example.test"):
            found = app.search(
                USERS, flt.replace("%[1]s", given), ["uid", "givenName", "sn", "mail"]
            )
            assert list(found) == [user("alice")]
            a = lower(found[user("alice")])
            assert a == {
                "uid": ["alice"], "givenname": ["Alice"], "sn": ["Liddell"],
                "mail": ["alice@example.test"],
            }  # fmt: skip
        admin_filter = f"(memberOf={ADMINS})"
        assert app.matches(user("alice"), admin_filter)
        assert not app.matches(user("bob"), admin_filter)
        ad = (
            f"(&(objectCategory=Person)(memberOf={MEDIA})(sAMAccountName=%s)"
            "(!(UserAccountControl:1.2.840.113556.1.4.803:=2)))"
        )
        assert app.found(USERS, ad.replace("%s", "bob")) == [user("bob")]
        assert app.found(USERS, ad.replace("%s", "carol")) == []  # not in media
        groups = app.search(GROUPS, "(|(cn=media)(cn=admins))", ["cn", "memberUid"])
        members = {lower(a)["cn"][0]: lower(a).get("memberuid", []) for a in groups.values()}
        assert members == {"admins": ["alice"], "media": ["alice", "bob"]}
        assert app.login(user("alice"), pw("alice"))

    await run_as_app(world, check)


async def test_grafana(world: World) -> None:
    """Grafana's ldap.toml: `search_filter = "(sAMAccountName=%s)"` (one of its suggested
    forms), the RFC 2307 group search `(&(objectClass=posixGroup)(memberUid=%s))` with
    `group_search_filter_user_attribute = "uid"`, and a group mapping of cn=admins to Admin."""

    def check(app: App) -> None:
        attributes = ["givenName", "sn", "sAMAccountName", "memberOf", "mail"]
        found = app.search(CLOUD, "(sAMAccountName=alice)", attributes)
        assert list(found) == [user("alice")]
        a = lower(found[user("alice")])
        assert a["samaccountname"] == ["alice"] and a["mail"] == ["alice@example.test"]
        assert sorted(a["memberof"]) == sorted([ADMINS, MEDIA])  # group_dn -> org_role Admin
        groups = app.found(GROUPS, "(&(objectClass=posixGroup)(memberUid=alice))")
        assert groups == sorted([ADMINS, MEDIA])
        gids = app.search(GROUPS, "(objectClass=posixGroup)", ["cn", "gidNumber"])
        numbers = [int(lower(g)["gidnumber"][0]) for g in gids.values()]
        assert len(set(numbers)) == len(numbers) == 3 and min(numbers) >= 100_000
        assert app.found(GROUPS, "(&(objectClass=posixGroup)(memberUid=carol))") == [FAMILY]
        assert app.login(user("alice"), pw("alice"))

    await run_as_app(world, check)


async def test_jellyfin(world: World) -> None:
    """The Jellyfin LDAP-Auth plugin: search attributes "uid, cn, mail, displayName", a user
    filter of group membership, the login name matched against each search attribute, and an
    admin filter."""

    def check(app: App) -> None:
        search_filter = f"(memberOf={MEDIA})"
        attributes = [a.strip() for a in "uid, cn, mail, displayName".split(",")]
        any_of = "".join(f"({a}={{0}})" for a in attributes)
        login = f"(&{search_filter}(|{any_of}))"
        assert app.found(CLOUD, login.format("Bob Builder")) == [user("bob")]
        assert app.found(CLOUD, login.format("alice")) == [user("alice")]
        assert app.found(CLOUD, login.format("carol")) == []  # allowed, but not in media
        admin_filter = f"(memberOf={ADMINS})"
        assert app.found(USERS, admin_filter) == [user("alice")]
        assert app.login(user("bob"), pw("bob"))

    await run_as_app(world, check)


async def test_mastodon_bookstack_wikijs_and_keycloak(world: World) -> None:
    """Mastodon's LDAP_SEARCH_FILTER `(|(%{uid}=%{email})(%{mail}=%{email}))` (LDAP_UID=uid,
    LDAP_MAIL=mail); BookStack's LDAP_USER_FILTER `(&(uid=${user}))`; Wiki.js's search filter
    `(uid={{username}})`; Keycloak's user searches for vendor "Active Directory" (username
    attribute sAMAccountName, object classes person, organizationalPerson, user) and "Other"
    (uid, inetOrgPerson, organizationalPerson), reading entryUUID."""

    def check(app: App) -> None:
        mastodon = "(|(%{uid}=%{email})(%{mail}=%{email}))"
        flt = mastodon.replace("%{uid}", "uid").replace("%{mail}", "mail")
        assert app.found(BASE, flt.replace("%{email}", "carol@example.test")) == [user("carol")]
        found = app.search(BASE, "(&(uid=bob))", ["uid", "mail", "cn", "memberOf"])  # BookStack
        assert lower(found[user("bob")])["cn"] == ["Bob Builder"]
        assert lower(found[user("bob")])["memberof"] == [MEDIA]
        assert app.found(BASE, "(uid=carol)") == [user("carol")]  # Wiki.js
        ad = "(&(objectclass=person)(objectclass=organizationalPerson)(objectclass=user)"
        found = app.search(USERS, ad + "(sAMAccountName=alice))", ["sAMAccountName", "entryUUID"])
        assert lower(found[user("alice")])["entryuuid"] == [world.ids["alice"]]
        other = "(&(objectclass=inetOrgPerson)(objectclass=organizationalPerson)(uid=carol))"
        assert app.found(USERS, other) == [user("carol")]
        assert app.login(user("carol"), pw("carol"))

    await run_as_app(world, check)


async def test_posix_clients_and_plain_names(world: World) -> None:
    """nslcd/SSSD-style RFC 2307 filters with ordering (`uidNumber>=1000`), the AD names
    `objectCategory=person` and `sAMAccountType`, and apps that name the login attribute
    `username`."""

    def check(app: App) -> None:
        every = sorted(map(user, ALLOWED))
        assert app.found(USERS, "(&(objectClass=posixAccount)(uidNumber>=1000))") == every
        assert app.found(USERS, "(&(objectClass=posixAccount)(uidNumber<=999))") == []
        accounts = app.search(
            USERS, "(objectClass=posixAccount)", ["uid", "uidNumber", "gidNumber", "homeDirectory"]
        )
        uids = {lower(a)["uid"][0]: int(lower(a)["uidnumber"][0]) for a in accounts.values()}
        assert len(set(uids.values())) == 3 and min(uids.values()) >= 100_000
        alice = lower(accounts[user("alice")])
        assert alice["homedirectory"] == ["/home/alice"] and alice["gidnumber"] == ["100"]
        assert app.found(CLOUD, "(objectCategory=person)") == every
        assert app.found(CLOUD, "(&(objectCategory=group)(cn=family))") == [FAMILY]
        assert app.found(CLOUD, "(sAMAccountType=805306368)") == every
        assert app.found(CLOUD, "(username=carol)") == [user("carol")]
        assert app.found(CLOUD, "(&(cn=a*)(cn<=b))") == [ADMINS, user("alice")]

    await run_as_app(world, check)
    # the numbers stay put: a second look gives the same uidNumber
    first: list[str] = []

    def look(app: App) -> None:
        first.append(
            lower(app.search(user("bob"), "(uid=*)", ["uidNumber"], ldap3.BASE)[user("bob")])[
                "uidnumber"
            ][0]
        )

    await run_as_app(world, look)
    await run_as_app(world, look)
    assert len(first) == 2 and first[0] == first[1]


def anonymous_reads_root(conn: Any) -> bool:
    """One round trip on an open connection: the root DSE, which anonymous may read."""
    ok = conn.search("", "(objectClass=*)", ldap3.BASE, attributes=["vendorName"])
    return bool(ok) and conn.result["result"] == 0


async def test_connections_are_limited_per_client_address(world: World) -> None:
    """PER_ADDRESS connections from one address are served; the next is closed at once with a
    notice; the others keep working, another address is served, and a slot freed is reusable."""

    def check() -> None:
        held = [connection(world.port) for _ in range(PER_ADDRESS)]
        for c in held:
            assert c.bind() and anonymous_reads_root(c)
        with socket.create_connection(("127.0.0.1", world.port), timeout=5) as extra:
            extra.settimeout(5)
            notice = b""
            while chunk := extra.recv(4096):
                notice += chunk
        assert b"too many connections from 127.0.0.1" in notice, notice
        assert all(anonymous_reads_root(c) for c in held)
        other = connection(world.port, source="127.0.0.2")
        assert other.bind() and anonymous_reads_root(other)
        other.unbind()
        held.pop().unbind()
        for _ in range(100):  # the server frees the slot once it reads the close
            again = connection(world.port)
            try:
                served = again.bind() and anonymous_reads_root(again)
            except (
                ldap3.core.exceptions.LDAPSessionTerminatedByServerError
            ):  # refused: not freed yet
                served = False
            with contextlib.suppress(ldap3.core.exceptions.LDAPException):
                again.unbind()
            if served:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("a freed slot was not given back")
        for c in held:
            c.unbind()

    await in_thread(check)
