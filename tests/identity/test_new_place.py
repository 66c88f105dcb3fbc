"""An administrator's sign-in from a place not seen before (issue 19): identity marks the
`SessionStarted` (`new_place`), comparing places as a keyed hash of the client address and the
browser family, never either in clear; the real notify service turns it into a notice in that
administrator's notification centre alone, with the address and browser read back from
identity. A place is known for the retention period of addresses, and a rebuild of the read
model knows the same places."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from libs.events.context import Context
from libs.events.projection import ProjectionRunner
from libs.events.store import PostgresEventStore
from services.identity.projections import IdentityProjection
from tests.identity.kit import ADMIN, Clock, Identity, running_identity
from tests.support.bus import relaying
from tests.support.notify import notify_env, running_notify
from tests.support.waits import wait_until

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/126.0.0.0 Safari/537.36"
)
HOME, AWAY, ELSEWHERE = "192.0.2.1", "198.51.100.1", "203.0.113.9"
TITLE = "New sign-in to your account from an address and browser not seen before"
BO = {
    "username": "bo",
    "email": "bo@example.test",
    "password": "bo's long passphrase",
    "is_admin": True,
}
ALICE = {"username": "alice", "email": "alice@example.test", "password": "a long enough phrase"}
DAY = 86400


@dataclass
class People:
    ident: Identity
    dsn: str
    root: str
    bo: str
    alice: str

    async def sign_in(self, who: dict[str, Any], ip: str, agent: str) -> bool:
        """`who` signs in from `ip` with `agent`: the `new_place` of their SessionStarted."""
        reply = await self.ident.cmd(
            "login",
            {"username": who["username"], "password": who["password"], "user_agent": agent},
            actor="anonymous",
            ip=ip,
        )
        conn = await asyncpg.connect(self.dsn)
        try:
            data = await conn.fetchval(
                "SELECT data FROM events.events WHERE type = 'SessionStarted'"
                " AND data->>'session_id' = $1",
                reply["session_id"],
            )
        finally:
            await conn.close()
        return bool(json.loads(data)["new_place"])

    async def notices(self, user_id: str) -> list[dict[str, Any]]:
        """The sign-in notices in `user_id`'s notification centre (as the gateway asks)."""
        got = await self.ident.bus.query(
            "notify", "notifications", {"limit": 200}, ctx=Context(actor=user_id, admin=True)
        )
        return [n for n in got["items"] if n["title"] == TITLE]


async def people(ident: Identity, dsn: str) -> People:
    root = await ident.set_up()
    bo = (await ident.cmd("create_user", dict(BO), actor=root))["user_id"]
    alice = (await ident.cmd("create_user", dict(ALICE), actor=root))["user_id"]
    return People(ident, dsn, root, str(bo), str(alice))


@pytest.fixture
async def with_notify(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> AsyncIterator[People]:
    (tmp_path / "notify").mkdir()
    env = notify_env(dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path / "notify")
    async with (
        running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as ident,
        relaying(dsn, nats_url, uniq),
        running_notify(monkeypatch, env),
    ):
        yield await people(ident, dsn)


async def test_an_admins_sign_in_from_a_new_place_is_a_notice_to_them_alone(
    with_notify: People, dsn: str
) -> None:
    w = with_notify
    root = {**ADMIN}
    # the first sign-in is from no "new place"; then the same place is known
    assert await w.sign_in(root, HOME, FIREFOX) is False
    assert await w.sign_in(root, HOME, FIREFOX) is False
    # another address, the same browser: new
    assert await w.sign_in(root, AWAY, FIREFOX) is True

    found: list[dict[str, Any]] = []

    async def told() -> bool:
        found[:] = [n for n in await w.notices(w.root) if n["detail"]]
        return bool(found)

    await wait_until(told, 20, "the sign-in notice in root's notification centre")
    (notice,) = found
    assert notice["kind"] == "notice" and notice["category"] == "security", notice
    assert AWAY in notice["detail"] and "Firefox" in notice["detail"], notice

    # the same place again: nothing new; a non-admin's new place: nothing at all
    assert await w.sign_in(root, AWAY, FIREFOX) is False
    assert await w.sign_in(ALICE, HOME, FIREFOX) is False
    assert await w.sign_in(ALICE, ELSEWHERE, CHROME) is False
    # a known address with another browser is another place (bo's, to tell when notify has
    # read everything before it: it follows the log in order)
    assert await w.sign_in(BO, HOME, FIREFOX) is False
    assert await w.sign_in(BO, HOME, CHROME) is True

    async def bo_told() -> bool:
        return any(n["detail"] for n in await w.notices(w.bo))

    await wait_until(bo_told, 20, "the sign-in notice in bo's notification centre")
    (bo_notice,) = await w.notices(w.bo)
    assert HOME in bo_notice["detail"] and "Chrome" in bo_notice["detail"], bo_notice
    assert [n["id"] for n in await w.notices(w.root)] == [notice["id"]]  # to each their own
    assert await w.notices(w.alice) == []

    # places are compared as keyed hashes: no address or browser in clear, in the read model
    # or in the log
    conn = await asyncpg.connect(dsn)
    try:
        places = [dict(r) for r in await conn.fetch("SELECT * FROM identity.known_places")]
        log = await conn.fetch("SELECT data::text AS data FROM events.events")
    finally:
        await conn.close()
    assert len(places) == 6, places  # two places each of root, alice and bo
    text = json.dumps(places, default=str) + " ".join(r["data"] for r in log)
    for clear in (HOME, AWAY, ELSEWHERE, "Firefox", "Chrome"):
        assert clear not in text


async def test_places_are_known_for_the_retention_period_and_after_a_rebuild(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path
) -> None:
    clock = Clock()  # the service's; restarted after each move, as a week's key may be new
    run = {"dsn": dsn, "nats_url": nats_url, "tmp_path": tmp_path, "clock": clock}
    root = {**ADMIN}
    async with running_identity(monkeypatch, **run) as ident:
        w = await people(ident, dsn)
        assert await w.sign_in(root, HOME, FIREFOX) is False
        assert await w.sign_in(root, AWAY, FIREFOX) is True
        # a rebuild of the read model reads the places back from the log
        monkeypatch.setenv("HP_DATA_DIR", str(tmp_path))
        async with await PostgresEventStore.open(dsn, run_migrations=False) as store:
            await ProjectionRunner(IdentityProjection.for_replay(), store).rebuild()
        assert await w.sign_in(root, AWAY, FIREFOX) is False
        assert await w.sign_in(root, HOME, FIREFOX) is False

    clock.advance(29 * DAY)  # within the retention period (30 days): still known
    async with running_identity(monkeypatch, **run) as ident:
        w.ident = ident
        assert await w.sign_in(root, HOME, FIREFOX) is False

    clock.advance(2 * DAY)  # AWAY was last seen 31 days ago: forgotten, so new again
    async with running_identity(monkeypatch, **run) as ident:
        w.ident = ident
        assert await w.sign_in(root, AWAY, FIREFOX) is True
