"""Bans from every sign-in surface (issue 18): failed SSH sign-ins (a real sshd, its log read by
the firewall) and failed mail sign-ins (identity's `mail_login`, as the mail service calls it)
get the client's address into the ban set within 5 s, and its next connection is dropped.

Everything runs for real: identity, the relay, the firewall service applying its table inside
namespaces the test creates (tests/firewall/netkit.py: `srv` is the host, `cli` the outside
world at 192.0.2.2 and 192.0.2.3), sshd in `srv` and the OpenSSH client in `cli`. Also
identity's `record_failure`, the command the firewall records SSH failures with.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest

from libs.events.bus import BusClient, Forbidden, Invalid, Unauthorized
from libs.events.context import Context
from libs.events.nats_access import HARNESS
from services.firewall.nft import Nft, Table
from services.identity.events import LoginFailed
from tests.firewall.netkit import Net, listen, network, probe
from tests.identity.kit import ADMIN, Identity, running_identity
from tests.support.bus import relaying
from tests.support.firewall import firewall_env
from tests.support.serving import serving
from tests.support.sshd import EXISTING_USER, running_sshd
from tests.support.waits import wait_until

HOST = "192.0.2.1"  # srv
ATTACKER, OTHER = "192.0.2.2", "192.0.2.3"  # both cli's
TABLE = "homeport"


@dataclass
class World:
    net: Net
    ident: Identity
    table: Table
    ssh_dir: Path  # where sshd keeps its log: the file the firewall follows

    async def banned(self, ip: str) -> bool:
        return ip in await self.table.elements()

    async def see(self, source: str, port: int = 22) -> str:
        return await asyncio.to_thread(probe, self.net.cli, HOST, port, source)


@pytest.fixture
async def world(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> AsyncIterator[World]:
    from services.firewall.__main__ import build

    ssh_dir = tmp_path / "sshd"
    ssh_dir.mkdir()
    with network() as net:
        extra = {
            "HP_KEYRING": str(tmp_path / "firewall-keyring.json"),
            "HP_FIREWALL_APPLY": "true",
            "HP_FIREWALL_NFT": net.nft,
            "HP_FIREWALL_TABLE": TABLE,
            # sshd starts later (the file appears then: read from its start)
            "HP_FIREWALL_SSH_LOG": str(ssh_dir / "sshd.log"),
        }
        # HP_DATA_DIR is identity's too: the firewall reads its address keys
        env = firewall_env(dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path, extra=extra)
        async with (
            running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as ident,
            relaying(dsn, nats_url, uniq),
            serving(monkeypatch, build, env, "the firewall"),
        ):
            table = Table(Nft(["ip", "netns", "exec", net.srv, "nft"]), TABLE)
            yield World(net, ident, table, ssh_dir)


async def failures(dsn: str) -> list[dict[str, Any]]:
    """Every LoginFailed as stored: its data and meta."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT data, meta FROM events.events WHERE type = 'LoginFailed' ORDER BY position"
        )
    finally:
        await conn.close()
    return [{"data": json.loads(r["data"]), "meta": json.loads(r["meta"])} for r in rows]


async def all_events(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT data::text || meta::text AS row FROM events.events")
    finally:
        await conn.close()
    return "\n".join(r["row"] for r in rows)


async def ban_within_5_s(world: World, ip: str) -> None:
    t0 = time.monotonic()
    await wait_until(lambda: world.banned(ip), 5, f"{ip} in the ban set within 5 s")
    assert time.monotonic() - t0 < 5


async def test_five_failed_ssh_sign_ins_ban_the_address(world: World, dsn: str) -> None:
    async with running_sshd(world.ssh_dir, netns=world.net.srv, address=HOST, port=22) as sshd:
        assert await world.see(ATTACKER) == "open"
        # five wrong passwords in one connection (the connection limit stays out of it)
        await sshd.fail(EXISTING_USER, tries=5, netns=world.net.cli, source=ATTACKER)
        await ban_within_5_s(world, ATTACKER)
        assert await world.see(ATTACKER) == "dropped"
        assert await world.see(OTHER) == "open"  # another address is not banned
        assert not await world.banned(OTHER)
        logged = sshd.lines()
    assert sum(f"Failed password for {EXISTING_USER} from {ATTACKER}" in x for x in logged) == 5

    # five LoginFailed, no account, the address sealed (data and meta) and read back
    got = await failures(dsn)
    assert [f["data"]["reason"] for f in got] == ["ssh_password"] * 5
    assert {f["data"]["user_id"] for f in got} == {None}
    for f in got:
        assert f["data"]["ip"].startswith("hp:sealed:") and f["meta"]["ip"].startswith("hp:")
        assert world.ident.address(f["data"]["ip"]) == ATTACKER
        assert world.ident.address(f["meta"]["ip"]) == ATTACKER
    text = await all_events(dsn)
    assert ATTACKER not in text and EXISTING_USER not in text  # no address, no name in clear


async def test_five_failed_mail_sign_ins_ban_the_address(world: World) -> None:
    await world.ident.set_up()
    with listen(world.net.srv, [22]):  # SSH, the port open to all: a ban drops it too
        await _fail_mail_then_see_the_ban(world)


async def _fail_mail_then_see_the_ban(world: World) -> None:
    assert await world.see(OTHER) == "open"
    for _ in range(5):  # as services/mail/auth.py asks: as a service, the client's address
        with pytest.raises((Unauthorized, Forbidden)):
            await world.ident.cmd(
                "mail_login",
                {
                    "username": ADMIN["username"],
                    "password": "not the password",
                    "ip": OTHER,
                    "protocol": "imap",
                },
                actor="system",
            )
    await ban_within_5_s(world, OTHER)
    assert await world.see(OTHER) == "dropped"
    assert await world.see(ATTACKER) == "open"


# -- identity's record_failure --------------------------------------------------------------


@pytest.fixture
async def ident(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path
) -> AsyncIterator[Identity]:
    async with running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as i:
        yield i


async def record(ident: Identity, payload: dict[str, Any], **ctx: Any) -> Any:
    return await ident.cmd("record_failure", payload, **(ctx or {"actor": "system"}))


async def test_record_failure_appends_a_sealed_login_failed(ident: Identity, dsn: str) -> None:
    for ip, reason in (
        ("203.0.113.5", "ssh_password"),
        ("2001:db8::5", "ssh_invalid_user"),
        ("::ffff:203.0.113.5", "ssh_preauth"),  # the same client as the first
        ("203.0.113.6", "ssh_max_tries"),
    ):
        assert await record(ident, {"ip": ip, "reason": reason}) == {}
    got = [
        (f["data"]["reason"], f["data"]["user_id"], ident.address(f["data"]["ip"]))
        for f in await failures(dsn)
    ]
    assert got == [
        ("ssh_password", None, "203.0.113.5"),
        ("ssh_invalid_user", None, "2001:db8::5"),
        ("ssh_preauth", None, "203.0.113.5"),
        ("ssh_max_tries", None, "203.0.113.6"),
    ]
    assert [ident.address(f["meta"]["ip"]) for f in await failures(dsn)] == [
        "203.0.113.5",
        "2001:db8::5",
        "203.0.113.5",
        "203.0.113.6",
    ]
    assert "203.0.113" not in await all_events(dsn)
    # the activity log's line names no account
    failed = LoginFailed(user_id=None, ip=None, reason="ssh_invalid_user")
    assert failed.summary() == "failed SSH sign-in (ssh_invalid_user)"


async def test_record_failure_is_the_platform_s_only(ident: Identity, dsn: str) -> None:
    admin = await ident.set_up()
    before = await all_events(dsn)
    body = {"ip": "203.0.113.5", "reason": "ssh_password"}
    for ctx in (
        {"actor": admin},
        {"actor": admin, "admin": True},  # the gateway vouching an administrator
        {"actor": "anonymous", "ip": "203.0.113.5"},
    ):
        with pytest.raises(Forbidden, match="platform's own services"):
            await record(ident, body, **ctx)
    assert await all_events(dsn) == before


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"ip": "not-an-address"}, "ip"),
        ({"ip": "999.1.1.1"}, "ip"),
        ({"ip": "fe80::1%eth0"}, "ip"),
        ({"ip": "198.51.100.0/24"}, "ip"),
        ({"ip": "203.0.\x00113.5"}, "ip"),
        ({"ip": "1" * 5000}, "ip"),
        ({"ip": ""}, "ip"),
        ({"ip": None}, "ip"),
        ({"ip": 3405803781}, "ip"),
        ({"reason": "password"}, "reason"),
        ({"reason": "mail_password"}, "reason"),
        ({"reason": None}, "reason"),
        ({"username": "root"}, "username"),  # no name is taken
    ],
)
async def test_record_failure_bad_input_names_the_field_and_records_nothing(
    ident: Identity, dsn: str, nats_url: str, change: dict[str, Any], field: str
) -> None:
    body = {"ip": "203.0.113.5", "reason": "ssh_password", **change}
    with pytest.raises(Invalid) as e:  # the caller's check of the contract
        await record(ident, body)
    assert e.value.field == field
    nc = await nats.connect(nats_url)
    try:  # and the service's own, for a caller that checks nothing
        unchecked = BusClient(nc, sender=HARNESS, contracts={})
        with pytest.raises(Invalid) as e:
            await unchecked.command("identity", "record_failure", body, ctx=Context("system"))
        assert e.value.field == field
    finally:
        await nc.close()
    assert await failures(dsn) == []
