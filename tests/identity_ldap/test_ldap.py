"""The LDAP endpoint over real TCP on loopback, driven by ldap3, ldapsearch and raw bytes."""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import shutil
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import pytest

from services.identity.ldap import (
    AppAccount,
    DirectoryUnavailable,
    LdapGroup,
    LdapServer,
    LdapUser,
)
from services.identity.ldap.ber import decode_one, encode_int, encode_octets, encode_tlv, read_frame
from services.identity.ldap.filters import DnError, format_dn, normalize_dn, parse_dn
from services.identity.ldap.protocol import (
    PAGED_RESULTS,
    BindRequest,
    decode_message,
    encode_control,
)
from tests.support.servers import need_server

with warnings.catch_warnings():
    # ldap3 2.9.1 imports names pyasn1 marks deprecated; the warning is theirs, not ours
    warnings.simplefilter("ignore", DeprecationWarning)
    import ldap3
    from ldap3.core.exceptions import LDAPException

BASE = "dc=homeport,dc=local"
CLOUD = f"ou=cloud,{BASE}"  # app "cloud": groups family + friends
NOTES = f"ou=notes,{BASE}"  # app "notes": alice only, by user id
USERS = f"ou=users,{CLOUD}"
GROUPS = f"ou=groups,{CLOUD}"
CLOUD_DN = f"cn=cloud,ou=apps,{BASE}"
NOTES_DN = f"cn=notes,ou=apps,{BASE}"
FAMILY = f"cn=family,{GROUPS}"

INVALID_CREDENTIALS = 49
INSUFFICIENT_ACCESS = 50
UNWILLING = 53

T = TypeVar("T")


def uid(n: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_DNS, n))


# --- an in-memory Directory: the fixture side of the port ------------------------------------


@dataclass
class MemoryDirectory:
    users_: dict[str, LdapUser]
    passwords: dict[str, str]
    apps: dict[str, tuple[str, AppAccount]]
    groups_: list[LdapGroup]
    calls: list[str] = field(default_factory=list)
    down: bool = False
    slow: float = 0.0

    async def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.down:
            raise DirectoryUnavailable("read model offline")
        await asyncio.sleep(self.slow)

    async def app_account(self, app_id: str, password: str) -> AppAccount | None:
        await self._call("app_account")
        secret, account = self.apps.get(app_id, ("\0unknown", None))
        return account if hmac.compare_digest(secret, password) else None

    async def app_access(self, app_id: str) -> AppAccount | None:
        await self._call("app_access")
        entry = self.apps.get(app_id)
        return entry[1] if entry else None

    async def check_user_password(self, username: str, password: str) -> LdapUser | None:
        await self._call("check_user_password")
        user = self.users_.get(username)
        ok = hmac.compare_digest(self.passwords.get(username, "\0unknown"), password)
        return user if ok and user is not None and not user.disabled else None

    async def users(self) -> Sequence[LdapUser]:
        await self._call("users")
        return list(self.users_.values())

    async def groups(self) -> Sequence[LdapGroup]:
        await self._call("groups")
        return list(self.groups_)


def make_directory() -> MemoryDirectory:
    people = [
        LdapUser(uid("alice"), "alice", "alice@example.test", "Alice Liddell", ("family",)),
        LdapUser(uid("bob"), "bob", "bob@example.test", "Bob", ("family",)),
        LdapUser(uid("carol"), "carol", "carol@example.test", None, ("friends",)),
        LdapUser(uid("dave"), "dave", "dave@example.test", "Dave D", ()),
        LdapUser(uid("erin"), "erin", None, "Erin", ("friends",)),
        LdapUser(uid("frank"), "frank", "frank@example.test", "Frank", ("family",), disabled=True),
        LdapUser(uid("mallory"), "mallory", "mallory@example.test", "Mallory", ("outsiders",)),
    ]
    return MemoryDirectory(
        users_={u.username: u for u in people},
        passwords={u.username: f"pw-{u.username}" for u in people},
        apps={
            "cloud": ("cloud-secret", AppAccount("cloud", groups=frozenset({"family", "friends"}))),
            "notes": ("notes-secret", AppAccount("notes", user_ids=frozenset({uid("alice")}))),
        },
        # bob and dave are in "family" through the group's member list, not their own field
        groups_=[
            LdapGroup("family", ("bob", "dave")),
            LdapGroup("friends", ()),
            LdapGroup("outsiders", ("mallory",)),
        ],
    )


@pytest.fixture
def directory() -> MemoryDirectory:
    return make_directory()


@pytest.fixture
async def server(directory: MemoryDirectory) -> AsyncIterator[LdapServer]:
    srv = LdapServer(directory, "127.0.0.1", 0, BASE, idle_timeout=10.0)
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def in_thread(fn: Callable[[], T]) -> T:
    """ldap3's sync strategy blocks: run it beside the loop that serves it."""
    return await asyncio.wait_for(asyncio.to_thread(fn), 30)


def connect(srv: LdapServer, user: str | None = None, password: str | None = None) -> Any:
    server = ldap3.Server("127.0.0.1", port=srv.port, get_info=ldap3.NONE, connect_timeout=5)
    return ldap3.Connection(
        server,
        user=user,
        password=password,
        receive_timeout=5,
        raise_exceptions=False,
        return_empty_attributes=False,
    )


def bind(srv: LdapServer, user: str = CLOUD_DN, password: str = "cloud-secret") -> Any:
    conn = connect(srv, user, password)
    if not conn.bind():
        conn.unbind()
        raise AssertionError(f"bind as {user} failed: {conn.result}")
    return conn


@contextmanager
def bound(srv: LdapServer, user: str = CLOUD_DN, password: str = "cloud-secret") -> Iterator[Any]:
    """A bound ldap3 connection, unbound (socket closed) on the way out."""
    conn = bind(srv, user, password)
    try:
        yield conn
    finally:
        conn.unbind()


def dns(conn: Any) -> list[str]:
    return [r["dn"] for r in conn.response or [] if r["type"] == "searchResEntry"]


def attrs(conn: Any) -> dict[str, dict[str, Any]]:
    return {
        r["dn"]: dict(r["raw_attributes"])
        for r in conn.response or []
        if r["type"] == "searchResEntry"
    }


# --- app service account ----------------------------------------------------------------------


async def test_app_searches_user_by_object_class_and_uid(server: LdapServer) -> None:
    def run() -> tuple[bool, dict[str, dict[str, Any]]]:
        with bound(server) as c:
            ok = c.search(CLOUD, "(&(objectClass=user)(uid=alice))", attributes=["*", "entryUUID"])
            return ok, attrs(c)

    ok, found = await in_thread(run)
    assert ok
    dn = f"uid=alice,{USERS}"
    assert list(found) == [dn]
    a = {k.lower(): [v.decode() for v in vs] for k, vs in found[dn].items()}
    assert a["uid"] == ["alice"]
    assert a["mail"] == ["alice@example.test"]
    assert a["cn"] == a["displayname"] == ["Alice Liddell"]
    assert (a["givenname"], a["sn"]) == (["Alice"], ["Liddell"])
    assert a["entryuuid"] == [uid("alice")]
    assert a["memberof"] == [FAMILY]
    assert set(a["objectclass"]) >= {"person", "inetOrgPerson", "user"}


async def test_or_filter_on_mail_or_uid_ignores_case(server: LdapServer) -> None:
    def run() -> list[str]:
        with bound(server) as c:
            assert c.search(CLOUD, "(|(mail=BOB@Example.TEST)(uid=nobody))")
            first = dns(c)
            assert c.search(CLOUD, "(|(mail=nobody@example.test)(UID=Bob))")
            return first + dns(c)

    assert await in_thread(run) == [f"uid=bob,{USERS}"] * 2


async def test_member_of_matches_group_dn_in_any_spelling(server: LdapServer) -> None:
    spelled = f"CN=Family, OU=Groups,ou=CLOUD,{BASE.upper()}"

    def run() -> tuple[list[str], list[str], list[str]]:
        with bound(server) as c:
            assert c.search(CLOUD, f"(memberOf={FAMILY})")
            exact = dns(c)
            assert c.search(CLOUD, f"(&(objectClass=person)(memberOf={spelled}))")
            loose = dns(c)
            assert c.search(USERS, f"(memberOf:1.2.840.113556.1.4.1941:={FAMILY})")
            return exact, loose, dns(c)

    family = [f"uid={n},{USERS}" for n in ("alice", "bob", "dave")]  # frank is disabled
    assert await in_thread(run) == (family, family, family)


async def test_groups_list_only_members_the_app_may_see(server: LdapServer) -> None:
    def run() -> dict[str, dict[str, Any]]:
        with bound(server) as c:
            assert c.search(CLOUD, "(objectClass=groupOfNames)", attributes=["cn", "member"])
            return attrs(c)

    found = await in_thread(run)
    admins = f"cn=admins,{GROUPS}"  # the platform's administrators: none among these users
    assert sorted(found) == [admins, FAMILY, f"cn=friends,{GROUPS}", f"cn=outsiders,{GROUPS}"]
    members = {dn: sorted(v.decode() for v in a.get("member", [])) for dn, a in found.items()}
    assert members[admins] == []
    assert members[FAMILY] == [f"uid={n},{USERS}" for n in ("alice", "bob", "dave")]
    assert members[f"cn=friends,{GROUPS}"] == [f"uid={n},{USERS}" for n in ("carol", "erin")]
    assert members[f"cn=outsiders,{GROUPS}"] == []  # mallory is not allowed to cloud


async def test_paged_search_returns_every_user_exactly_once(server: LdapServer) -> None:
    def run() -> tuple[list[str], int, list[int]]:
        with bound(server) as c:
            seen: list[str] = []
            sizes: list[int] = []
            pages = 0
            cookie: bytes | None = None
            while True:
                assert c.search(USERS, "(objectClass=user)", paged_size=2, paged_cookie=cookie)
                pages += 1
                seen += dns(c)
                ctl = c.result["controls"][PAGED_RESULTS]["value"]
                sizes.append(ctl["size"])
                cookie = ctl["cookie"]
                if not cookie:
                    return seen, pages, sizes

    seen, pages, sizes = await in_thread(run)
    assert sorted(seen) == [f"uid={n},{USERS}" for n in ("alice", "bob", "carol", "dave", "erin")]
    assert len(set(seen)) == 5
    assert pages == 3
    assert sizes == [5, 5, 5]


async def test_later_pages_drop_users_who_lost_access(
    server: LdapServer, directory: MemoryDirectory
) -> None:
    conn = await in_thread(lambda: bind(server))
    try:
        await in_thread(lambda: conn.search(USERS, "(objectClass=user)", paged_size=2))
        first = dns(conn)
        cookie = conn.result["controls"][PAGED_RESULTS]["value"]["cookie"]
        secret, account = directory.apps["cloud"]
        directory.apps["cloud"] = (secret, replace(account, groups=frozenset({"family"})))
        rest: list[str] = []
        while cookie:
            await in_thread(
                lambda c=cookie: conn.search(
                    USERS, "(objectClass=user)", paged_size=2, paged_cookie=c
                )
            )
            rest += dns(conn)
            cookie = conn.result["controls"][PAGED_RESULTS]["value"]["cookie"]
        assert first == [f"uid=alice,{USERS}", f"uid=bob,{USERS}"]
        assert rest == [f"uid=dave,{USERS}"]  # carol and erin (friends) are gone
    finally:
        await in_thread(conn.unbind)


async def test_paged_cookie_is_bound_to_its_search_and_session(server: LdapServer) -> None:
    def run() -> tuple[int, int, int]:
        with bound(server) as c:
            assert c.search(USERS, "(objectClass=user)", paged_size=2)
            cookie = c.result["controls"][PAGED_RESULTS]["value"]["cookie"]
            c.search(USERS, "(uid=*)", paged_size=2, paged_cookie=cookie)  # another search
            other = c.result["result"]
            assert c.search(USERS, "(objectClass=user)", paged_size=2)
            cookie = c.result["controls"][PAGED_RESULTS]["value"]["cookie"]
            assert c.rebind(CLOUD_DN, "cloud-secret")  # any bind drops the session's cookies
            c.search(USERS, "(objectClass=user)", paged_size=2, paged_cookie=cookie)
            after_rebind = c.result["result"]
            c.search(USERS, "(objectClass=user)", paged_size=2, paged_cookie=b"forged")
            return other, after_rebind, c.result["result"]

    assert await in_thread(run) == (UNWILLING, UNWILLING, UNWILLING)


async def test_size_limit_and_attribute_selection(server: LdapServer) -> None:
    alice = f"uid=alice,{USERS}"

    def run() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with bound(server) as c:
            c.search(USERS, "(objectClass=user)", size_limit=2)
            out["limited"] = (c.result["result"], len(dns(c)))
            for key, sel in [
                ("none", ["1.1"]),
                ("user", ["*"]),
                ("oper", ["+"]),
                ("named", ["ENTRYUUID", "Mail", "userid", "nosuchattr"]),
            ]:
                assert c.search(alice, "(objectClass=*)", ldap3.BASE, attributes=sel)
                out[key] = {k.lower() for k in attrs(c)[alice]}
            assert c.search(
                alice, "(objectClass=*)", ldap3.BASE, attributes=["mail"], types_only=True
            )
            out["types"] = attrs(c)[alice]
        return out

    out = await in_thread(run)
    assert out["limited"] == (4, 2)  # sizeLimitExceeded after two entries
    assert out["none"] == set()
    assert "mail" in out["user"] and "entryuuid" not in out["user"]
    assert out["oper"] == {"entryuuid", "entrydn"}
    assert out["named"] == {"entryuuid", "mail", "uid"}
    assert list(out["types"]) == ["mail"] and not out["types"]["mail"]


async def test_filter_forms(server: LdapServer) -> None:
    cases = {
        "(uid=a*)": ["alice"],
        "(cn=*li*)": ["alice"],
        "(mail=*@example.test)": ["alice", "bob", "carol", "dave"],
        "(&(uid=*)(!(mail=*)))": ["erin"],
        "(!(uid=alice))": ["bob", "carol", "dave", "erin"],
        "(mail~=ALICE@example.test)": ["alice"],
        "(uid>=C)": ["carol", "dave", "erin"],  # caseIgnoreOrderingMatch
        "(uid<=bob)": ["alice", "bob"],
        "(!(uid<=c))": ["carol", "dave", "erin"],
        "(mail>=d)": ["dave"],  # erin has no mail: her entry is not selected
        "(member>=x)": [],  # DNs have no ordering: Undefined
        "(!(member<=x))": [],  # and Undefined stays Undefined under not
        "(|(member>=x)(uid=bob))": ["bob"],
        "(uidNumber>=100000)": ["alice", "bob", "carol", "dave", "erin"],  # as numbers
        "(uidNumber<=99999)": [],
        "(gidNumber=100)": ["alice", "bob", "carol", "dave", "erin"],
        "(gidNumber=0100)": ["alice", "bob", "carol", "dave", "erin"],  # integerMatch
        "(gidNumber>=x)": [],  # not a number: Undefined
        "(userAccountControl:1.2.840.113556.1.4.803:=512)": [
            "alice",
            "bob",
            "carol",
            "dave",
            "erin",
        ],
        "(!(userAccountControl:1.2.840.113556.1.4.803:=2))": [
            "alice",
            "bob",
            "carol",
            "dave",
            "erin",
        ],
        "(userAccountControl:1.2.840.113556.1.4.804:=3)": [],
        "(nosuchattr=x)": [],
        "(sn=D)": ["dave"],
        f"(entryUUID={uid('carol').upper()})": ["carol"],
    }

    def run() -> dict[str, list[str]]:
        got: dict[str, list[str]] = {}
        with bound(server) as c:
            for flt in cases:
                c.search(USERS, flt, ldap3.LEVEL)
                assert c.result["result"] == 0, (flt, c.result)
                got[flt] = [dn.split(",")[0].removeprefix("uid=") for dn in dns(c)]
        return got

    assert await in_thread(run) == cases


async def test_scopes_and_unknown_bases(server: LdapServer) -> None:
    def run() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with bound(server) as c:
            assert c.search(CLOUD, "(objectClass=*)", ldap3.BASE)
            out["base"] = dns(c)
            assert c.search(CLOUD, "(objectClass=*)", ldap3.LEVEL)
            out["one"] = dns(c)
            assert c.search(BASE, "(uid=alice)", ldap3.SUBTREE)
            out["sub"] = dns(c)
            c.search(f"uid=nobody,{USERS}", "(objectClass=*)")
            out["missing"] = (c.result["result"], c.result["dn"])
            c.search(NOTES, "(objectClass=*)")  # another app's context does not exist here
            out["other_app"] = c.result["result"]
            c.search(f"ou=apps,{BASE}", "(objectClass=*)")
            out["apps"] = c.result["result"]
            c.search("", "(objectClass=*)", ldap3.SUBTREE)  # only the root DSE lives at ""
            out["null_base_subtree"] = c.result["result"]
        return out

    out = await in_thread(run)
    assert out["base"] == [CLOUD]
    assert out["one"] == [USERS, GROUPS]
    assert out["sub"] == [f"uid=alice,{USERS}"]
    assert out["missing"] == (32, USERS)
    assert out["other_app"] == 32
    assert out["apps"] == 32
    assert out["null_base_subtree"] == 32


async def test_each_app_sees_only_its_access_list(server: LdapServer) -> None:
    def run() -> list[str]:
        with bound(server, NOTES_DN, "notes-secret") as c:
            assert c.search(NOTES, "(objectClass=user)")
            return dns(c)

    assert await in_thread(run) == [f"uid=alice,ou=users,{NOTES}"]


async def test_access_change_applies_to_open_connection(
    server: LdapServer, directory: MemoryDirectory
) -> None:
    conn = await in_thread(lambda: bind(server))
    try:
        assert await in_thread(lambda: conn.search(USERS, "(uid=carol)"))
        assert dns(conn) == [f"uid=carol,{USERS}"]
        secret, account = directory.apps["cloud"]
        directory.apps["cloud"] = (secret, replace(account, groups=frozenset({"family"})))
        await in_thread(lambda: conn.search(USERS, "(uid=carol)"))
        assert (conn.result["result"], dns(conn)) == (0, [])
        del directory.apps["cloud"]
        await in_thread(lambda: conn.search(USERS, "(uid=alice)"))
        assert conn.result["result"] == INSUFFICIENT_ACCESS
    finally:
        await in_thread(conn.unbind)


async def test_user_session_ends_when_user_loses_access(
    server: LdapServer, directory: MemoryDirectory
) -> None:
    conn = await in_thread(lambda: bind(server, f"uid=carol,{USERS}", "pw-carol"))
    try:
        await in_thread(lambda: conn.search(USERS, "(uid=carol)"))
        assert (conn.result["result"], dns(conn)) == (0, [f"uid=carol,{USERS}"])
        secret, account = directory.apps["cloud"]
        directory.apps["cloud"] = (secret, replace(account, groups=frozenset({"family"})))
        await in_thread(lambda: conn.search(USERS, "(uid=alice)"))
        assert (conn.result["result"], dns(conn)) == (INSUFFICIENT_ACCESS, [])
    finally:
        await in_thread(conn.unbind)


async def test_app_wrong_password_and_unknown_app(server: LdapServer) -> None:
    def run() -> list[int]:
        codes = []
        for dn, pw in [(CLOUD_DN, "nope"), (f"cn=ghost,ou=apps,{BASE}", "cloud-secret")]:
            c = connect(server, dn, pw)
            assert not c.bind()
            codes.append(c.result["result"])
            c.unbind()
        return codes

    assert await in_thread(run) == [INVALID_CREDENTIALS, INVALID_CREDENTIALS]


# --- user binds through an app ----------------------------------------------------------------


async def test_user_bind_with_right_password(server: LdapServer) -> None:
    def run() -> tuple[str, list[str]]:
        with bound(server, f"uid=alice,{USERS}", "pw-alice") as c:
            who = c.extend.standard.who_am_i()
            assert c.search(USERS, "(uid=alice)", attributes=["mail"])
            return who, dns(c)

    who, found = await in_thread(run)
    assert who == f"dn:uid=alice,{USERS}"
    assert found == [f"uid=alice,{USERS}"]


@pytest.mark.parametrize(
    ("bind_dn", "password"),
    [
        pytest.param(f"uid=alice,{USERS}", "pw-bob", id="wrong-password"),
        pytest.param(f"uid=frank,{USERS}", "pw-frank", id="disabled-user"),
        pytest.param(f"uid=mallory,{USERS}", "pw-mallory", id="not-allowed-to-app"),
        pytest.param(f"uid=bob,ou=users,{NOTES}", "pw-bob", id="not-in-app-access-list"),
        pytest.param(f"uid=nobody,{USERS}", "pw-nobody", id="unknown-user"),
        pytest.param(f"uid=alice,ou=users,ou=ghost,{BASE}", "pw-alice", id="unknown-app"),
    ],
)
async def test_user_bind_refused_alike(
    server: LdapServer, directory: MemoryDirectory, bind_dn: str, password: str
) -> None:
    def run() -> tuple[bool, int, str]:
        c = connect(server, bind_dn, password)
        ok = c.bind()
        who = c.extend.standard.who_am_i()
        c.unbind()
        return ok, c.result["result"], who

    ok, code, who = await in_thread(run)
    assert not ok
    assert code == 0  # the who-am-i after the failed bind: the connection is anonymous
    assert who is None or who == ""
    # every refusal takes the same path through the directory: no name oracle by timing
    assert directory.calls == ["check_user_password", "app_access", "groups"]


async def test_user_bind_without_app_context_is_refused(
    server: LdapServer, directory: MemoryDirectory
) -> None:
    def run() -> list[int]:
        codes = []
        for dn in [f"uid=alice,ou=users,{BASE}", "uid=alice", f"cn=alice,ou=users,{CLOUD}", "x="]:
            c = connect(server, dn, "pw-alice")
            assert not c.bind()
            codes.append(c.result["result"])
            c.unbind()
        return codes

    assert await in_thread(run) == [INVALID_CREDENTIALS] * 4
    assert directory.calls == []


async def test_failed_rebind_leaves_connection_anonymous(server: LdapServer) -> None:
    def run() -> tuple[bool, int]:
        with bound(server) as c:
            assert not c.rebind(f"uid=alice,{USERS}", "wrong")
            c.search(USERS, "(uid=alice)")
            return bool(dns(c)), c.result["result"]

    assert await in_thread(run) == (False, INSUFFICIENT_ACCESS)


# --- anonymous, refusals, writes ----------------------------------------------------------------


async def test_anonymous_reads_root_dse_only(server: LdapServer) -> None:
    def run() -> tuple[dict[str, Any], int, list[str]]:
        srv = ldap3.Server("127.0.0.1", port=server.port, get_info=ldap3.ALL)
        with ldap3.Connection(srv, receive_timeout=5, raise_exceptions=False) as c:
            info = {
                "contexts": list(srv.info.naming_contexts),
                "controls": [ctl[0] for ctl in srv.info.supported_controls],
                "versions": [str(v) for v in srv.info.supported_ldap_versions],
            }
            c.search(CLOUD, "(uid=alice)")
            return info, c.result["result"], dns(c)

    info, code, found = await in_thread(run)
    assert info == {"contexts": [BASE], "controls": [PAGED_RESULTS], "versions": ["3"]}
    assert code == INSUFFICIENT_ACCESS
    assert found == []


async def test_root_dse_names_the_app_context_once_bound(server: LdapServer) -> None:
    def run() -> list[str]:
        with bound(server) as c:
            assert c.search("", "(objectClass=*)", ldap3.BASE, attributes=["namingContexts"])
            return [v.decode() for v in c.response[0]["raw_attributes"]["namingContexts"]]

    assert await in_thread(run) == [CLOUD]


async def test_unauthenticated_and_sasl_binds_refused(server: LdapServer) -> None:
    # ldap3 will not send a DN without a password, so this one goes out as raw bytes
    frames, _ = await _exchange(server, _bind_request(1, f"uid=alice,{USERS}", ""), replies=1)
    assert [_result_code(f) for f in frames] == [(0x61, UNWILLING)]  # unauthenticated bind

    def run() -> int:
        s = ldap3.Server("127.0.0.1", port=server.port, get_info=ldap3.NONE)
        c = ldap3.Connection(
            s,
            authentication=ldap3.SASL,
            sasl_mechanism=ldap3.EXTERNAL,
            receive_timeout=5,
            raise_exceptions=False,
        )
        c.bind()
        c.unbind()
        return int(c.result["result"])

    assert await in_thread(run) == 7  # authMethodNotSupported


async def test_write_operations_unwilling_compare_answers(server: LdapServer) -> None:
    alice = f"uid=alice,{USERS}"

    def run() -> dict[str, Any]:
        with bound(server) as c:
            out: dict[str, Any] = {}
            c.add(f"uid=zed,{USERS}", ["inetOrgPerson"], {"sn": "z", "cn": "z"})
            out["add"] = c.result["result"]
            c.modify(alice, {"mail": [(ldap3.MODIFY_REPLACE, ["x@example.test"])]})
            out["modify"] = c.result["result"]
            c.delete(alice)
            out["delete"] = c.result["result"]
            c.modify_dn(alice, "uid=alicia")
            out["modify_dn"] = c.result["result"]
            c.extend.standard.modify_password(alice, "pw-alice", "new")
            out["passwd"] = c.result["result"]
            out["cmp_true"] = c.compare(alice, "mail", "ALICE@example.test")
            out["cmp_false"] = c.compare(alice, "mail", "bob@example.test")
            c.compare(f"uid=erin,{USERS}", "mail", "x")
            out["cmp_missing"] = c.result["result"]
            assert c.search(alice, "(objectClass=*)", ldap3.BASE, attributes=["mail"])
            out["mail"] = attrs(c)[alice]["mail"]
            return out

    out = await in_thread(run)
    assert [out[k] for k in ("add", "modify", "delete", "modify_dn")] == [UNWILLING] * 4
    assert out["passwd"] == 2  # unknown extended operation: protocolError
    assert out["cmp_true"] is True and out["cmp_false"] is False
    assert out["cmp_missing"] == 16  # noSuchAttribute
    assert out["mail"] == [b"alice@example.test"]


async def test_critical_unknown_control_refused(server: LdapServer) -> None:
    def run() -> int:
        with bound(server) as c:
            c.search(USERS, "(uid=alice)", controls=[("1.2.3.4.5", True, None)])
            return int(c.result["result"])

    assert await in_thread(run) == 12  # unavailableCriticalExtension


async def test_directory_outage_answers_unavailable(
    server: LdapServer, directory: MemoryDirectory
) -> None:
    def run() -> tuple[int, int]:
        with bound(server) as c:
            directory.down = True
            c.search(USERS, "(uid=alice)")
            code = c.result["result"]
            c.rebind(f"uid=alice,{USERS}", "pw-alice")
            return code, c.result["result"]

    assert await in_thread(run) == (52, 52)


async def test_slow_directory_answers_unavailable(directory: MemoryDirectory) -> None:
    srv = LdapServer(directory, "127.0.0.1", 0, BASE, directory_timeout=0.2)
    await srv.start()
    try:

        def run() -> tuple[int, int]:
            with bound(srv) as c:
                directory.slow = 1.0
                c.search(USERS, "(uid=alice)")
                code = c.result["result"]
                directory.slow = 0.0
                c.search(USERS, "(uid=alice)")
                return code, len(dns(c))

        assert await in_thread(run) == (52, 1)
    finally:
        await srv.stop()


def test_bind_message_repr_hides_password() -> None:
    msg = decode_message(_bind_request(7, CLOUD_DN, "hunter2-secret"))
    assert isinstance(msg.request, BindRequest)
    assert msg.request.password == b"hunter2-secret"
    assert "hunter2" not in repr(msg)


# --- malformed input, limits, lifecycle -------------------------------------------------------


def _bind_request(mid: int, name: str, password: str) -> bytes:
    op = encode_tlv(0x60, encode_int(3) + encode_octets(name) + encode_octets(password, 0x80))
    return encode_tlv(0x30, encode_int(mid) + op)


async def _exchange(
    srv: LdapServer, payload: bytes, *, eof: bool = False, replies: int | None = None
) -> tuple[list[bytes], bool]:
    """Send raw bytes; collect the server's messages until it closes (True), has sent
    `replies` messages, or goes quiet (False)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        writer.write(payload)
        if eof:
            writer.write_eof()
        await writer.drain()
        frames: list[bytes] = []
        while True:
            try:
                async with asyncio.timeout(3):
                    frame = await read_frame(reader, 1 << 20)
            except TimeoutError:
                return frames, False
            if frame is None:
                return frames, True
            frames.append(frame)
            if len(frames) == replies:
                return frames, False
    finally:
        writer.close()
        await writer.wait_closed()


def _result_code(frame: bytes) -> tuple[int, int]:
    """(protocolOp tag, resultCode) of a response."""
    _, op = decode_one(frame).children()[:2]
    return op.tag, op.children()[0].as_int()


def _deep_filter_search(depth: int) -> bytes:
    flt = encode_tlv(0x87, b"uid")
    for _ in range(depth):
        flt = encode_tlv(0xA2, flt)
    op = encode_tlv(
        0x63,
        encode_octets(USERS)
        + encode_tlv(0x0A, b"\x02")
        + encode_tlv(0x0A, b"\x00")
        + encode_int(0)
        + encode_int(0)
        + encode_tlv(0x01, b"\x00")
        + flt
        + encode_tlv(0x30),
    )
    return encode_tlv(0x30, encode_int(2) + op)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http"),
        pytest.param(b"\x30\x84\x7f\xff\xff\xff", id="huge-length"),
        pytest.param(b"\x30\x80\x02\x01\x01\x00\x00", id="indefinite-length"),
        pytest.param(b"\x30\x05\x02\x01\x01\x7f\x00", id="unknown-operation"),
        pytest.param(b"\x30\x06\x02\x01\x00\x42\x00\x00", id="message-id-zero"),
        pytest.param(b"\x30\x07\x02\x01\x01\x60\x02\x02\x05", id="inner-length-overrun"),
        pytest.param(_deep_filter_search(200), id="filter-too-deep"),
        pytest.param(b"\x00" * 64, id="zeros"),
    ],
)
async def test_malformed_input_closes_connection_server_keeps_serving(
    server: LdapServer, payload: bytes
) -> None:
    frames, closed = await _exchange(server, payload)
    assert closed, "the server must close a connection that sent malformed bytes"
    for f in frames:  # at most a notice of disconnection, with protocolError
        assert _result_code(f) == (0x78, 2)

    frames, closed = await _exchange(server, _bind_request(1, CLOUD_DN, "cloud-secret"), replies=1)
    assert not closed
    assert [_result_code(f) for f in frames] == [(0x61, 0)]


_TAGS = [0x01, 0x02, 0x04, 0x0A, 0x30, 0x31, 0x42, 0x50, 0x60, 0x63, 0x66, 0x6E, 0x77]
_TAGS += [0x80, 0x81, 0x82, 0x83, 0x84, 0x87, 0x8A, *range(0xA0, 0xAA)]
_VALUES = [b"", b"\x00", b"\xff", b"\x7f\xff\xff\xff\xff", b"\x01" * 9, b"*", b"\xc3", b"uid"]
Node = tuple[int, "list[Node] | bytes"]


def _tree(data: bytes) -> Node:
    t = decode_one(data)
    if t.constructed:
        return t.tag, [_tree(encode_tlv(c.tag, c.as_bytes())) for c in t.children()]
    return t.tag, t.as_bytes()


def _encode(node: Node) -> bytes:
    tag, v = node
    return encode_tlv(tag, v if isinstance(v, bytes) else b"".join(_encode(c) for c in v))


def _mutate(node: Node, rng: random.Random) -> Node:
    """One structural change somewhere in the tree; lengths stay consistent."""
    tag, v = node
    if isinstance(v, list) and v and rng.random() < 0.75:
        k = rng.randrange(len(v))
        kids = list(v)
        op = rng.randrange(6)
        if op == 0:
            del kids[k]
        elif op == 1:
            kids.insert(k, kids[k])
        else:
            kids[k] = _mutate(kids[k], rng)
        return tag, kids
    op = rng.randrange(3)
    if op == 0:
        return rng.choice(_TAGS), v
    if op == 1:
        return tag, rng.choice(_VALUES)
    return tag, [(rng.choice(_TAGS), rng.choice(_VALUES))]


def _seed_messages() -> list[bytes]:
    def msg(op: bytes, controls: bytes = b"") -> bytes:
        return encode_tlv(0x30, encode_int(5) + op + controls)

    def ava(tag: int, a: str, v: str) -> bytes:
        return encode_tlv(tag, encode_octets(a) + encode_octets(v))

    substrings = encode_tlv(
        0xA4,
        encode_octets("cn")
        + encode_tlv(
            0x30, encode_octets("a", 0x80) + encode_octets("l", 0x81) + encode_octets("e", 0x82)
        ),
    )
    extensible = encode_tlv(
        0xA9,
        encode_octets("1.2.840.113556.1.4.1941", 0x81)
        + encode_octets("memberOf", 0x82)
        + encode_octets(FAMILY, 0x83)
        + encode_tlv(0x84, b"\x00"),
    )
    flt = encode_tlv(
        0xA0,
        ava(0xA3, "objectClass", "user")
        + encode_tlv(0xA1, ava(0xA8, "mail", "x") + substrings + extensible)
        + encode_tlv(0xA2, ava(0xA5, "uid", "m"))
        + encode_tlv(0x87, b"uid"),
    )
    search = encode_tlv(
        0x63,
        encode_octets(USERS)
        + encode_tlv(0x0A, b"\x02")
        + encode_tlv(0x0A, b"\x00")
        + encode_int(10)
        + encode_int(0)
        + encode_tlv(0x01, b"\x00")
        + flt
        + encode_tlv(0x30, encode_octets("cn") + encode_octets("memberOf")),
    )
    paged = encode_tlv(
        0xA0,
        encode_control(PAGED_RESULTS, True, encode_tlv(0x30, encode_int(2) + encode_octets(b""))),
    )
    return [
        msg(search, paged),
        msg(search),
        _bind_request(5, f"uid=alice,{USERS}", "pw-alice"),
        msg(encode_tlv(0x6E, encode_octets(f"uid=alice,{USERS}") + ava(0x30, "mail", "a"))),
        msg(encode_tlv(0x77, encode_octets("1.3.6.1.4.1.4203.1.11.3", 0x80))),
        msg(encode_tlv(0x50, b"\x01")),
        msg(
            encode_tlv(
                0x60, encode_int(3) + encode_octets("") + encode_tlv(0xA3, encode_octets("PLAIN"))
            )
        ),
    ]


async def test_mutated_messages_never_hit_an_internal_error(
    server: LdapServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Seeded fuzzing, structure-aware: every well-framed but wrong message gets an LDAP
    answer or a protocolError close, never an internal error; the server keeps serving."""
    rng = random.Random(4511)
    seeds = [_tree(m) for m in _seed_messages()]
    login = _bind_request(1, CLOUD_DN, "cloud-secret")
    caplog.set_level(logging.INFO, logger="homeport.identity.ldap")
    for _ in range(400):
        node = rng.choice(seeds)
        for _ in range(rng.randint(1, 3)):
            node = _mutate(node, rng)
        await _exchange(server, login + _encode(node), eof=True)
    for _ in range(100):  # and raw byte damage, which mostly breaks framing
        data = bytearray(_encode(rng.choice(seeds)))
        for _ in range(rng.randint(1, 4)):
            k = rng.randrange(len(data))
            data[k] = rng.randrange(256)
        await _exchange(server, login + bytes(data), eof=True)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    frames, _ = await _exchange(server, login, replies=1)
    assert [_result_code(f) for f in frames] == [(0x61, 0)]


async def test_message_cut_short_by_end_of_stream(server: LdapServer) -> None:
    frames, closed = await _exchange(server, b"\x30\x03\x02\x01", eof=True)
    assert closed
    assert [_result_code(f) for f in frames] == [(0x78, 2)]


async def test_deep_but_allowed_filter_is_served(server: LdapServer) -> None:
    frames, closed = await _exchange(
        server, _bind_request(1, CLOUD_DN, "cloud-secret") + _deep_filter_search(30), replies=7
    )
    assert not closed
    # thirty nots around (uid=*): true for every user; an even count keeps it true
    assert _result_code(frames[0]) == (0x61, 0)
    assert _result_code(frames[-1]) == (0x65, 0)
    assert len(frames) == 2 + 5


async def test_oversized_message_refused_before_reading_it(directory: MemoryDirectory) -> None:
    srv = LdapServer(directory, "127.0.0.1", 0, BASE, max_message_size=1024)
    await srv.start()
    try:
        big = _bind_request(1, CLOUD_DN, "x" * 2000)
        frames, closed = await _exchange(srv, big[:16])  # only the header arrives
        assert closed
        assert [_result_code(f) for f in frames] == [(0x78, 2)]
    finally:
        await srv.stop()


async def test_idle_connection_is_closed(directory: MemoryDirectory) -> None:
    srv = LdapServer(directory, "127.0.0.1", 0, BASE, idle_timeout=0.3)
    await srv.start()
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        frames, closed = await _exchange(srv, b"")
        assert closed
        assert loop.time() - t0 < 2.5
        assert len(frames) == 1 and _result_code(frames[0])[0] == 0x78
    finally:
        await srv.stop()


async def test_connection_limit(directory: MemoryDirectory) -> None:
    srv = LdapServer(directory, "127.0.0.1", 0, BASE, max_connections=1)
    await srv.start()
    try:
        _, held = await asyncio.open_connection("127.0.0.1", srv.port)
        try:
            await asyncio.sleep(0.05)
            frames, closed = await _exchange(srv, b"")
            assert closed
            assert [_result_code(f) for f in frames] == [(0x78, 51)]  # busy
        finally:
            held.close()
            await held.wait_closed()
    finally:
        await srv.stop()


async def test_stop_closes_open_connections(directory: MemoryDirectory) -> None:
    srv = LdapServer(directory, "127.0.0.1", 0, BASE)
    await srv.start()
    port = srv.port
    conn = await in_thread(lambda: bind(srv))
    await srv.stop()

    def after() -> type[Exception] | None:
        try:
            conn.search(USERS, "(uid=alice)")
        except (LDAPException, OSError) as e:
            return type(e)
        finally:
            conn.unbind()
        return None

    assert await in_thread(after) is not None
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


# --- ldapsearch / ldapwhoami (OpenLDAP's clients) ---------------------------------------------


def _ldap_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        need_server(name, FileNotFoundError(f"{name} not on PATH; install ldap-utils"))
        raise AssertionError("unreachable")
    return path


async def _run(argv: list[str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(20):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_ldapsearch_finds_alice(server: LdapServer) -> None:
    url = f"ldap://127.0.0.1:{server.port}"
    argv = [_ldap_tool("ldapsearch"), "-x", "-LLL", "-H", url, "-D", CLOUD_DN, "-w", "cloud-secret"]
    code, out, err = await _run([*argv, "-b", CLOUD, "(uid=alice)"])
    assert code == 0, err
    assert f"dn: uid=alice,{USERS}" in out.splitlines()
    assert "mail: alice@example.test" in out.splitlines()
    assert out.count("dn: ") == 1

    code, out, err = await _run([*argv, "-b", USERS, "-E", "pr=2/noprompt", "(objectClass=user)"])
    assert code == 0, err
    assert sorted(line for line in out.splitlines() if line.startswith("dn: ")) == [
        f"dn: uid={n},{USERS}" for n in ("alice", "bob", "carol", "dave", "erin")
    ]

    # absolute true and false (RFC 4526), which ldap3's filter parser cannot write
    code, out, err = await _run([*argv, "-b", USERS, "-s", "one", "(&)", "1.1"])
    assert (code, out.count("dn: ")) == (0, 5), err
    code, out, err = await _run([*argv, "-b", USERS, "-s", "one", "(|)", "1.1"])
    assert (code, out.count("dn: ")) == (0, 0), err

    code, out, err = await _run(
        [argv[0], "-x", "-H", url, "-D", CLOUD_DN, "-w", "wrong", "-b", CLOUD, "(uid=alice)"]
    )
    assert code == INVALID_CREDENTIALS, (out, err)


async def test_ldapwhoami_as_user(server: LdapServer) -> None:
    tool = _ldap_tool("ldapwhoami")
    code, out, err = await _run(
        [
            tool,
            "-x",
            "-H",
            f"ldap://127.0.0.1:{server.port}",
            "-D",
            f"uid=bob,{USERS}",
            "-w",
            "pw-bob",
        ]
    )
    assert code == 0, err
    assert out.strip() == f"dn:uid=bob,{USERS}"


# --- units: DN syntax, access rule ------------------------------------------------------------


def test_dn_parse_format_and_normalize() -> None:
    assert parse_dn(r"cn=Family\, close , ou=groups,DC=x") == (
        ("cn", "Family, close"),
        ("ou", "groups"),
        ("DC", "x"),
    )
    assert parse_dn(r"uid=\C3\A9mile\20,dc=x") == (("uid", "émile "), ("dc", "x"))
    assert parse_dn("") == ()
    weird = (("cn", ' #lead, "quoted" + more\\ '), ("dc", "x"))
    assert parse_dn(format_dn(weird)) == weird
    assert normalize_dn("CommonName=A  B,DC=X") == normalize_dn("cn=a b, dc=x")
    for bad in ["cn", "cn=a+sn=b", "cn=#0401", "cn=a\\", "cn=a\\zz", "=x", "c n=x"]:
        with pytest.raises(DnError):
            parse_dn(bad)


def test_access_rule() -> None:
    alice = LdapUser("1", "alice", groups=("family",))
    assert AppAccount("a", all_users=True).allows(alice, alice.groups)
    assert AppAccount("a", groups=frozenset({"family"})).allows(alice, alice.groups)
    assert AppAccount("a", user_ids=frozenset({"1"})).allows(alice, ())
    assert not AppAccount("a", groups=frozenset({"friends"})).allows(alice, alice.groups)
    assert not AppAccount("a", all_users=True).allows(replace(alice, disabled=True), ())


async def test_base_dn_is_configurable(directory: MemoryDirectory) -> None:
    with pytest.raises(ValueError, match="base DN"):
        LdapServer(directory, base_dn="not a dn")
    srv = LdapServer(directory, "127.0.0.1", 0, "o=Home Lab")
    assert srv.app_base_dn("cloud") == "ou=cloud,o=Home Lab"
    assert srv.user_dn("cloud", "a,b") == r"uid=a\,b,ou=users,ou=cloud,o=Home Lab"
    await srv.start()
    try:

        def run() -> list[str]:
            with bound(srv, "cn=cloud,ou=apps,o=home lab") as c:
                assert c.search("ou=cloud,o=Home Lab", "(uid=bob)")
                return dns(c)

        assert await in_thread(run) == ["uid=bob,ou=users,ou=cloud,o=Home Lab"]
    finally:
        await srv.stop()
    # a base led by an attribute type outside the schema still serves its tree
    srv = LdapServer(directory, "127.0.0.1", 0, "l=Attic,c=DE")
    await srv.start()
    try:

        def run_l() -> list[str]:
            with bound(srv, "cn=cloud,ou=apps,l=Attic,c=DE") as c:
                assert c.search("l=attic,c=de", "(uid=bob)")
                return dns(c)

        assert await in_thread(run_l) == ["uid=bob,ou=users,ou=cloud,l=Attic,c=DE"]
    finally:
        await srv.stop()
