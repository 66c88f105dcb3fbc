"""Client addresses and browser strings that expire (issue 16): identity seals them to their
week's key in every event it appends, keeps a plain copy in its read model only while a rule
needs one, destroys weeks past HP_IP_RETENTION_DAYS, and reads them back for administrators."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest

from libs.events.bus import Forbidden, Unauthorized
from libs.events.periods import is_period_sealed
from libs.events.store import PostgresEventStore
from libs.service.config import ConfigError, load_config
from services.identity.config import IdentityConfig
from tests.identity.kit import Clock, Identity, running_identity

ALICE = {"username": "alice", "email": "alice@example.test", "password": "a long enough phrase"}
OLD_IP, NEW_IP, STRANGER = "198.51.100.31", "198.51.100.32", "203.0.113.33"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0"
DAY = 86400


def test_a_bad_retention_is_refused_naming_it() -> None:
    base = {"HP_DATABASE_URL": "postgresql://x/y", "HP_NATS_URL": "nats://x"}
    for bad in ("0", "3651", "-5", "thirty", "1.5"):
        with pytest.raises(ConfigError) as e:
            load_config(IdentityConfig, {**base, "HP_IP_RETENTION_DAYS": bad})
        assert len(e.value.problems) == 1
        assert e.value.problems[0].startswith("HP_IP_RETENTION_DAYS: expected")
        assert "1-3650" in e.value.problems[0]
    assert load_config(IdentityConfig, base).ip_retention_days == 30
    for good in ("1", "3650"):
        cfg = load_config(IdentityConfig, {**base, "HP_IP_RETENTION_DAYS": good})
        assert cfg.ip_retention_days == int(good)
    cfg = load_config(IdentityConfig, {**base, "HP_DATA_DIR": "/srv/id"})
    assert cfg.ip_keys_path == Path("/srv/id/ip-keys.json")


async def rows(dsn: str) -> list[dict[str, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        got = await conn.fetch(
            "SELECT position, type, data::text AS data, meta::text AS meta, hash"
            " FROM events.events ORDER BY position"
        )
    finally:
        await conn.close()
    return [dict(r) for r in got]


async def sign_ins(ident: Identity, ip: str) -> tuple[str, str]:
    """Alice signs in from `ip` with BROWSER, and a stranger fails as alice from STRANGER;
    returns (alice's id, the session)."""
    reply = await ident.cmd(
        "login",
        {"username": "alice", "password": ALICE["password"], "user_agent": BROWSER},
        actor="anonymous",
        ip=ip,
    )
    with pytest.raises(Unauthorized):
        await ident.login("alice", "not her password", ip=STRANGER)
    return str(reply["user_id"]), str(reply["session"])


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_events_hold_addresses_only_sealed_and_they_expire(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path, clock: Clock
) -> None:
    env = {"HP_IP_RETENTION_DAYS": "30"}
    run = {"dsn": dsn, "nats_url": nats_url, "tmp_path": tmp_path, "env": env, "clock": clock}
    async with running_identity(monkeypatch, **run) as ident:
        admin = await ident.set_up()
        await ident.cmd("create_user", dict(ALICE), actor=admin)
        alice, _ = await sign_ins(ident, OLD_IP)
        # the read model keeps what its rules need, in clear: the sessions list, the limits
        (item,) = (await ident.ask("sessions", {"user_id": alice}, actor=alice))["items"]
        assert (item["ip"], item["user_agent"]) == (OLD_IP, BROWSER)
        # the events table holds no address or browser string in clear, anywhere in a row
        before = await rows(dsn)
        text = json.dumps(before, default=str)
        assert OLD_IP not in text and STRANGER not in text and "Firefox" not in text
        started = next(r for r in before if r["type"] == "SessionStarted")
        failed = next(r for r in before if r["type"] == "LoginFailed")
        sealed = [
            json.loads(started["data"])["ip"],
            json.loads(started["data"])["user_agent"],
            json.loads(started["meta"])["ip"],
            json.loads(failed["data"])["ip"],
        ]
        assert all(is_period_sealed(v) for v in sealed)
        assert [ident.address(v) for v in sealed] == [OLD_IP, BROWSER, OLD_IP, STRANGER]
        # administrators read them back (the activity log); nobody else
        got = await ident.ask("addresses", {"values": sealed}, actor=admin)
        assert got == {"values": [OLD_IP, BROWSER, OLD_IP, STRANGER]}
        with pytest.raises(Forbidden):
            await ident.ask("addresses", {"values": sealed}, actor=alice)

    clock.advance(40 * DAY)  # identity's housekeeping at start destroys the weeks past 30 days
    async with running_identity(monkeypatch, **run) as ident:
        assert await ident.ask("addresses", {"values": sealed}, actor=admin) == {
            "values": [None] * 4
        }
        assert [ident.address(v) for v in sealed] == [None] * 4
        # new ones are sealed to this week's key and readable
        await sign_ins(ident, NEW_IP)
        after = await rows(dsn)
        assert after[: len(before)] == before  # expiry changed no stored row
        new = [r for r in after[len(before) :] if r["type"] == "SessionStarted"]
        fresh = json.loads(new[-1]["meta"])["ip"]
        assert await ident.ask("addresses", {"values": [fresh, *sealed[:1]]}, actor=admin) == {
            "values": [NEW_IP, None]
        }
        assert NEW_IP not in json.dumps(after, default=str)
        # the read model forgot the old address (kept no longer than the retention period)
        conn = await asyncpg.connect(dsn)
        try:
            known = await conn.fetch("SELECT ip FROM identity.known_addresses")
        finally:
            await conn.close()
        assert OLD_IP not in [r["ip"] for r in known]
        # the chain still verifies: rows were never touched
        async with await PostgresEventStore.open(dsn, run_migrations=False) as store:
            report = await store.verify_chain()
        assert report.ok and report.checked == len(after)


async def test_a_rebuild_keeps_readable_addresses_only(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path, clock: Clock
) -> None:
    from libs.events.projection import ProjectionRunner
    from services.identity.projections import IdentityProjection

    run = {"dsn": dsn, "nats_url": nats_url, "tmp_path": tmp_path, "clock": clock}
    async with running_identity(monkeypatch, **run) as ident:
        admin = await ident.set_up()
        await ident.cmd("create_user", dict(ALICE), actor=admin)
        alice, _ = await sign_ins(ident, OLD_IP)
        monkeypatch.setenv("HP_DATA_DIR", str(tmp_path))
        async with await PostgresEventStore.open(dsn, run_migrations=False) as store:
            await ProjectionRunner(IdentityProjection.for_replay(), store).rebuild()
        (item,) = (await ident.ask("sessions", {"user_id": alice}, actor=alice))["items"]
        assert (item["ip"], item["user_agent"]) == (OLD_IP, BROWSER)
        # without the key file, a rebuild keeps no sealed address (never the sealed text)
        monkeypatch.setenv("HP_DATA_DIR", str(tmp_path / "elsewhere"))
        async with await PostgresEventStore.open(dsn, run_migrations=False) as store:
            await ProjectionRunner(IdentityProjection.for_replay(), store).rebuild()
        (item,) = (await ident.ask("sessions", {"user_id": alice}, actor=alice))["items"]
        assert (item["ip"], item["user_agent"]) == (None, None)
