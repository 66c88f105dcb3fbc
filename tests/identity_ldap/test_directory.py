"""The identity service's LDAP endpoint for real: the service, its bus, Postgres, ldap3, ldapsearch.

Users are created and disabled over the bus, apps registered with `ldap_register_app`, and
every LDAP operation goes over TCP on loopback to the endpoint the service started.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from libs.events.bus import Forbidden, Invalid, NotFound
from libs.events.projection import replay_by_name
from services.identity.passwords import MEMORY_COST_KIB, Hasher
from tests.identity.kit import Identity, running_identity
from tests.support.servers import need_server

with warnings.catch_warnings():
    # ldap3 2.9.1 imports names pyasn1 marks deprecated; the warning is theirs, not ours
    warnings.simplefilter("ignore", DeprecationWarning)
    import ldap3

pytestmark = pytest.mark.asyncio(loop_scope="function")

T = TypeVar("T")

BASE = "dc=homeport,dc=local"
CLOUD = f"ou=cloud,{BASE}"
USERS = f"ou=users,{CLOUD}"
GROUPS = f"ou=groups,{CLOUD}"
CLOUD_DN = f"cn=cloud,ou=apps,{BASE}"
PAGED_RESULTS = "1.2.840.113556.1.4.319"
INVALID_CREDENTIALS = 49
INSUFFICIENT_ACCESS = 50
UNWILLING = 53

PEOPLE = {
    "alice": {"email": "alice@example.test", "display_name": "Alice Liddell"},
    "bob": {"email": "bob@example.test", "display_name": "Bob"},
    "carol": {"email": "carol@example.test"},
    "dave": {"email": "dave@example.test", "display_name": "Dave D"},
    "erin": {"email": "erin@example.test"},
}


def pw(name: str) -> str:
    return f"the password of {name}"


@pytest.fixture
async def ident(
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
) -> Any:
    """Identity with its LDAP endpoint; parametrized indirectly with a memory cost, it hashes
    the world's passwords at that cost instead of the suite's."""
    env = {"HP_LDAP_HOST": "127.0.0.1", "HP_LDAP_PORT": "0", "HP_SIGNIN_ACCOUNT_LIMIT": "6"}
    memory_kib = getattr(request, "param", None)
    if memory_kib is not None:
        env["HP_PASSWORD_MEMORY_KIB"] = str(memory_kib)
    async with running_identity(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, env=env
    ) as i:
        yield i


class World:
    """An identity with an admin, the PEOPLE, and app "cloud" open to alice and bob."""

    def __init__(self, ident: Identity) -> None:
        self.ident = ident
        self.admin = ""
        self.ids: dict[str, str] = {}
        self.app: dict[str, Any] = {}

    async def build(self) -> World:
        self.admin = await self.ident.set_up()
        for name, extra in PEOPLE.items():
            reply = await self.ident.cmd(
                "create_user",
                {"username": name, "password": pw(name), **extra},
                actor=self.admin,
            )
            self.ids[name] = reply["user_id"]
        self.app = await self.register("cloud", user_ids=[self.ids["alice"], self.ids["bob"]])
        return self

    async def register(
        self, app_id: str, *, all_users: bool = False, user_ids: Any = (), groups: Any = ()
    ) -> dict[str, Any]:
        access = {"all_users": all_users, "user_ids": list(user_ids), "groups": list(groups)}
        reply: dict[str, Any] = await self.ident.cmd(
            "ldap_register_app", {"app_id": app_id, "access": access}, actor="system"
        )
        return reply

    @property
    def port(self) -> int:
        return int(self.app["port"])


@pytest.fixture
async def world(ident: Identity) -> World:
    return await World(ident).build()


async def in_thread(fn: Callable[[], T]) -> T:
    """ldap3's sync strategy blocks: run it beside the loop that serves it."""
    return await asyncio.wait_for(asyncio.to_thread(fn), 30)


def connect(port: int, user: str, password: str) -> Any:
    server = ldap3.Server("127.0.0.1", port=port, get_info=ldap3.NONE, connect_timeout=5)
    return ldap3.Connection(
        server,
        user=user,
        password=password,
        receive_timeout=5,
        raise_exceptions=False,
        return_empty_attributes=False,
    )


def try_bind(port: int, user: str, password: str) -> int:
    """The result code of a simple bind on a fresh connection."""
    conn = connect(port, user, password)
    try:
        conn.bind()
        return int(conn.result["result"])
    finally:
        conn.unbind()


@contextmanager
def bound(port: int, user: str, password: str) -> Iterator[Any]:
    conn = connect(port, user, password)
    try:
        if not conn.bind():
            raise AssertionError(f"bind as {user} failed: {conn.result}")
        yield conn
    finally:
        conn.unbind()


def dns(conn: Any) -> list[str]:
    return [r["dn"] for r in conn.response or [] if r["type"] == "searchResEntry"]


def attrs(conn: Any) -> dict[str, dict[str, list[str]]]:
    return {
        r["dn"]: {k.lower(): [v.decode() for v in vs] for k, vs in r["raw_attributes"].items()}
        for r in conn.response or []
        if r["type"] == "searchResEntry"
    }


def user_dn(name: str, context: str = CLOUD) -> str:
    return f"uid={name},ou=users,{context}"


# --- registration ----------------------------------------------------------------------------


async def test_register_reply_names_the_endpoint_and_a_strong_password(world: World) -> None:
    app = world.app
    assert app["bind_dn"] == CLOUD_DN
    assert app["base_dn"] == CLOUD
    assert app["users_dn"] == USERS and app["groups_dn"] == GROUPS
    assert app["host"] == "127.0.0.1" and app["port"] > 0
    assert len(app["password"]) >= 22  # 128 bits in base64url; it is 256
    assert await world.ident.ask("ldap_endpoint", {}) == {
        "host": "127.0.0.1",
        "hosts": ["127.0.0.1"],
        "port": app["port"],
        "base_dn": BASE,
    }
    listed = await world.ident.ask("ldap_apps", {}, actor=world.admin)
    assert [i["app_id"] for i in listed["items"]] == ["cloud"]
    assert listed["items"][0]["access"] == {
        "all_users": False,
        "user_ids": [world.ids["alice"], world.ids["bob"]],
        "groups": [],
    }
    assert app["password"] not in str(listed) and "password_hash" not in str(listed)


async def test_only_the_hash_of_the_password_is_stored(world: World, dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        events = await conn.fetch("SELECT data::text AS d FROM events.events")
        rows = await conn.fetch("SELECT * FROM identity.ldap_apps")
    finally:
        await conn.close()
    assert all(world.app["password"] not in e["d"] for e in events)
    assert all(world.app["password"] not in str(dict(r)) for r in rows)
    assert len(rows[0]["password_hash"]) == 64


async def test_register_is_for_admins_and_the_platform_and_checks_its_input(
    world: World,
) -> None:
    ident = world.ident
    access = {"all_users": True}
    with pytest.raises(Forbidden):
        await ident.cmd(
            "ldap_register_app", {"app_id": "x", "access": access}, actor=world.ids["alice"]
        )
    with pytest.raises(Forbidden):
        await ident.cmd("ldap_remove_app", {"app_id": "cloud"}, actor="anonymous")
    with pytest.raises(Forbidden):
        await ident.ask("ldap_apps", {}, actor=world.ids["bob"])
    bad: list[tuple[dict[str, Any], str]] = [
        ({"app_id": "Cloud", "access": access}, "app_id"),
        ({"app_id": "-x", "access": access}, "app_id"),
        ({"app_id": "a;rm -rf", "access": access}, "app_id"),
        ({"app_id": "a" * 64, "access": access}, "app_id"),
        ({"app_id": "x"}, "access"),
        ({"app_id": "x", "access": {"all_users": "yes"}}, "access.all_users"),
        ({"app_id": "x", "access": {"user_ids": ["not-a-uuid"]}}, "access.user_ids"),
        ({"app_id": "x", "access": {"everyone": True}}, "access.everyone"),
        ({"app_id": "x", "access": access, "colour": "red"}, "colour"),
    ]
    for payload, field in bad:
        with pytest.raises(Invalid) as e:
            await ident.cmd("ldap_register_app", payload, actor=world.admin)
        assert e.value.field == field, payload
    with pytest.raises(NotFound) as nf:
        await world.register("x", user_ids=["00000000-0000-4000-8000-000000000000"])
    assert nf.value.field == "access.user_ids"
    with pytest.raises(NotFound) as nf:
        await world.register("x", groups=["nosuchgroup"])
    assert nf.value.field == "access.groups"
    with pytest.raises(NotFound):
        await ident.cmd(
            "ldap_set_app_access", {"app_id": "nope", "access": access}, actor=world.admin
        )
    listed = await ident.ask("ldap_apps", {}, actor="system")
    assert [i["app_id"] for i in listed["items"]] == ["cloud"]  # nothing half-made


# --- the app's service account ---------------------------------------------------------------


async def test_app_searches_by_object_class_and_uid(world: World) -> None:
    def run() -> dict[str, dict[str, list[str]]]:
        with bound(world.port, CLOUD_DN, world.app["password"]) as c:
            assert c.search(
                CLOUD, "(&(objectClass=user)(uid=alice))", attributes=["*", "entryUUID"]
            )
            return attrs(c)

    found = await in_thread(run)
    assert list(found) == [user_dn("alice")]
    a = found[user_dn("alice")]
    assert a["uid"] == ["alice"]
    assert a["mail"] == ["alice@example.test"]
    assert a["cn"] == a["displayname"] == ["Alice Liddell"]
    assert (a["givenname"], a["sn"]) == (["Alice"], ["Liddell"])
    assert a["entryuuid"] == [world.ids["alice"]]


async def test_or_filter_on_mail_or_uid_and_only_the_access_list(world: World) -> None:
    def run() -> tuple[list[str], list[str], list[str]]:
        with bound(world.port, CLOUD_DN, world.app["password"]) as c:
            assert c.search(CLOUD, "(|(mail=alice@example.test)(uid=alice))")
            either = dns(c)
            c.search(CLOUD, "(|(mail=CAROL@example.test)(uid=carol))")  # False: nothing found
            assert c.result["result"] == 0
            carol = dns(c)
            assert c.search(USERS, "(objectClass=person)")
            return either, carol, dns(c)

    either, carol, everyone = await in_thread(run)
    assert either == [user_dn("alice")]
    assert carol == []  # carol exists but is not on cloud's list
    assert everyone == [user_dn("alice"), user_dn("bob")]


async def test_paged_search_returns_every_user_exactly_once(world: World) -> None:
    app = await world.register("wiki", all_users=True)

    def run() -> tuple[list[str], list[int]]:
        with bound(world.port, app["bind_dn"], app["password"]) as c:
            seen: list[str] = []
            sizes: list[int] = []
            cookie: bytes | None = None
            while True:
                assert c.search(
                    app["users_dn"], "(objectClass=user)", paged_size=2, paged_cookie=cookie
                )
                seen += dns(c)
                ctl = c.result["controls"][PAGED_RESULTS]["value"]
                sizes.append(ctl["size"])
                cookie = ctl["cookie"]
                if not cookie:
                    return seen, sizes

    seen, sizes = await in_thread(run)
    names = ["alice", "bob", "carol", "dave", "erin", "root"]
    assert seen == [user_dn(n, app["base_dn"]) for n in names]
    assert sizes == [6, 6, 6]


async def test_wrong_app_password_and_rotation(world: World) -> None:
    port, old = world.port, world.app["password"]
    assert await in_thread(lambda: try_bind(port, CLOUD_DN, old + "x")) == INVALID_CREDENTIALS
    nope = f"cn=nope,ou=apps,{BASE}"
    assert await in_thread(lambda: try_bind(port, nope, old)) == INVALID_CREDENTIALS
    again = await world.register("cloud", user_ids=[world.ids["alice"]])
    assert again["password"] != old
    assert await in_thread(lambda: try_bind(port, CLOUD_DN, old)) == INVALID_CREDENTIALS
    assert await in_thread(lambda: try_bind(port, CLOUD_DN, again["password"])) == 0


async def test_access_change_and_removal_apply_at_once(world: World) -> None:
    port, secret = world.port, world.app["password"]
    conn = connect(port, CLOUD_DN, secret)
    assert await in_thread(conn.bind)
    try:
        await world.ident.cmd(
            "ldap_set_app_access",
            {"app_id": "cloud", "access": {"user_ids": [world.ids["carol"]]}},
            actor=world.admin,
        )
        await in_thread(lambda: conn.search(USERS, "(objectClass=user)"))
        assert dns(conn) == [user_dn("carol")]  # the open connection sees the new list
        reply = await world.ident.cmd("ldap_remove_app", {"app_id": "cloud"}, actor="system")
        assert reply == {"app_id": "cloud", "removed": True}
        await in_thread(lambda: conn.search(USERS, "(objectClass=user)"))
        assert conn.result["result"] == INSUFFICIENT_ACCESS
    finally:
        await in_thread(conn.unbind)
    assert await in_thread(lambda: try_bind(port, CLOUD_DN, secret)) == INVALID_CREDENTIALS
    carol = user_dn("carol")
    assert await in_thread(lambda: try_bind(port, carol, pw("carol"))) == INVALID_CREDENTIALS
    again = await world.ident.cmd("ldap_remove_app", {"app_id": "cloud"}, actor="system")
    assert again == {"app_id": "cloud", "removed": False}  # idempotent
    assert (await world.ident.ask("ldap_apps", {}, actor="system"))["items"] == []
    back = await world.register("cloud", all_users=True)  # the stream goes on
    assert await in_thread(lambda: try_bind(port, CLOUD_DN, back["password"])) == 0


# --- groups ----------------------------------------------------------------------------------


async def make_group(world: World, name: str, members: list[str]) -> str:
    group = await world.ident.cmd("create_group", {"name": name}, actor=world.admin)
    for m in members:
        await world.ident.cmd(
            "add_group_member",
            {"group_id": group["group_id"], "user_id": world.ids[m]},
            actor=world.admin,
        )
    return str(group["group_id"])


async def test_group_access_member_of_and_group_entries(world: World) -> None:
    family = await make_group(world, "family", ["alice", "bob", "dave"])
    await make_group(world, "friends", ["carol"])
    app = await world.register("photos", groups=["family"])  # by name; stored by id
    assert app["access"]["groups"] == [family]
    base, users = app["base_dn"], app["users_dn"]
    family_dn = f"cn=family,{app['groups_dn']}"

    def run() -> tuple[list[str], list[str], dict[str, dict[str, list[str]]]]:
        with bound(world.port, app["bind_dn"], app["password"]) as c:
            assert c.search(base, f"(&(objectClass=user)(memberOf={family_dn}))")
            member_of = dns(c)
            assert c.search(users, "(objectClass=user)", attributes=["memberOf"])
            visible = dns(c)
            assert c.search(app["groups_dn"], "(objectClass=groupOfNames)", attributes=["member"])
            return member_of, visible, attrs(c)

    member_of, visible, groups = await in_thread(run)
    family_users = [user_dn(n, base) for n in ("alice", "bob", "dave")]
    assert member_of == visible == family_users
    assert sorted(groups[family_dn]["member"]) == family_users
    assert groups[f"cn=friends,{app['groups_dn']}"].get("member", []) == []  # carol: not here
    dave = user_dn("dave", base)
    carol = user_dn("carol", base)
    assert await in_thread(lambda: try_bind(world.port, dave, pw("dave"))) == 0
    assert await in_thread(lambda: try_bind(world.port, carol, pw("carol"))) == 49


async def test_group_membership_rename_and_delete_apply_at_once(world: World) -> None:
    family = await make_group(world, "family", ["alice"])
    app = await world.register("photos", groups=[family])  # by id
    port = world.port
    bob = user_dn("bob", app["base_dn"])
    assert await in_thread(lambda: try_bind(port, bob, pw("bob"))) == INVALID_CREDENTIALS
    await world.ident.cmd(
        "add_group_member", {"group_id": family, "user_id": world.ids["bob"]}, actor=world.admin
    )
    assert await in_thread(lambda: try_bind(port, bob, pw("bob"))) == 0
    await world.ident.cmd("rename_group", {"group_id": family, "name": "kin"}, actor=world.admin)

    def member_of() -> list[str]:
        with bound(port, app["bind_dn"], app["password"]) as c:
            assert c.search(app["users_dn"], f"(memberOf=cn=kin,{app['groups_dn']})")
            return dns(c)

    assert await in_thread(member_of) == [user_dn(n, app["base_dn"]) for n in ("alice", "bob")]
    await world.ident.cmd("delete_group", {"group_id": family}, actor=world.admin)
    assert await in_thread(lambda: try_bind(port, bob, pw("bob"))) == INVALID_CREDENTIALS
    listed = await world.ident.ask("ldap_apps", {}, actor="system")
    assert {i["app_id"]: i["access"]["groups"] for i in listed["items"]}["photos"] == []


# --- users binding through the app -----------------------------------------------------------


async def test_user_bind_right_and_wrong_password(world: World) -> None:
    port = world.port
    alice = user_dn("alice")
    assert await in_thread(lambda: try_bind(port, alice, pw("alice"))) == 0
    assert await in_thread(lambda: try_bind(port, user_dn("ALICE"), pw("alice"))) == 0
    assert await in_thread(lambda: try_bind(port, alice, pw("bob"))) == INVALID_CREDENTIALS
    nobody = user_dn("nobody")
    assert await in_thread(lambda: try_bind(port, nobody, pw("alice"))) == INVALID_CREDENTIALS

    def whoami() -> str:
        with bound(port, alice, pw("alice")) as c:
            return str(c.extend.standard.who_am_i())

    assert await in_thread(whoami) == f"dn:{alice}"


async def test_user_not_on_the_access_list_cannot_bind_through_the_app(world: World) -> None:
    port = world.port
    carol = user_dn("carol")
    assert await in_thread(lambda: try_bind(port, carol, pw("carol"))) == INVALID_CREDENTIALS
    other = await world.register("notes", user_ids=[world.ids["carol"]])
    carol_notes = user_dn("carol", other["base_dn"])
    assert await in_thread(lambda: try_bind(port, carol_notes, pw("carol"))) == 0


async def test_disabled_user_cannot_bind_once_disable_answers(world: World) -> None:
    port = world.port
    alice = user_dn("alice")
    conn = connect(port, alice, pw("alice"))
    assert await in_thread(conn.bind)
    try:
        await world.ident.cmd("disable_user", {"user_id": world.ids["alice"]}, actor=world.admin)
        answered = time.monotonic()
        code = await in_thread(lambda: try_bind(port, alice, pw("alice")))
        assert code == INVALID_CREDENTIALS
        await in_thread(lambda: conn.search(USERS, "(uid=alice)"))
        assert conn.result["result"] == INSUFFICIENT_ACCESS  # the open session ends too
        assert time.monotonic() - answered < 1.0
    finally:
        await in_thread(conn.unbind)

    def visible() -> list[str]:
        with bound(port, CLOUD_DN, world.app["password"]) as c:
            assert c.search(USERS, "(objectClass=user)")
            return dns(c)

    assert await in_thread(visible) == [user_dn("bob")]
    await world.ident.cmd("enable_user", {"user_id": world.ids["alice"]}, actor=world.admin)
    assert await in_thread(lambda: try_bind(port, alice, pw("alice"))) == 0


def _least_hash_seconds(memory_kib: int) -> float:
    """A floor under one verify's wall time at `memory_kib`: the least CPU time of three (one
    lane, so a verify's wall time is never below its CPU time)."""
    hasher = Hasher(memory_kib)
    encoded = hasher.hash("a password")
    spent = []
    for _ in range(3):
        t0 = time.thread_time()
        hasher.verify(encoded, "another password")
        spent.append(time.thread_time() - t0)
    return min(spent)


@pytest.mark.parametrize("ident", [MEMORY_COST_KIB], indirect=True, ids=["production-hash"])
async def test_disable_racing_a_bind_refuses_it(world: World) -> None:
    """A bind the disable answered during is refused, even if the user was enabled when the
    bind read them.

    The bind checks the user again after the hash. A try counts when the disable answered
    sooner after the bind began than any hash at this cost can take: the disable was then
    committed before that check, whatever the threads' scheduling did to the answers. (When
    the bind's answer merely arrived after the disable's, the check may have come first: a
    loaded CI machine saw such a bind succeed.) Passwords are hashed at production's cost
    here, about 150 ms, so that most tries count."""
    port = world.port
    alice = user_dn("alice")
    admin, user_id = world.admin, world.ids["alice"]
    least = 0.8 * await asyncio.to_thread(_least_hash_seconds, MEMORY_COST_KIB)

    def timed_bind(began: list[float]) -> int:
        began.append(time.monotonic())
        return try_bind(port, alice, pw("alice"))

    conclusive = 0
    for _ in range(5):
        began: list[float] = []
        bind = asyncio.create_task(in_thread(partial(timed_bind, began)))
        await asyncio.sleep(0.02)  # the bind has read alice and is hashing
        await world.ident.cmd("disable_user", {"user_id": user_id}, actor=admin)
        answered = time.monotonic()
        code = await bind
        if answered - began[0] < least:
            conclusive += 1
            assert code == INVALID_CREDENTIALS
        await world.ident.cmd("enable_user", {"user_id": user_id}, actor=admin)
        if conclusive >= 2:
            break
    assert conclusive > 0, "no disable answered within a bind's hash: the race was not tested"


async def test_failed_binds_are_recorded_and_count_toward_the_account_limit(
    world: World, dsn: str
) -> None:
    port = world.port
    bob = user_dn("bob")
    for _ in range(6):  # HP_SIGNIN_ACCOUNT_LIMIT=6 in this module
        assert await in_thread(lambda: try_bind(port, bob, "not bob's password")) == 49
    # past the limit even the right password is refused, without the hash being consulted
    assert await in_thread(lambda: try_bind(port, bob, pw("bob"))) == INVALID_CREDENTIALS
    # alice is not affected: limits are per account
    assert await in_thread(lambda: try_bind(port, user_dn("alice"), pw("alice"))) == 0
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT data->>'reason' AS reason, data->>'user_id' AS user_id, meta->>'actor' AS actor"
            " FROM events.events WHERE type = 'LoginFailed' ORDER BY position"
        )
    finally:
        await conn.close()
    assert [r["reason"] for r in rows] == ["ldap_password"] * 6 + ["ldap_limited"]
    assert {r["user_id"] for r in rows} == {world.ids["bob"]}
    assert {r["actor"] for r in rows} == {"ldap"}


# --- read-only, ldapsearch, rebuild ---------------------------------------------------------


async def test_write_operations_refused(world: World) -> None:
    alice = user_dn("alice")

    def run() -> list[int]:
        with bound(world.port, CLOUD_DN, world.app["password"]) as c:
            out: list[int] = []
            c.add(user_dn("zed"), ["inetOrgPerson"], {"sn": "z", "cn": "z"})
            out.append(c.result["result"])
            c.modify(alice, {"mail": [(ldap3.MODIFY_REPLACE, ["x@example.test"])]})
            out.append(c.result["result"])
            c.delete(alice)
            out.append(c.result["result"])
            c.modify_dn(alice, "uid=alicia")
            out.append(c.result["result"])
            return out

    assert await in_thread(run) == [UNWILLING] * 4
    profile = await world.ident.ask("profile", {"user_id": world.ids["alice"]})
    assert profile["email"] == "alice@example.test"


def _ldap_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        need_server(name, FileNotFoundError(f"{name} not on PATH; install ldap-utils"))
        raise AssertionError("unreachable")
    return path


async def test_ldapsearch_finds_a_user(world: World) -> None:
    argv = [
        _ldap_tool("ldapsearch"),
        "-x",
        "-LLL",
        "-H",
        f"ldap://127.0.0.1:{world.port}",
        "-D",
        CLOUD_DN,
        "-y",
        "/dev/stdin",  # the password on stdin, not in the process list
        "-b",
        CLOUD,
        "(uid=bob)",
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(20):
            out, err = await proc.communicate(world.app["password"].encode())
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert f"dn: {user_dn('bob')}" in lines
    assert "mail: bob@example.test" in lines
    assert out.decode().count("dn: ") == 1


async def test_app_accounts_survive_a_rebuild_of_the_read_model(world: World, dsn: str) -> None:
    await world.ident.cmd(
        "ldap_set_app_access",
        {"app_id": "cloud", "access": {"user_ids": [world.ids["dave"]]}},
        actor=world.admin,
    )
    gone = await world.register("gone", all_users=True)
    await world.ident.cmd("ldap_remove_app", {"app_id": "gone"}, actor="system")
    await replay_by_name("identity", dsn)
    port = world.port
    assert await in_thread(lambda: try_bind(port, CLOUD_DN, world.app["password"])) == 0
    gone_dn = gone["bind_dn"]
    assert await in_thread(lambda: try_bind(port, gone_dn, gone["password"])) == 49
    assert await in_thread(lambda: try_bind(port, user_dn("dave"), pw("dave"))) == 0
    assert await in_thread(lambda: try_bind(port, user_dn("bob"), pw("bob"))) == 49
    listed = await world.ident.ask("ldap_apps", {}, actor="system")
    assert [(i["app_id"], i["access"]["user_ids"]) for i in listed["items"]] == [
        ("cloud", [world.ids["dave"]])
    ]
