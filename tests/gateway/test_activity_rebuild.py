"""The activity log rebuilt over ranges of positions on two connections at once
(libs/events/projection.py `parallel_rebuild`), on the real Postgres: the same rows as a rebuild
page after page and as the live path; progress reported in order; a rebuild cut short half-way
(a statement failing in Postgres) leaves the checkpoint at -1, a live batch is then refused
rather than applied on half a log, and the next catch-up starts over and ends whole, with no row
twice."""

from __future__ import annotations

from typing import Any

import pytest

from libs.events import context
from libs.events.envelope import NewEvent
from libs.events.projection import ProjectionRunner, StartOver
from libs.events.store import PostgresEventStore
from services.gateway.projections import ActivityProjection

SEALED = "hp:sealed:v1:k1:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo"
EVENTS = 400
PAGE = 37  # positions per range: 11 ranges, the last one short


async def _seed(store: PostgresEventStore) -> None:
    """EVENTS events of every shape the log reads: actors, addresses, summaries (sealed too),
    sign-ins with a browser, plain app events."""
    for i in range(EVENTS):
        kind = i % 4
        meta: dict[str, Any] = {"summary": f"step {i}\nof the seed"} if kind else {}
        ctx = context.Context(actor=f"user-{i % 7}", ip=f"198.51.100.{i % 250}")
        with context.use(ctx):
            if kind == 0:
                event = NewEvent("SessionStarted", {"user_agent": f"Browser/{i}"}, meta=meta)
                await store.append(f"session-s{i}", [event])
            elif kind == 1:
                meta["summary"] = f"made {SEALED}"
                await store.append(f"user-u{i}", [NewEvent("UserCreated", {"i": i}, meta=meta)])
            else:
                await store.append(f"app-a{i % 9}", [NewEvent("AppRestarted", {"i": i}, meta=meta)])


async def _rows(store: PostgresEventStore) -> list[dict[str, Any]]:
    got = await store.pool.fetch("SELECT * FROM gateway.activity ORDER BY position")
    return [dict(r) for r in got]


async def _checkpoint(store: PostgresEventStore) -> int:
    return int(
        await store.pool.fetchval(
            "SELECT position FROM gateway.checkpoints WHERE name = 'activity'"
        )
    )


def _runner(store: PostgresEventStore, workers: int) -> ProjectionRunner:
    runner = ProjectionRunner(ActivityProjection(), store, rebuild_workers=workers)
    runner.sql_page_size = PAGE
    return runner


async def test_a_rebuild_on_two_connections_gives_the_rows_of_one(
    store: PostgresEventStore,
) -> None:
    await _seed(store)
    events = await store.read_all(0, EVENTS + 10)
    last = events[-1].position

    one = _runner(store, 1)
    await one.setup()
    assert await one.apply_batch(events) == EVENTS  # the live path
    live = await _rows(store)
    assert await one.rebuild() == EVENTS  # page after page
    assert await _rows(store) == live

    two = _runner(store, 2)
    seen: list[int] = []
    assert two._workers() == 2
    assert await two.rebuild(seen.append) == EVENTS
    assert await _rows(store) == live
    assert await _checkpoint(store) == last
    # its indexes, dropped for it, built again (on both connections)
    names = await store.pool.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'activity'")
    assert {f"activity_{n}" for n in ("actor", "type", "stream", "category", "time")} <= {
        r["indexname"] for r in names
    }
    # progress: every range once, in order, without a gap, ending at the last event
    assert seen == sorted(seen) and len(seen) == len(set(seen)) and seen[-1] == last
    assert len(seen) == -(-(last - events[0].position + 1) // PAGE)
    # an event after the rebuild follows from the checkpoint
    await store.append("app-late", [NewEvent("AppStopped", {})])
    assert await two.catch_up() == 1
    assert len(await _rows(store)) == EVENTS + 1


async def test_a_rebuild_cut_short_starts_over_and_ends_whole(
    store: PostgresEventStore,
) -> None:
    await _seed(store)
    events = await store.read_all(0, EVENTS + 10)
    reference = _runner(store, 1)
    await reference.setup()
    assert await reference.rebuild() == EVENTS
    whole = await _rows(store)

    # Postgres refuses one row half-way through (as a full disk or a kill would stop it)
    middle = events[EVENTS // 2].position
    await store.pool.execute(
        "CREATE FUNCTION gateway.refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF NEW.position = {middle} THEN RAISE EXCEPTION 'refused for the test'; END IF; "
        "RETURN NEW; END $$;"
        "CREATE TRIGGER refuse_one BEFORE INSERT ON gateway.activity "
        "FOR EACH ROW EXECUTE FUNCTION gateway.refuse_one()"
    )
    runner = _runner(store, 2)
    try:
        with pytest.raises(Exception, match="refused for the test"):
            await runner.rebuild()
    finally:
        await store.pool.execute(
            "DROP TRIGGER refuse_one ON gateway.activity; DROP FUNCTION gateway.refuse_one()"
        )
    assert await _checkpoint(store) == -1
    partial = await _rows(store)
    assert 0 < len(partial) < EVENTS

    # a live batch is not applied on half a log: the runner is told to catch up
    await store.append("app-late", [NewEvent("AppStopped", {})])
    late = (await store.read_all(events[-1].position, 10))[-1]
    with pytest.raises(StartOver):
        await runner.apply_batch([late])
    assert await _rows(store) == partial

    # the catch-up starts over: every event once, as the whole rebuild wrote them
    assert await runner.catch_up() == EVENTS + 1
    rows = await _rows(store)
    assert rows[:-1] == whole and rows[-1]["position"] == late.position
    assert await _checkpoint(store) == late.position
