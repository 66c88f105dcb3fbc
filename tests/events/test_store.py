"""The event store against a real Postgres: appends, reads, concurrency, ordering, chain."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import asyncpg
import pytest

from libs.events import context
from libs.events.envelope import NewEvent
from libs.events.errors import ConcurrencyError, EventStoreError
from libs.events.registry import EventRegistry
from libs.events.store import PostgresEventStore


def ev(type_: str = "ThingHappened", **data: object) -> NewEvent:
    return NewEvent(type=type_, data=dict(data))


async def test_append_and_read_stream(store: PostgresEventStore) -> None:
    r = await store.append("thing-1", [ev(n=1), ev(n=2)], expected_version=0)
    assert r.version == 2 and r.positions == (1, 2)
    r2 = await store.append("thing-2", [ev(n=3)], expected_version=0)
    assert r2.positions == (3,)
    got = await store.read_stream("thing-1")
    assert [(e.version, e.position, e.data["n"]) for e in got] == [(1, 1, 1), (2, 2, 2)]
    assert got[0].stream == "thing-1" and got[0].category == "thing"
    assert await store.stream_version("thing-1") == 2
    assert await store.head() == 3
    assert [e.position for e in await store.read_all(1, limit=10)] == [2, 3]


async def test_append_is_atomic_and_checks_version(store: PostgresEventStore) -> None:
    await store.append("thing-1", [ev()], expected_version=0)
    with pytest.raises(ConcurrencyError) as exc:
        await store.append("thing-1", [ev(), ev()], expected_version=0)
    assert exc.value.actual == 1 and exc.value.expected == 0
    assert "thing-1" in str(exc.value)
    # nothing of the failed append is there, and the next position is still gap-free
    assert await store.stream_version("thing-1") == 1
    assert (await store.append("thing-1", [ev()], expected_version=1)).positions == (2,)
    # a duplicate event id fails the whole append
    dup = ev()
    with pytest.raises(EventStoreError):
        await store.append("thing-3", [dup, NewEvent("ThingHappened", {}, id=dup.id)])
    assert await store.stream_version("thing-3") == 0
    assert await store.head() == 2


async def test_bad_stream_names_are_refused(store: PostgresEventStore) -> None:
    for bad in ["", "nodash", "UPPER-1", "app-", "app-a b", "app-x;drop", "-1"]:
        with pytest.raises(EventStoreError, match="stream name"):
            await store.append(bad, [ev()])
    assert await store.head() == 0


async def test_concurrent_appends_to_one_stream_exactly_one_wins(
    store: PostgresEventStore,
) -> None:
    await store.append("race-1", [ev()], expected_version=0)
    results = await asyncio.gather(
        *(store.append("race-1", [ev(i=i)], expected_version=1) for i in range(10)),
        return_exceptions=True,
    )
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, ConcurrencyError)]
    assert len(wins) == 1 and len(losses) == 9
    assert await store.stream_version("race-1") == 2


async def test_meta_carries_context(store: PostgresEventStore) -> None:
    with context.use(context.Context(actor="user-7", correlation_id="c-1", ip="192.0.2.9")):
        await store.append("thing-1", [NewEvent("ThingHappened", {}, meta={"extra": 1})])
    (got,) = await store.read_stream("thing-1")
    assert got.meta["actor"] == "user-7"
    assert got.meta["correlation_id"] == "c-1"
    assert got.meta["ip"] == "192.0.2.9"
    assert got.meta["extra"] == 1 and "occurred_at" in got.meta
    assert got.id.version == 7


async def test_old_event_is_read_back_in_current_shape(dsn: str) -> None:
    old = EventRegistry()

    @old.event("UserRegistered", schema=1)
    @dataclass(frozen=True, kw_only=True)
    class V1:
        name: str

    async with await PostgresEventStore.open(dsn, registry=old) as s1:
        await s1.append("user-1", [V1(name="Ada Lovelace")])

    new = EventRegistry()

    @new.event("UserRegistered", schema=3)
    @dataclass(frozen=True, kw_only=True)
    class V3:
        first: str
        last: str
        display: str

    @new.upcaster("UserRegistered", from_schema=1)
    def split(d: dict) -> dict:
        first, _, last = d.pop("name").partition(" ")
        return {"first": first, "last": last}

    @new.upcaster("UserRegistered", from_schema=2)
    def display(d: dict) -> dict:
        return {**d, "display": f"{d['first']} {d['last'][0]}."}

    async with await PostgresEventStore.open(dsn, registry=new) as s3:
        (raw,) = await s3.read_stream("user-1")
        assert raw.schema == 3
        assert raw.data == {"first": "Ada", "last": "Lovelace", "display": "Ada L."}
        obj = new.decode(raw)
        assert isinstance(obj, V3) and obj.display == "Ada L."
        # the stored row is untouched: events are immutable, upcasting happens on read
        stored = await s3.pool.fetchval("SELECT data->>'name' FROM events.events")
        assert stored == "Ada Lovelace"


async def test_missing_upcaster_is_a_clear_error(dsn: str) -> None:
    reg = EventRegistry()

    @reg.event("ThingHappened", schema=2)
    @dataclass(frozen=True, kw_only=True)
    class T:
        n: int

    async with await PostgresEventStore.open(dsn, registry=reg) as s:
        await s.append("thing-1", [ev(n=1)])  # written at schema 1 by a NewEvent
        with pytest.raises(EventStoreError, match="no upcaster from schema 1 to 2"):
            await s.read_stream("thing-1")


async def test_subscribe_catches_up_then_follows(store: PostgresEventStore) -> None:
    for i in range(5):
        await store.append(f"thing-{i}", [ev(i=i)])
    seen: list[int] = []

    async def follow() -> None:
        async with store.subscribe(after_position=2, poll_interval=30) as sub:
            async for e in sub:
                seen.append(e.position)
                if e.position == 8:
                    return

    task = asyncio.create_task(follow())
    await asyncio.sleep(0.2)
    assert seen == [3, 4, 5]
    for i in range(3):
        await store.append("thing-x", [ev(i=i)])
    # poll_interval is 30 s, so arriving within 5 s shows NOTIFY woke the reader
    await asyncio.wait_for(task, 5)
    assert seen == [3, 4, 5, 6, 7, 8]


async def test_a_held_append_blocks_later_appends_so_commit_order_is_position_order(
    store: PostgresEventStore, dsn: str
) -> None:
    """The mechanism itself: position N+1 cannot commit while N is still open."""
    async with store.pool.acquire() as c1:
        tr = c1.transaction()
        await tr.start()
        await store.append("slow-1", [ev()], conn=c1)
        second = asyncio.create_task(store.append("fast-1", [ev()]))
        await asyncio.sleep(0.3)
        assert not second.done(), "a later append committed while an earlier one was open"
        assert await store.read_all(0) == []  # nothing visible yet, so nothing skippable
        await tr.commit()
        r = await asyncio.wait_for(second, 5)
    assert r.positions == (2,)
    assert [e.stream for e in await store.read_all(0)] == ["slow-1", "fast-1"]


async def test_naive_sequence_table_does_skip_which_the_reader_would_miss(dsn: str) -> None:
    """Control: with positions from a sequence, a reader following position skips an event."""
    c1 = await asyncpg.connect(dsn)
    c2 = await asyncpg.connect(dsn)
    try:
        await c1.execute("CREATE TABLE naive (position bigserial PRIMARY KEY, v text)")
        tr = c1.transaction()
        await tr.start()
        await c1.execute("INSERT INTO naive (v) VALUES ('slow')")  # takes position 1
        await c2.execute("INSERT INTO naive (v) VALUES ('fast')")  # takes 2, commits first
        seen = [r["position"] for r in await c2.fetch("SELECT position FROM naive")]
        checkpoint = max(seen)
        await tr.commit()
        after = await c2.fetch("SELECT position FROM naive WHERE position > $1", checkpoint)
        assert seen == [2] and after == []  # position 1 is never delivered: a skip
    finally:
        await c1.close()
        await c2.close()


@pytest.mark.slow
async def test_tailing_reader_gets_every_event_once_in_order_under_concurrent_writers(
    store: PostgresEventStore,
) -> None:
    writers, total = 8, 20_000
    per_writer = total // writers
    committed: list[list[str]] = [[] for _ in range(writers)]
    rnd = random.Random(7)

    async def writer(w: int) -> None:
        written = 0
        while written < per_writer:
            n = min(rnd.randint(1, 8), per_writer - written)
            batch = [ev(w=w, k=written + j) for j in range(n)]
            async with store.pool.acquire() as conn:
                async with conn.transaction():
                    await store.append(f"writer-{w}", batch, conn=conn)
                    if rnd.random() < 0.3:
                        await asyncio.sleep(rnd.random() * 0.002)  # delay before commit
            committed[w].extend(str(e.id) for e in batch)
            written += n

    received: list[tuple[int, str]] = []

    async def reader() -> None:
        async with store.subscribe(0, page_size=700, poll_interval=0.05) as sub:
            while len(received) < total:
                for e in await sub.next_page():
                    received.append((e.position, str(e.id)))

    tail = asyncio.create_task(reader())
    await asyncio.gather(*(writer(w) for w in range(writers)))
    await asyncio.wait_for(tail, 60)
    positions = [p for p, _ in received]
    assert positions == list(range(1, total + 1)), "reader skipped, repeated or reordered"
    assert {i for _, i in received} == {i for ids in committed for i in ids}
    # each writer's own events arrive in the order it wrote them
    by_writer = {i: w for w, ids in enumerate(committed) for i in ids}
    for w in range(writers):
        mine = [i for _, i in received if by_writer[i] == w]
        assert mine == committed[w]


async def test_group_commit_keeps_each_append_all_or_nothing(
    store: PostgresEventStore, dsn: str
) -> None:
    """Concurrent appends share a transaction; a failing one leaves no trace, the rest land."""
    first = await store.append("dup-1", [ev(n=0)])
    taken_id = (await store.read_stream("dup-1"))[0].id
    calls = (
        [store.append(f"new-{i}", [ev(n=i), ev(n=i)], expected_version=0) for i in range(25)]
        + [store.append("race-1", [ev(n=i)], expected_version=0) for i in range(5)]
        + [store.append("dup-2", [ev(n=1), NewEvent("ThingHappened", {}, id=taken_id)])]
        + [store.append("stale-1", [ev(n=1)], expected_version=3)]
    )
    results = await asyncio.gather(*calls, return_exceptions=True)
    ok = [r for r in results if not isinstance(r, BaseException)]
    conflicts = [r for r in results if isinstance(r, ConcurrencyError)]
    others = [
        r for r in results if isinstance(r, EventStoreError) and not isinstance(r, ConcurrencyError)
    ]
    assert len(ok) == 26 and len(conflicts) == 5 and len(others) == 1
    assert "already exists" in str(others[0])
    stale = next(c for c in conflicts if c.stream == "stale-1")
    assert (stale.expected, stale.actual) == (3, 0)
    assert await store.stream_version("dup-2") == 0, "half of the failed append landed"
    assert await store.stream_version("race-1") == 1
    positions = sorted(p for r in ok for p in r.positions)
    assert positions == list(range(first.last_position + 1, first.last_position + 52))
    assert await store.head() == 52
    report = await store.verify_chain()
    assert report.ok and report.checked == 52


async def test_many_concurrent_appenders_split_into_capped_batches(
    store: PostgresEventStore,
) -> None:
    """More appenders than one batch may hold (subtransaction cache): all land, in order."""
    store.max_batch_appends = 7
    results = await asyncio.gather(
        *(store.append(f"many-{i}", [ev(n=i)], expected_version=0) for i in range(200))
    )
    assert sorted(r.positions[0] for r in results) == list(range(1, 201))
    report = await store.verify_chain()
    assert report.ok and report.checked == 200


def test_an_event_class_with_positional_fields_is_refused() -> None:
    reg = EventRegistry()

    @dataclass(frozen=True)
    class Moved:
        old: str
        new: str

    with pytest.raises(EventStoreError, match=r"must be keyword-only.*positional: old, new"):
        reg.event("AppMoved")(Moved)

    @dataclass(frozen=True, kw_only=True)
    class MovedKw:
        old: str
        new: str

    assert reg.event("AppMoved")(MovedKw) is MovedKw
    with pytest.raises(TypeError):
        MovedKw("a", "b")  # type: ignore[misc]
