"""Addresses with too many failed sign-ins land in the firewall's ban set within 5 s, leave it
when their ban ends, and are banned twice as long the next time (SECURITY.md "Brute force").

The service runs for real with HP_FIREWALL_APPLY=true, its nft commands inside a network
namespace this test creates, so the host's packet filter is never touched. The kernel ends a
ban in real time; the ban windows and the ends the service reads are also driven by a clock
the test holds (`test_ban_windows_and_ends_follow_the_clock`), without waiting.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from libs.events.context import Context, use
from libs.events.envelope import RecordedEvent
from libs.events.periods import PeriodKeys
from libs.events.projection import ProjectionRunner, known_projections, replay_by_name
from libs.events.store import PostgresEventStore
from libs.service.config import ConfigError
from services.firewall.bans import BanEnforcer
from services.firewall.config import BanPolicy
from services.firewall.nft import BanSet, Nft
from services.firewall.projections import BanProjection, active_bans
from services.identity.events import SIGNIN_FAILURES_STREAM, LoginFailed
from tests.firewall.netkit import listen, network, probe
from tests.support.bus import relaying
from tests.support.firewall import firewall_env
from tests.support.serving import serving
from tests.support.waits import wait_until

ATTACKER = "198.51.100.66"
BASE = 3  # seconds of a first ban in this test (600 by default)


async def fail(store: PostgresEventStore, ip: str, n: int) -> None:
    for _ in range(n):
        with use(Context(actor="anonymous", ip=ip)):
            await store.append(
                SIGNIN_FAILURES_STREAM, [LoginFailed(user_id=None, ip=ip, reason="password")]
            )


@pytest.fixture
async def firewall(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    netns: str,
    ban_set: BanSet,
) -> AsyncIterator[BanSet]:
    """The firewall service applying bans in `netns`, fed by a relay of this test's events."""
    from services.firewall.__main__ import build

    extra = {
        "HP_KEYRING": str(tmp_path / "keyring.json"),
        "HP_FIREWALL_APPLY": "true",
        "HP_FIREWALL_NFT": f"ip,netns,exec,{netns},nft",
        "HP_BAN_SECONDS": str(BASE),
    }
    env = firewall_env(dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path, extra=extra)
    async with relaying(dsn, nats_url, uniq), serving(monkeypatch, build, env, "the firewall"):
        yield ban_set


async def test_five_failures_ban_within_5_s_then_unban_then_double(
    firewall: BanSet, dsn: str
) -> None:
    store = await PostgresEventStore.open(dsn, max_size=2)
    try:
        table = await firewall.listing()
        assert "ip saddr @banned4 drop" in table and "ip6 saddr @banned6 drop" in table
        assert "tcp dport 22 ct state new" in table  # the SSH rule

        await fail(store, ATTACKER, 4)
        await fail(store, "203.0.113.9", 6)  # another address: its own count, its own ban
        # Once the later address is in the set, the attacker's four earlier failures have been
        # applied and reconciled too (the projection goes in log order, a round adds every ban).
        await wait_until(lambda: _has(firewall, "203.0.113.9"), 5, "the other address's ban")
        assert ATTACKER not in await firewall.elements()

        await fail(store, ATTACKER, 1)  # the fifth within 600 s
        t0 = time.monotonic()
        await wait_until(
            lambda: _has(firewall, ATTACKER), 5, "the address in the ban set within 5 s"
        )
        assert time.monotonic() - t0 < 5
        held = await firewall.elements()  # set for what remains of the ban (whole seconds)
        assert BASE - 2 <= held[ATTACKER] <= BASE and BASE - 2 <= held["203.0.113.9"] <= BASE

        # the kernel drops it when the ban ends
        await wait_until(lambda: _gone(firewall, ATTACKER), BASE + 5, "the ban to end")

        # failures during the ban do not count again; five more afterwards: twice as long
        await fail(store, ATTACKER, 5)
        try:
            await wait_until(lambda: _has(firewall, ATTACKER), 5, "the second ban")
        except AssertionError:
            rows = await store.pool.fetch("SELECT * FROM firewall.bans")
            fails = await store.pool.fetch("SELECT * FROM firewall.failures ORDER BY at")
            raise AssertionError([dict(r) for r in rows], [dict(r) for r in fails]) from None
        assert 2 * BASE - 2 <= (await firewall.elements())[ATTACKER] <= 2 * BASE

        # the bans are derived from the log: a rebuild gives the same
        async def bans() -> list[tuple[str, int, float]]:
            rows = await store.pool.fetch(
                "SELECT host(ip) AS ip, strikes, extract(epoch FROM until - since) AS seconds"
                " FROM firewall.bans ORDER BY ip, since"
            )
            return [(r["ip"], r["strikes"], float(r["seconds"])) for r in rows]

        before = await bans()
        assert before == [(ATTACKER, 1, BASE), (ATTACKER, 2, 2 * BASE), ("203.0.113.9", 1, BASE)]
        await replay_by_name("firewall_bans", dsn)
        assert await bans() == before
    finally:
        await store.close()


async def _has(bans: BanSet, ip: str) -> bool:
    return ip in await bans.elements()


async def _gone(bans: BanSet, ip: str) -> bool:
    return ip not in await bans.elements()


async def test_more_than_5_new_ssh_connections_in_10_s_are_dropped() -> None:
    """From outside (another namespace): 8 new connections within a few seconds, the first 5
    get through. The host's own loopback is never limited."""
    with network() as net, listen(net.srv, (22,)):
        table = BanSet(Nft(["ip", "netns", "exec", net.srv, "nft"]), "homeport")
        await table.install()
        seen = [await asyncio.to_thread(probe, net.cli, "192.0.2.1", 22) for _ in range(8)]
        assert seen == ["open"] * 5 + ["dropped"] * 3
        seen6 = [await asyncio.to_thread(probe, net.cli, "2001:db8::1", 22) for _ in range(6)]
        assert seen6 == ["open"] * 5 + ["dropped"]
        local = [await asyncio.to_thread(probe, net.srv, "127.0.0.1", 22) for _ in range(8)]
        assert local == ["open"] * 8


class Clock:
    """The time the firewall's code reads, moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _failure(ip: str, at: datetime, position: int) -> RecordedEvent:
    return RecordedEvent(
        position=position,
        id=uuid.uuid4(),
        stream=SIGNIN_FAILURES_STREAM,
        version=position,
        type="LoginFailed",
        schema=1,
        data={"user_id": None, "ip": ip, "reason": "password"},
        meta={"actor": "anonymous", "ip": ip},
        recorded_at=at,
        hash=b"",
    )


async def test_ban_windows_and_ends_follow_the_clock(dsn: str, ban_set: BanSet) -> None:
    """The same policy as the service's defaults, over 20 minutes of failures, in no time."""
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    clock = Clock(t0)
    projection = BanProjection(BanPolicy(), clock=clock)  # 5 failures in 600 s: 600 s ban
    store = await PostgresEventStore.open(dsn, max_size=2)
    position = 0

    async def failures_at(*seconds: float) -> None:
        nonlocal position
        events = []
        for s in seconds:
            position += 1
            events.append(_failure(ATTACKER, t0 + timedelta(seconds=s), position))
        clock.now = events[-1].recorded_at
        async with store.pool.acquire() as conn, conn.transaction():
            await projection.apply(conn, events)

    async def bans() -> list[tuple[int, float, float]]:
        rows = await store.pool.fetch(
            "SELECT strikes, extract(epoch FROM since - $1::timestamptz) AS since,"
            " extract(epoch FROM until - since) AS seconds FROM firewall.bans ORDER BY since",
            t0,
        )
        return [(r["strikes"], float(r["since"]), float(r["seconds"])) for r in rows]

    try:
        await ProjectionRunner(projection, store).setup()
        await ban_set.install()

        # five failures, but the fifth 700 s after the first: only three within the window
        await failures_at(0, 100, 200, 300, 700)
        assert await bans() == []
        # two more: five within 600 s (200, 300, 700, 701, 702), a first ban of 600 s
        await failures_at(701, 702)
        assert await bans() == [(1, 702, 600)]

        # the set holds a ban for what remains of it, rounded up; once applied, not again
        clock.now = t0 + timedelta(seconds=702 + 600 - 2.5)
        enforcer = BanEnforcer(ban_set, store.pool, clock=clock)
        assert await enforcer.reconcile() == 1
        assert (await ban_set.elements())[ATTACKER] == 3
        assert await enforcer.reconcile() == 0
        # a ban that has ended is not put back (a restart after it ended)
        clock.now = t0 + timedelta(seconds=702 + 600)
        assert await BanEnforcer(ban_set, store.pool, clock=clock).reconcile() == 0

        # failures during the ban make no ban; five after it (the others out of the window):
        # twice as long
        await failures_at(750, 751, 752, 753, 754)
        assert await bans() == [(1, 702, 600)]
        await failures_at(1400, 1401, 1402, 1403, 1404)
        assert await bans() == [(1, 702, 600), (2, 1404, 1200)]
        clock.now = t0 + timedelta(seconds=1404 + 1200 - 0.5)
        assert await BanEnforcer(ban_set, store.pool, clock=clock).reconcile() == 1
        # failures too old to count again are pruned, by the clock
        assert await store.pool.fetchval("SELECT min(at) FROM firewall.failures") == (
            t0 + timedelta(seconds=1400)
        )
    finally:
        await store.close()


def test_replay_builds_the_ban_projection_from_the_services_ban_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HP_BAN_FAILURES", "3")
    monkeypatch.setenv("HP_BAN_SECONDS", "60")
    rebuilt = known_projections()["firewall_bans"].for_replay()
    assert isinstance(rebuilt, BanProjection)
    assert (rebuilt.failures, rebuilt.window, rebuilt.base) == (3, 600, 60)
    monkeypatch.setenv("HP_BAN_FAILURES", "-1")
    with pytest.raises(ConfigError, match="HP_BAN_FAILURES"):
        known_projections()["firewall_bans"].for_replay()


async def test_sealed_failures_ban_while_their_week_key_exists(
    firewall: BanSet, dsn: str, tmp_path: Path
) -> None:
    """Identity seals a failure's address to its week (libs/events/periods.py); the service
    reads it back with identity's key file (here the shared data dir's) and bans as before."""
    keys = PeriodKeys(tmp_path / "ip-keys.json")  # identity's, which made this week's key
    store = await PostgresEventStore.open(dsn, max_size=2, addresses=keys)
    try:
        for _ in range(5):
            with use(Context(actor="anonymous", ip=ATTACKER)):
                failed = LoginFailed(user_id=None, ip=keys.seal(ATTACKER), reason="password")
                await store.append(SIGNIN_FAILURES_STREAM, [failed])
        rows = await store.pool.fetch("SELECT data::text || meta::text AS row FROM events.events")
        assert rows and not any(ATTACKER in r["row"] for r in rows)
        await wait_until(lambda: _has(firewall, ATTACKER), 5, "the sealed address's ban")
    finally:
        await store.close()


async def test_failures_whose_week_expired_earn_no_ban_and_break_nothing(
    dsn: str, tmp_path: Path
) -> None:
    """Past the retention period an old failure's address is unreadable: applying it (a late
    delivery, a rebuild) is skipped; recent failures still ban."""
    t0 = datetime(2030, 1, 2, tzinfo=UTC)
    clock = Clock(t0)
    path = tmp_path / "ip-keys.json"
    keys = PeriodKeys(path, clock=clock)  # identity's
    old = [keys.seal(ATTACKER) for _ in range(5)]
    clock.now = t0 + timedelta(days=40)
    assert keys.housekeep(timedelta(days=30))  # identity's housekeeping destroys that week
    projection = BanProjection(BanPolicy(), clock=clock, addresses=PeriodKeys(path, writer=False))
    store = await PostgresEventStore.open(dsn, max_size=2)
    try:
        await ProjectionRunner(projection, store).setup()
        events = [_failure(ip, clock.now + timedelta(seconds=i), i + 1) for i, ip in enumerate(old)]
        async with store.pool.acquire() as conn, conn.transaction():
            await projection.apply(conn, events)
        assert await store.pool.fetchval("SELECT count(*) FROM firewall.failures") == 0
        assert await store.pool.fetchval("SELECT count(*) FROM firewall.bans") == 0
        recent = [
            _failure(keys.seal(ATTACKER), clock.now + timedelta(seconds=10 + i), 6 + i)
            for i in range(5)
        ]
        async with store.pool.acquire() as conn, conn.transaction():
            await projection.apply(conn, recent)
        assert await active_bans(store.pool, clock.now + timedelta(seconds=15)) == {
            ATTACKER: clock.now + timedelta(seconds=14 + 600)
        }
    finally:
        await store.close()
