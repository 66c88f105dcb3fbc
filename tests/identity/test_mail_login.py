"""`mail_login`: the mail service's check of a mail client's platform password, over the real
bus, Postgres and keyring, and the firewall's ban projection over the failures it records."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest

from libs.events.bus import BusClient, Forbidden, Invalid, Unauthorized
from libs.events.context import Context
from libs.events.nats_access import HARNESS
from libs.events.periods import PeriodKeys
from libs.events.projection import ProjectionRunner
from libs.events.store import PostgresEventStore
from services.firewall.config import BanPolicy
from services.firewall.projections import BanProjection, active_bans
from tests.identity.kit import Identity, code_for, running_identity

pytestmark = pytest.mark.asyncio(loop_scope="function")

ALICE = {"username": "Alice", "email": "alice@example.test", "password": "a long enough phrase"}
BOB = {"username": "bob", "email": "bob@example.test", "password": "another long phrase"}
IP = "198.51.100.40"


@pytest.fixture
async def ident(monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path) -> Any:
    async with running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as i:
        yield i


def limited(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path, env: dict[str, str]
) -> Any:
    return running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, env=env)


async def with_users(ident: Identity) -> tuple[str, str, str]:
    """The admin, Alice and bob; returns their ids."""
    admin = await ident.set_up()
    alice = await ident.cmd("create_user", dict(ALICE), actor=admin)
    bob = await ident.cmd("create_user", dict(BOB), actor=admin)
    return admin, str(alice["user_id"]), str(bob["user_id"])


def payload(username: str, password: str, ip: str | None = IP, protocol: str = "imap") -> Any:
    return {"username": username, "password": password, "ip": ip, "protocol": protocol}


async def mail_login(ident: Identity, username: str, password: str, **kw: Any) -> Any:
    """The command as the mail service sends it: as a service, actor "system"."""
    return await ident.cmd("mail_login", payload(username, password, **kw), actor="system")


async def failures(ident: Identity, dsn: str) -> list[tuple[str, str | None, str | None, str]]:
    """Every LoginFailed: (reason, user_id, its ip read back, its meta.ip read back)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT data, meta FROM events.events WHERE type = 'LoginFailed' ORDER BY position"
        )
    finally:
        await conn.close()
    out = []
    for r in rows:
        data, meta = json.loads(r["data"]), json.loads(r["meta"])
        out.append(
            (data["reason"], data["user_id"], ident.address(data["ip"]), ident.address(meta["ip"]))
        )
    return out


async def event_count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM events.events"))
    finally:
        await conn.close()


async def refusal(ident: Identity, username: str, password: str, **kw: Any) -> tuple[Any, ...]:
    with pytest.raises(Unauthorized) as e:
        await mail_login(ident, username, password, **kw)
    return (type(e.value), e.value.code, str(e.value), e.value.field)


async def enrol_totp(ident: Identity, user_id: str) -> None:
    secret = (await ident.cmd("totp_enrol", {"user_id": user_id}, actor=user_id))["secret"]
    step = int(ident.clock.time() // 30)
    code = code_for(secret, step - 1)  # ±1 step of drift: still good near a step's end
    await ident.cmd("totp_confirm", {"user_id": user_id, "code": code}, actor=user_id)


async def test_the_right_password_gives_the_user_as_stored(ident: Identity, dsn: str) -> None:
    _, alice, bob = await with_users(ident)
    for protocol in ("imap", "smtp", "managesieve"):
        got = await mail_login(ident, "aLiCe", ALICE["password"], protocol=protocol)
        assert got == {"user_id": alice, "username": "Alice"}
    got = await mail_login(ident, "bob", BOB["password"], ip="2001:db8::7")
    assert got == {"user_id": bob, "username": "bob"}
    assert await mail_login(ident, "bob", BOB["password"], ip=None) == got
    assert await failures(ident, dsn) == []


async def test_every_refusal_answers_as_a_refused_dashboard_login(
    ident: Identity, dsn: str
) -> None:
    admin, alice, bob = await with_users(ident)
    # bob with TOTP: refused with his platform password (he was let in without it)
    assert (await mail_login(ident, "bob", BOB["password"]))["user_id"] == bob
    await enrol_totp(ident, bob)
    answers = {
        "wrong password": await refusal(ident, "alice", "not her password"),
        "unknown user": await refusal(ident, "nobody", "not her password"),
        "impossible name": await refusal(ident, "x\u00e9 y" * 50, "whatever it is"),
        "totp user": await refusal(ident, "bob", BOB["password"]),
    }
    await ident.cmd("disable_user", {"user_id": alice}, actor=admin)
    answers["disabled user"] = await refusal(ident, "alice", ALICE["password"])
    with pytest.raises(Unauthorized) as e:
        await ident.login("nobody", "not her password", ip="192.0.2.200")
    dashboard = (type(e.value), e.value.code, str(e.value), e.value.field)
    assert set(answers.values()) == {dashboard}, answers
    assert dashboard[1:3] == ("unauthorized", "wrong username or password")
    # each refusal is a LoginFailed with the mail client's address, sealed and read back
    assert (await failures(ident, dsn))[:5] == [
        ("mail_password", alice, IP, IP),
        ("mail_unknown_user", None, IP, IP),
        ("mail_unknown_user", None, IP, IP),
        ("mail_totp", bob, IP, IP),
        ("mail_disabled", alice, IP, IP),
    ]
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT data::text || meta::text AS row FROM events.events")
    finally:
        await conn.close()
    assert rows and not any(IP in r["row"] or "nobody" in r["row"] for r in rows)


async def test_the_per_address_limit_counts_mail_and_dashboard_failures(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path
) -> None:
    async with limited(monkeypatch, dsn, nats_url, tmp_path, {"HP_SIGNIN_IP_LIMIT": "3"}) as ident:
        _, alice, _ = await with_users(ident)
        for _ in range(3):
            await refusal(ident, "alice", "not her password")
        with pytest.raises(Forbidden, match="your address"):  # even with the right password
            await mail_login(ident, "alice", ALICE["password"])
        with pytest.raises(Forbidden, match="your address"):  # one limit with the dashboard
            await ident.login("alice", ALICE["password"], ip=IP)
        assert [f[0] for f in await failures(ident, dsn)] == [
            *["mail_password"] * 3,
            "mail_limited",
            "limited",
        ]
        # one address written another way is the same address
        with pytest.raises(Forbidden, match="your address"):
            await mail_login(ident, "alice", ALICE["password"], ip=f"::ffff:{IP}")
        # another address, and the real user, are not locked out
        got = await mail_login(ident, "alice", ALICE["password"], ip="198.51.100.41")
        assert got["user_id"] == alice


async def test_the_per_account_limit_spares_known_addresses(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path
) -> None:
    env = {"HP_SIGNIN_ACCOUNT_LIMIT": "3"}
    async with limited(monkeypatch, dsn, nats_url, tmp_path, env) as ident:
        _, alice, _ = await with_users(ident)
        await ident.login("alice", ALICE["password"], ip="203.0.113.1")  # her own address
        for i in range(3):
            await refusal(ident, "alice", "not her password", ip=f"198.51.100.{i}")
        # a new address: not evaluated, the same answer as a wrong password
        await refusal(ident, "alice", ALICE["password"], ip="198.51.100.50")
        assert (await failures(ident, dsn))[-1] == (
            "mail_limited",
            alice,
            "198.51.100.50",
            "198.51.100.50",
        )
        got = await mail_login(ident, "alice", ALICE["password"], ip="203.0.113.1")
        assert got["user_id"] == alice


async def test_the_firewall_bans_an_address_from_its_mail_failures(
    ident: Identity, dsn: str, tmp_path: Path
) -> None:
    await with_users(ident)
    attacker, other = "203.0.113.66", "203.0.113.67"
    for _ in range(5):
        await refusal(ident, "alice", "not her password", ip=attacker)
    for _ in range(4):  # one short of the default policy
        await refusal(ident, "ghost", "not her password", ip=other)
    keys = PeriodKeys(tmp_path / "ip-keys.json", writer=False)  # identity's, read only
    projection = BanProjection(BanPolicy(), addresses=keys)
    store = await PostgresEventStore.open(dsn, max_size=2, run_migrations=False)
    try:
        await ProjectionRunner(projection, store).rebuild()
        bans = await active_bans(store.pool, datetime.now(UTC))
    finally:
        await store.close()
    assert set(bans) == {attacker}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"username": "ali\x00ce"}, "username"),
        ({"username": "a" * 257}, "username"),
        ({"password": "p" * 5000}, "password"),
        ({"ip": "not-an-address"}, "ip"),
        ({"ip": "999.1.1.1"}, "ip"),
        ({"ip": "fe80::1%eth0"}, "ip"),
        ({"ip": "198.51.100.0/24"}, "ip"),
        ({"protocol": "pop3"}, "protocol"),
        ({"protocol": None}, "protocol"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_bad_input_names_the_field_and_records_nothing(
    ident: Identity, dsn: str, nats_url: str, change: dict[str, Any], field: str
) -> None:
    await with_users(ident)
    before = await event_count(dsn)
    body = {**payload("alice", ALICE["password"]), **change}
    with pytest.raises(Invalid) as e:  # the caller's check of the contract
        await ident.cmd("mail_login", body, actor="system")
    assert e.value.field == field
    nc = await nats.connect(nats_url)
    try:  # and the service's own, for a caller that checks nothing
        unchecked = BusClient(nc, sender=HARNESS, contracts={})
        with pytest.raises(Invalid) as e:
            await unchecked.command("identity", "mail_login", body, ctx=Context("system"))
        assert e.value.field == field
        good = payload("alice", ALICE["password"])
        assert (await unchecked.command("identity", "mail_login", good))["username"] == "Alice"
    finally:
        await nc.close()
    assert await event_count(dsn) == before
    assert await failures(ident, dsn) == []


async def test_only_a_service_may_ask(ident: Identity, dsn: str) -> None:
    admin, alice, _ = await with_users(ident)
    before = await event_count(dsn)
    for ctx in (
        {"actor": alice},
        {"actor": admin},
        {"actor": admin, "admin": True},  # the gateway vouching an administrator
        {"actor": "anonymous", "ip": IP},
    ):
        for password in (ALICE["password"], "not her password"):
            with pytest.raises(Forbidden) as e:
                await ident.cmd("mail_login", payload("alice", password), **ctx)
            assert "platform's own services" in str(e.value), ctx
    assert await event_count(dsn) == before  # nothing checked, nothing recorded
    got = await ident.cmd("mail_login", payload("alice", ALICE["password"]), actor="system")
    assert got["user_id"] == alice
