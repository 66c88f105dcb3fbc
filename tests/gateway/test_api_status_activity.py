"""GET /api/v1/status and GET /api/v1/activity against real NATS and Postgres."""

from __future__ import annotations

import asyncio
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from libs.events import context
from libs.events.bus import Bus
from libs.events.envelope import NewEvent
from libs.events.projection import ProjectionRunner
from libs.events.store import PostgresEventStore
from services.gateway.projections import ActivityProjection
from tests.gateway.apikit import make_cast, running_gateway, serve_api
from tests.identity.kit import running_identity
from tests.support.bus import ActorBus


async def test_status_reports_version_setup_and_health(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path, nc: NATS
) -> None:
    async with serve_api(nc) as client:
        # identity is not running: reported unhealthy, setup state unknown, still 200
        a = await client.call("GET", "/api/v1/status")
        assert a.status == 200
        assert a.body == {
            "version": metadata.version("homeport"),
            "setup_done": None,
            "ok": False,
            "services": [
                {"name": "gateway", "ok": True},
                {"name": "identity", "ok": False, "detail": "not running or not reachable"},
            ],
        }
        async with running_identity(
            monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path
        ) as ident:
            a = await client.call("GET", "/api/v1/status")
            assert a.body["setup_done"] is False and a.body["ok"] is True
            assert a.body["services"][1] == {"name": "identity", "ok": True}
            await ident.set_up()
            a = await client.call("GET", "/api/v1/status")
            assert a.body["setup_done"] is True
        # Fault injection: an identity that answers nonsense (the real one cannot be made to)
        # is unhealthy too.
        bus = Bus(nc, "identity")

        @bus.query("setup_state")
        async def setup_state(payload: dict[str, Any]) -> Any:
            return {"setup": "done"}

        await bus.start()
        try:
            a = await client.call("GET", "/api/v1/status")
        finally:
            await bus.stop(grace=1)
        assert a.body["setup_done"] is None
        assert a.body["services"][1] == {"name": "identity", "ok": False, "detail": "failing"}


async def test_status_when_identity_hangs(nc: NATS) -> None:
    """Fault injection: an identity that never answers (the real one cannot be made to hang)."""
    bus = Bus(nc, "identity")
    gate = asyncio.Event()

    @bus.query("setup_state")
    async def setup_state(payload: dict[str, Any]) -> Any:
        await gate.wait()
        return {"setup_done": True}

    await bus.start()
    try:
        async with serve_api(nc) as client:
            a = await client.call("GET", "/api/v1/status")
        assert a.status == 200 and a.body["setup_done"] is None
        assert a.body["services"][1]["detail"] == "not answering in time"
    finally:
        gate.set()
        await bus.stop(grace=1)


async def _seed(store: PostgresEventStore) -> None:
    with context.use(context.Context(actor="u-root", ip="203.0.113.7")):
        await store.append("app-blog", [NewEvent("AppInstalled", {"location": "blog"})])
        await store.append("user-u1", [NewEvent("UserCreated", {"username": "alice"})])
    with context.use(context.Context(actor="u-alice", ip="198.51.100.2")):
        for i in range(5):
            await store.append("app-blog", [NewEvent("AppRestarted", {"i": i})])


async def test_activity_pages_from_the_event_store(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    nc: NATS,
    store: PostgresEventStore,
) -> None:
    await _seed(store)
    runner = ProjectionRunner(ActivityProjection(), store)
    await runner.setup()
    assert await runner.catch_up() == 7
    # the cast's own events come after the seven and are not caught up: the log shows the seven
    async with (
        running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as ident,
        serve_api(nc, pool=store.pool) as client,
    ):
        cast = await make_cast(ident)
        a = await client.call("GET", "/api/v1/activity", token=cast.token_root)
        assert a.status == 200, a.body
        items = a.body["items"]
        assert [i["position"] for i in items] == [7, 6, 5, 4, 3, 2, 1]
        assert a.body["next_cursor"] is None
        first = items[-1]
        assert (first["actor"], first["ip"], first["type"], first["target"]) == (
            "u-root",
            "203.0.113.7",
            "AppInstalled",
            "app-blog",
        )
        # pages: limit and cursor, newest first, each event once
        seen: list[int] = []
        query = "limit=3"
        while True:
            a = await client.call("GET", f"/api/v1/activity?{query}", session=cast.session_root)
            assert a.status == 200
            seen += [i["position"] for i in a.body["items"]]
            if a.body["next_cursor"] is None:
                break
            query = f"limit=3&cursor={a.body['next_cursor']}"
        assert seen == [7, 6, 5, 4, 3, 2, 1]
        # filters reach activity_query
        a = await client.call("GET", "/api/v1/activity?actor=u-root", token=cast.token_root)
        assert [i["position"] for i in a.body["items"]] == [2, 1]
        a = await client.call(
            "GET", "/api/v1/activity?type=UserCreated&target=user", token=cast.token_root_read
        )
        assert [i["type"] for i in a.body["items"]] == ["UserCreated"]
        a = await client.call(
            "GET", "/api/v1/activity?since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z",
            token=cast.token_root,
        )  # fmt: skip
        assert a.body == {"items": [], "next_cursor": None}
        # activity_query's own checks still name the field
        a = await client.call(
            "GET", "/api/v1/activity?cursor=bm90LWEtY3Vyc29y", token=cast.token_root
        )
        assert a.status == 400 and a.body["field"] == "cursor"
        a = await client.call(
            "GET",
            "/api/v1/activity?since=2026-11-22T09:00:00Z&until=2026-11-22T08:00:00Z",
            token=cast.token_root,
        )
        assert a.status == 400 and a.body["field"] == "since"
        # only admins
        a = await client.call("GET", "/api/v1/activity", session=cast.session_alice)
        assert a.status == 403
        a = await client.call("GET", "/api/v1/activity")
        assert a.status == 401


async def test_activity_and_status_through_the_running_gateway(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    nc: NATS,
    store: PostgresEventStore,
) -> None:
    """The production wiring: the activity projection of the gateway and the API beside it."""
    await _seed(store)
    async with (
        running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as ident,
        running_gateway(
            monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
        ) as gw,
    ):
        cast = await make_cast(ident, sessions=False)  # its events follow the seven
        client = gw.client
        # the gateway caught up at start; what is appended now is caught up here
        with context.use(context.Context(actor="u-bob", ip="192.0.2.9")):
            await store.append("group-g1", [NewEvent("GroupCreated", {"name": "family"})])
        last = await store.head()
        runner = ProjectionRunner(ActivityProjection(), store)
        await runner.catch_up()
        a = await client.call("GET", "/api/v1/activity?limit=2", token=cast.token_root)
        assert a.status == 200, a.body
        assert [i["position"] for i in a.body["items"]] == [last, last - 1]
        bob = a.body["items"][0]
        assert (bob["actor"], bob["type"], bob["target"], bob["ip"]) == (
            "u-bob",
            "GroupCreated",
            "group-g1",
            "192.0.2.9",
        )
        assert a.body["next_cursor"]
        a = await client.call("GET", "/api/v1/activity?limit=0", token=cast.token_root)
        assert a.status == 400 and a.body["field"] == "limit"
        a = await client.call("GET", "/api/v1/status")
        assert a.body["setup_done"] is True and a.body["ok"] is True
        # what was there keeps working: the dashboard page, the probes, the bus query
        a = await client.call("GET", "/")
        assert a.status == 200 and b'<div id="root">' in a.body
        assert a.headers["X-Frame-Options"] == "DENY"
        a = await client.call("GET", "/healthz")
        assert a.status == 200 and a.headers["X-Content-Type-Options"] == "nosniff"
        page = await ActorBus(nc).query("gateway", "activity", {"limit": 1})
        assert page["items"][0]["position"] == last
