"""The activity log: projection of every event, filters, keyset pages, nothing sealed shown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nats.aio.client import Client as NATS

from libs.contracts.gateway import CONTRACT
from libs.events import context
from libs.events.bus import Invalid
from libs.events.envelope import NewEvent
from libs.events.periods import PeriodKeys
from libs.events.projection import ProjectionRunner
from libs.events.store import PostgresEventStore
from services.gateway.activity_names import Row
from services.gateway.activity_text import refs_of
from services.gateway.projections import ActivityProjection
from services.gateway.queries import (
    ADDRESS_EXPIRED,
    ADDRESS_UNAVAILABLE,
    _filtered,
    activity_query,
)
from tests.gateway.apikit import make_cast, serve_api
from tests.identity.kit import running_identity
from tests.support.bus import ActorBus, connect
from tests.support.waits import wait_until

REPO = Path(__file__).resolve().parents[2]
SEALED = "hp:sealed:v1:k1:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo"


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def _seed(store: PostgresEventStore) -> None:
    with context.use(context.Context(actor="admin", ip="203.0.113.7", correlation_id="c1")):
        await store.append(
            "app-blog",
            [
                NewEvent(
                    "AppInstalled",
                    {"location": "blog", "db_password": SEALED},
                    meta={"summary": "Installed Static site at blog"},
                )
            ],
        )
        await store.append(
            "user-u1",
            [
                NewEvent(
                    "UserCreated", {"username": "alice"}, meta={"summary": f"Created user {SEALED}"}
                )
            ],
        )
    with context.use(context.Context(actor="alice", ip="198.51.100.2")):
        for i in range(23):
            await store.append("app-blog", [NewEvent("AppRestarted", {"i": i})])
    await store.append("app-wiki", [NewEvent("AppStopped", {})])


async def test_projection_rows_say_who_what_on_what_and_hide_sealed_values(
    store: PostgresEventStore,
) -> None:
    await _seed(store)
    runner = ProjectionRunner(ActivityProjection(), store)
    await runner.setup()
    assert await runner.catch_up() == 26
    page = await activity_query(store.pool, {"limit": 200})
    items = page["items"]
    assert [i["position"] for i in items] == list(range(26, 0, -1))
    first, second = items[-1], items[-2]
    assert first["actor"] == "admin" and first["ip"] == "203.0.113.7"
    assert first["type"] == "AppInstalled" and first["target"] == "app-blog"
    assert first["summary"] == "Installed Static site at blog"
    assert second["summary"] == "Created user [sealed]"
    assert items[0]["summary"] == "AppStopped on app-wiki" and items[0]["actor"] == "system"
    assert "hp:sealed" not in json.dumps(page)
    dump = await store.pool.fetchval("SELECT json_agg(a)::text FROM gateway.activity a")
    assert "hp:sealed" not in dump
    assert page["next_cursor"] is None


async def test_filters_and_keyset_pages(store: PostgresEventStore) -> None:
    await _seed(store)
    runner = ProjectionRunner(ActivityProjection(), store)
    await runner.setup()
    await runner.catch_up()
    q = store.pool

    async def positions(**payload: Any) -> list[int]:
        return [i["position"] for i in (await activity_query(q, payload))["items"]]

    assert await positions(actor="admin") == [2, 1]
    assert await positions(type="AppStopped") == [26]
    assert await positions(target="app-wiki") == [26]
    assert len(await positions(target="app", limit=200)) == 25
    assert await positions(target="user") == [2]
    assert await positions(since=(datetime.now(UTC) + timedelta(hours=1)).isoformat()) == []
    assert (
        len(await positions(until=(datetime.now(UTC) + timedelta(hours=1)).isoformat(), limit=200))
        == 26
    )
    # keyset pages of 10: 26..17, 16..7, 6..1 — each event once, newest first
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        payload: dict[str, Any] = {"limit": 10}
        if cursor:
            payload["cursor"] = cursor
        page = await activity_query(q, payload)
        seen += [i["position"] for i in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == list(range(26, 0, -1))
    # a page is stable while new events arrive: keyset, not offset
    first = await activity_query(q, {"limit": 5})
    await store.append("app-new", [NewEvent("AppInstalled", {})])
    await runner.catch_up()
    nxt = await activity_query(q, {"limit": 5, "cursor": first["next_cursor"]})
    assert [i["position"] for i in nxt["items"]] == [21, 20, 19, 18, 17]


async def test_each_filter_is_read_through_its_index(store: PostgresEventStore) -> None:
    """Every text filter of a page finds its rows through its index (migrations/0007: the
    hash of the text, then the position), newest first, with nothing of another value."""
    await _seed(store)
    runner = ProjectionRunner(ActivityProjection(), store)
    await runner.setup()
    await runner.catch_up()
    filters = {
        "actor": ({"actor": "admin"}, [2, 1]),
        "type": ({"type": "AppStopped"}, [26]),
        "stream": ({"target": "app-wiki"}, [26]),
        "category": ({"target": "user"}, [2]),
    }
    async with store.pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")  # a 26-row table: else a scan
        for column, (payload, want) in filters.items():
            w = _filtered(payload)
            lines = await conn.fetch(f"EXPLAIN {Row.select(w.sql, w.bind(50))}", *w.args)
            plan = "\n".join(r[0] for r in lines)
            assert f"using activity_{column} " in plan.lower(), plan
            got = [i["position"] for i in (await activity_query(store.pool, payload))["items"]]
            assert got == want, column


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 201}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "not-a-cursor!"}, "cursor"),
        # past what Postgres compares (bigint), and a digit that is not ASCII: still a 400
        ({"cursor": "YTo5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5"}, "cursor"),
        ({"cursor": "YTrZow"}, "cursor"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-11-22T08:00:00"}, "until"),
        ({"since": "2026-11-22T09:00:00Z", "until": "2026-11-22T08:00:00Z"}, "since"),
        ({"type": "app installed"}, "type"),
        ({"target": "App Blog"}, "target"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_bad_filters_name_the_field(
    store: PostgresEventStore, payload: dict[str, Any], field: str
) -> None:
    """The contract refuses a filter of the wrong shape, the query one that makes no sense."""
    runner = ProjectionRunner(ActivityProjection(), store)
    await runner.setup()
    with pytest.raises(Invalid) as e:
        CONTRACT.check("qry", "activity", payload)  # what the bus does before the query
        await activity_query(store.pool, payload)
    assert e.value.field == field


async def test_activity_query_on_the_bus_from_running_relay_and_gateway(
    store: PostgresEventStore, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> None:
    """The gateway and relay as processes: an event appended shows in the query over NATS."""
    from deploy.embedded import free_port

    port = free_port()
    env = {
        **os.environ,
        "HP_DATABASE_URL": dsn,
        "HP_NATS_URL": nats_url,
        "HP_EVENTS_STREAM": f"EV_{uniq}",
        "HP_EVENTS_PREFIX": f"t{uniq}.evt",
        "HP_KEYRING": str(tmp_path / "keyring.json"),
        "HP_DATA_DIR": str(tmp_path),
        "HP_DRAIN_SECONDS": "3",
    }
    await _seed(store)
    log = open(tmp_path / "procs.log", "ab")
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            cwd=REPO,
            stdout=log,
            stderr=log,
            env={**env, "HP_HTTP_PORT": str(p)},
        )
        for module, p in (("libs.events.relay", free_port()), ("services.gateway", port))
    ]
    log.close()
    nc = await connect(nats_url)
    try:
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until(ready, 30, "the gateway to be ready")
        client = ActorBus(nc)
        page = await client.query("gateway", "activity", {"limit": 3})
        assert [i["position"] for i in page["items"]] == [26, 25, 24]
        with context.use(context.Context(actor="bob", ip="192.0.2.9")):
            await store.append("group-g1", [NewEvent("GroupCreated", {"name": "family"})])

        async def shows_bob() -> bool:
            p = await client.query("gateway", "activity", {"actor": "bob"})
            return bool(p["items"])

        await wait_until(shows_bob, 20, "the new event in the activity log")
        item = (await client.query("gateway", "activity", {"actor": "bob"}))["items"][0]
        assert (item["type"], item["target"], item["ip"]) == (
            "GroupCreated",
            "group-g1",
            "192.0.2.9",
        )
        with pytest.raises(Invalid) as e:
            await client.query("gateway", "activity", {"limit": 0})
        assert e.value.field == "limit"
    finally:
        await nc.close()
        for p in procs:
            if p.returncode is None:
                p.send_signal(signal.SIGTERM)
        codes = [await asyncio.wait_for(p.wait(), 20) for p in procs]
    assert codes == [0, 0], (tmp_path / "procs.log").read_text()[-4000:]


async def test_odd_events_give_clean_rows_the_same_live_and_rebuilt(
    store: PostgresEventStore,
) -> None:
    long = "word " * 100
    cases = [
        ({"summary": "  multi\n\tline   summary  "}, "summary", "multi line summary"),
        ({"summary": long}, "summary", long.strip()[:299] + "…"),
        ({"summary": " \n\t "}, "summary", "ThingHappened on thing-odd"),
        ({"summary": 42}, "summary", "ThingHappened on thing-odd"),
        ({"actor": 123}, "actor", "system"),
        ({"actor": ""}, "actor", "system"),
        ({"actor": f"svc {SEALED}"}, "actor", "svc [sealed]"),
        ({"ip": SEALED}, "ip", "[sealed]"),
        ({"summary": "tab\tnewline\nvertical\x0bend v"}, "summary", "tab newline vertical end v"),
        # the caps count characters, not bytes: 300 two-byte ones are kept whole, 301 cut
        ({"summary": "é" * 300}, "summary", "é" * 300),
        ({"summary": "é" * 301}, "summary", "é" * 299 + "…"),
        ({"actor": "ü" * 200}, "actor", "ü" * 200),
        ({"actor": "a" * 150 + "ü" * 60}, "actor", "a" * 150 + "ü" * 50),
        ({"actor": "x" * 250}, "actor", "x" * 200),
        ({"actor": f"{'y' * 195} {SEALED}"}, "actor", f"{'y' * 195} [sea"),
        ({"ip": "2001:db8::" + "f" * 60}, "ip", ("2001:db8::" + "f" * 60)[:64]),
        # "when" is the time the store recorded the event, whatever a client claims
        ({"occurred_at": "2026-11-22T08:00:00Z"}, "occurred_at", "recorded"),
        ({"occurred_at": "yesterday"}, "occurred_at", "recorded"),
    ]
    for meta, _, _ in cases:
        await store.append("thing-odd", [NewEvent("ThingHappened", {}, meta=meta)])
    events = await store.read_all(0, 100)
    runner = ProjectionRunner(ActivityProjection(), store)
    await runner.setup()

    async def rows() -> list[dict[str, Any]]:
        got = await store.pool.fetch("SELECT * FROM gateway.activity ORDER BY position")
        return [dict(r) for r in got]

    assert await runner.apply_batch(events) == len(cases)  # the live path
    live = await rows()
    assert await runner.rebuild() == len(cases)  # pages straight from Postgres
    assert await rows() == live
    for (meta, column, want), row, ev in zip(cases, live, events, strict=True):
        got = row[column]
        if column == "occurred_at":
            assert got == ev.recorded_at, meta
        else:
            assert got == want, meta


async def test_sealed_addresses_are_read_back_by_identity_until_they_expire(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    nc: NATS,
    store: PostgresEventStore,
) -> None:
    """Client addresses are sealed to their week's key (issue 16); the gateway holds no key
    and asks identity for a page's addresses: past the retention period, "address expired"."""
    old_ip, new_ip = "198.51.100.71", "198.51.100.72"
    async with (
        running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as ident,
        serve_api(nc, pool=store.pool) as client,
    ):
        cast = await make_cast(ident)
        # identity's key file, on a clock of this test's (identity's own stays at now)
        clock = Clock(datetime.now(UTC))
        keys = PeriodKeys(tmp_path / "ip-keys.json", clock=clock)
        store.seal_addresses_with(keys)
        with context.use(context.Context(actor="admin", ip=old_ip)):
            await store.append("thing-old", [NewEvent("ThingHappened", {})])
        clock.now += timedelta(days=40)
        assert keys.housekeep(timedelta(days=30))  # what identity's housekeeping does
        with context.use(context.Context(actor="admin", ip=new_ip)):
            await store.append("thing-new", [NewEvent("ThingHappened", {})])
        rows = await store.pool.fetch("SELECT meta::text AS meta FROM events.events")
        assert not any(ip in r["meta"] for r in rows for ip in (old_ip, new_ip))

        runner = ProjectionRunner(ActivityProjection(), store)
        await runner.setup()
        await runner.catch_up()
        a = await client.call("GET", "/api/v1/activity?target=thing", token=cast.token_root)
        assert a.status == 200, a.body
        shown = [(i["target"], i["ip"]) for i in a.body["items"]]
        assert shown == [("thing-new", new_ip), ("thing-old", ADDRESS_EXPIRED)]
        assert "hp:sealed" not in json.dumps(a.body)
        dump = await store.pool.fetchval("SELECT json_agg(a)::text FROM gateway.activity a")
        assert old_ip not in dump and new_ip not in dump
        # a caller who cannot reach identity's key is shown nothing of the address
        page = await activity_query(store.pool, {"target": "thing"})
        assert [i["ip"] for i in page["items"]] == [ADDRESS_UNAVAILABLE] * 2


_REFS_COLUMN = (
    "SELECT count(*) FROM information_schema.columns"
    " WHERE table_schema = 'gateway' AND table_name = 'activity' AND column_name = 'refs'"
)


async def test_an_upgraded_log_keeps_its_rows_and_names_a_moved_app_at_its_latest_place(
    store: PostgresEventStore, tmp_path: Path
) -> None:
    """The fields a sentence names are read from the events when a page is shown (0006 drops
    them from the rows): a log projected before keeps its rows and checkpoint through the
    upgrade, and an app reads at the place of its latest move, not of a later change that
    left its place alone."""
    app = "7c0e5a5e-0000-4000-8000-0000000000ab"
    before = tmp_path / "migrations"
    before.mkdir()
    for f in sorted(ActivityProjection.migrations.glob("*.sql")):  # type: ignore[union-attr]
        if int(f.name[:4]) <= 5:
            (before / f.name).write_text(f.read_text())

    class Before(ActivityProjection):
        migrations = before

    install = {"app_id": app, "manifest_id": "notes", "version": "1.0.0", "location": "blog"}
    await store.append(
        f"app-{app}", [NewEvent("AppInstallRequested", install | {"domain": "ex.org"})]
    )
    await store.append(
        f"app-{app}", [NewEvent("AppConfigureRequested", {"app_id": app, "location": "news"})]
    )
    old = ProjectionRunner(Before(), store)
    await old.setup()
    assert await old.catch_up() == 2
    assert (
        await store.pool.fetchval(
            "SELECT count(*) FROM information_schema.columns"
            " WHERE table_schema = 'gateway' AND table_name = 'activity' AND column_name = 'refs'"
        )
        == 1
    )  # the old shape

    await store.append(
        f"app-{app}", [NewEvent("AppConfigureRequested", {"app_id": app, "location": None})]
    )
    await store.append(
        f"app-{app}", [NewEvent("AppRunStateChanged", {"app_id": app, "running": False})]
    )
    new = ProjectionRunner(ActivityProjection(), store)
    await new.setup()
    assert await new.checkpoint() == 2  # nothing projected again
    assert await store.pool.fetchval(_REFS_COLUMN) == 0
    assert await new.catch_up() == 2
    items = (await activity_query(store.pool, {"limit": 10, "view": "everything"}))["items"]
    assert [i["sentence"] for i in items] == [
        "Homeport stopped notes at news.ex.org",
        "Homeport started changing the settings of notes at news.ex.org",
        "Homeport started changing the settings of notes at news.ex.org",
        "Homeport started installing notes at news.ex.org (version 1.0.0)",
    ]


def test_refs_are_the_named_fields_as_a_sentence_may_show_them() -> None:
    """What a page takes of an event's data (activity_text.refs_of): only the fields its type's
    sentence names; text in clear cut at 200 characters, a sealed one left out; numbers and
    booleans as they are (a boolean stays one); a list as its length; objects, nulls and
    anything missing left out; a nested field by its path."""
    data = {
        "domain": "example.org",
        "local_part": "x" * 250,
        "kind": SEALED,
        "user_ids": ["u1", "u2", "u3"],
        "group_id": None,
        "unnamed": "not a field of the sentence",
    }
    assert refs_of("MailAddressSet", data) == {
        "domain": "example.org",
        "local_part": "x" * 200,
        "user_ids": 3,
    }
    assert refs_of("MailAddressSet", {"domain": {"nested": 1}, "kind": True, "local_part": 7}) == {
        "kind": True,
        "local_part": 7,
    }
    assert refs_of("BackupTargetSet", {"target": {"kind": "s3", "secret": SEALED}}) == {
        "target.kind": "s3"
    }
    assert refs_of("BackupTargetSet", {"target": "flat"}) == {}
    assert (
        refs_of("NoSuchType", data) == {} and refs_of("MailAddressSet", ["not", "a", "dict"]) == {}
    )
