"""The event-store benchmarks: append, replay and relay, each against a raw baseline."""

from __future__ import annotations

import asyncio
import hashlib
import statistics
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import nats
from nats.aio.client import Client as NATS

from bench.common import (
    Bench,
    BenchError,
    Benchmark,
    Result,
    RssSampler,
    Run,
    elapsed_since,
    interleave,
    rss_mib,
    say,
)
from libs.events.envelope import NewEvent, dumps, uuid7
from libs.events.projection import ProjectionRunner
from libs.events.relay import (
    POSITION_HEADER,
    Relay,
    encode_event,
    ensure_stream,
    subject_for,
)
from libs.events.store import PostgresEventStore
from services.gateway.projections import ActivityProjection

__all__ = ["BENCHMARKS"]


# Targets (issue 20, raised from issue 1's 0.6, 1.0, 0.25 and 0.7): ours / baseline, medians
# of the rounds.
_APPEND_VS_RAW = 0.9
_APPEND_VS_EVENTSOURCING = 3.0
_REPLAY_VS_RAW = 0.6
_RELAY_VS_RAW = 0.85


# -- the events ---------------------------------------------------------------------------

_IMAGE = "ghcr.io/homeport/nextcloud:28.0.4"
_CATEGORIES: dict[str, tuple[str, ...]] = {
    "app": ("AppInstalled", "AppConfigured", "AppStarted", "AppStopped"),
    "user": ("UserCreated", "UserRenamed", "PasswordChanged"),
    "dns": ("DnsRecordSet", "DnsRecordRemoved"),
    "mail": ("MailboxCreated", "AliasAdded"),
    "backup": ("BackupStarted", "BackupFinished"),
}
_STREAMS_PER_WRITER = 4
_PAGE = 5000  # the ProjectionRunner's default page size, used by the raw keyset fetch too


def _data(i: int) -> dict[str, Any]:
    """Typical event data: about 200 bytes of JSON."""
    return {
        "app": f"nextcloud-{i % 997:03d}",
        "image": _IMAGE,
        "domain": f"cloud{i % 997}.example.org",
        "env": {"TZ": "Europe/Berlin", "PHP_MEMORY_LIMIT": "512M"},
        "ports": [8080, 8443],
        "replicas": 1 + i % 3,
        "owner": f"user-{i % 113}",
    }


def _meta(i: int) -> dict[str, Any]:
    """What a command puts into meta besides the context's actor and occurred_at."""
    m: dict[str, Any] = {
        "actor": f"user-{i % 113}",
        "summary": f"configured nextcloud-{i % 997:03d} ({_IMAGE})",
    }
    if i % 4 == 0:
        m["ip"] = f"192.0.2.{i % 250}"
    return m


def _now() -> str:
    return datetime.now(UTC).isoformat()


# -- append: the workload on our store and on the baselines -------------------------------


async def _append_ours(store: PostgresEventStore, tag: str, writers: int, per_writer: int) -> Run:
    """Appends/s of `writers` tasks, one event per call, each to its own streams."""
    payloads = [(_data(i), _meta(i)) for i in range(per_writer)]

    async def writer(w: int) -> None:
        versions = [0] * _STREAMS_PER_WRITER
        for i, (data, meta) in enumerate(payloads):
            k = i % _STREAMS_PER_WRITER
            await store.append(
                f"app-{tag}w{w}s{k}",
                [NewEvent("AppConfigured", data, meta=meta)],
                expected_version=versions[k],
            )
            versions[k] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    return Run(writers * per_writer, elapsed_since(t0))


_RAW_TABLE = """
CREATE TABLE raw_events (
    position    bigserial PRIMARY KEY,
    id          uuid NOT NULL UNIQUE,
    stream      text NOT NULL,
    version     integer NOT NULL CHECK (version >= 1),
    type        text NOT NULL,
    schema      integer NOT NULL CHECK (schema >= 1),
    data        jsonb NOT NULL,
    meta        jsonb NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    hash        bytea NOT NULL,
    UNIQUE (stream, version)
);
CREATE INDEX raw_events_type_idx ON raw_events (type, position);
"""
_RAW_INSERT = (
    "INSERT INTO raw_events (id, stream, version, type, schema, data, meta, hash) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
)


async def _append_raw(pool: asyncpg.Pool, tag: str, writers: int, per_writer: int) -> Run:
    """Rows/s of `writers` tasks, one INSERT per transaction, same columns and indexes."""
    payloads = [(_data(i), _meta(i)) for i in range(per_writer)]

    async def writer(w: int) -> None:
        versions = [0] * _STREAMS_PER_WRITER
        for i, (data, meta) in enumerate(payloads):
            k = i % _STREAMS_PER_WRITER
            versions[k] += 1
            body = dumps(data)
            await pool.execute(
                _RAW_INSERT,
                uuid7(),
                f"app-{tag}w{w}s{k}",
                versions[k],
                "AppConfigured",
                1,
                body,
                dumps({"actor": "system", "occurred_at": _now(), **meta}),
                hashlib.sha256(body.encode()).digest(),
            )

    t0 = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    return Run(writers * per_writer, elapsed_since(t0))


async def _open_store(dsn: str, size: int, **settings: str) -> PostgresEventStore:
    pool = await asyncpg.create_pool(
        dsn, min_size=size, max_size=size, server_settings=settings or None
    )
    return PostgresEventStore(pool, dsn, owns_pool=True)


@dataclass(slots=True)
class _WalStats:
    syncs: int
    lsn: int

    @classmethod
    async def read(cls, conn: asyncpg.Connection) -> _WalStats:
        row = await conn.fetchrow(
            "SELECT wal_sync, pg_current_wal_lsn() - '0/0'::pg_lsn AS lsn FROM pg_stat_wal"
        )
        assert row is not None
        return cls(int(row["wal_sync"]), int(row["lsn"]))


class _WaitSampler:
    """Samples what the bench database's client backends are doing (pg_stat_activity)."""

    def __init__(self, dsn: str, database: str, interval: float = 0.005) -> None:
        self.dsn = dsn
        self.database = database
        self.interval = interval
        self.counts: dict[str, int] = {}
        self.samples = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            while not self._stop.is_set():
                rows = await conn.fetch(
                    "SELECT CASE WHEN state = 'active' AND wait_event IS NULL THEN 'CPU' "
                    "ELSE coalesce(wait_event_type || ':' || wait_event, state) END AS w "
                    "FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend'",
                    self.database,
                )
                for r in rows:
                    self.counts[r["w"]] = self.counts.get(r["w"], 0) + 1
                self.samples += 1
                await asyncio.sleep(self.interval)
        finally:
            await conn.close()

    def stop(self) -> None:
        self._stop.set()

    def summary(self, backends: int) -> str:
        total = max(self.samples * backends, 1)
        top = sorted(self.counts.items(), key=lambda kv: -kv[1])[:6]
        return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in top)


async def _diagnose(
    run: Callable[[], Awaitable[Run]],
    admin: asyncpg.Connection,
    dsn: str,
    database: str,
    backends: int,
    appends: int,
) -> str:
    """One extra round with WAL-sync counts and wait-event samples; returns a summary line."""
    await asyncio.sleep(1.5)  # let idle backends flush their statistics
    before = await _WalStats.read(admin)
    sampler = _WaitSampler(dsn, database)
    task = asyncio.create_task(sampler.run(), name="wait-sampler")
    try:
        result = await run()
    finally:
        sampler.stop()
        await asyncio.wait_for(task, 10)
    await asyncio.sleep(1.5)
    after = await _WalStats.read(admin)
    syncs = after.syncs - before.syncs
    return (
        f"{result.rate:,.0f}/s; {syncs / appends:.2f} WAL syncs per append, "
        f"{(after.lsn - before.lsn) / appends:,.0f} WAL bytes per append; "
        f"backends (share of {backends}): {sampler.summary(backends)}"
    )


async def events_append_vs_raw(b: Bench) -> Result:
    cfg = b.cfg
    ours_dsn = await b.database("bench_append_ours")
    raw_dsn = await b.database("bench_append_raw")
    store = await PostgresEventStore.open(ours_dsn, min_size=cfg.writers, max_size=cfg.writers)
    raw = await asyncpg.create_pool(raw_dsn, min_size=cfg.writers, max_size=cfg.writers)
    admin = await asyncpg.connect(b.servers.pg.dsn)
    try:
        await raw.execute(_RAW_TABLE)
        n = cfg.appends_per_writer
        say(f"  {cfg.writers} writers x {n} appends of one event, pool size {cfg.writers}")
        await _append_ours(store, "warm", cfg.writers, 25)
        await _append_raw(raw, "warm", cfg.writers, 25)
        cmp = await interleave(
            cfg.rounds,
            b.servers,
            lambda r: _append_ours(store, f"o{r}", cfg.writers, n),
            lambda r: _append_raw(raw, f"r{r}", cfg.writers, n),
            "appends/s",
        )
        cmp.report()

        say("  where the time goes (extra runs, not counted in the ratio):")
        total = cfg.writers * n
        line = await _diagnose(
            lambda: _append_ours(store, "diag", cfg.writers, n),
            admin,
            ours_dsn,
            "bench_append_ours",
            cfg.writers,
            total,
        )
        say(f"    ours     {line}")
        line = await _diagnose(
            lambda: _append_raw(raw, "diag", cfg.writers, n),
            admin,
            raw_dsn,
            "bench_append_raw",
            cfg.writers,
            total,
        )
        say(f"    baseline {line}")
        one_ours = await _append_ours(store, "one", 1, n)
        one_raw = await _append_raw(raw, "one", 1, n)
        say(
            f"    1 writer: ours {one_ours.rate:,.0f}/s "
            f"({1e6 / one_ours.rate:,.0f} us per append), "
            f"baseline {one_raw.rate:,.0f}/s ({1e6 / one_raw.rate:,.0f} us per insert)"
        )
        nosync = await _open_store(ours_dsn, cfg.writers, synchronous_commit="off")
        raw_nosync = await asyncpg.create_pool(
            raw_dsn,
            min_size=cfg.writers,
            max_size=cfg.writers,
            server_settings={"synchronous_commit": "off"},
        )
        try:
            await _append_ours(nosync, "nswarm", cfg.writers, 25)
            await _append_raw(raw_nosync, "nswarm", cfg.writers, 25)
            ours_ns = await _append_ours(nosync, "nosync", cfg.writers, n)
            raw_ns = await _append_raw(raw_nosync, "nosync", cfg.writers, n)
        finally:
            await raw_nosync.close()
            await nosync.close()
        say(
            f"    {cfg.writers} writers with synchronous_commit=off (no WAL flush at commit): "
            f"ours {ours_ns.rate:,.0f}/s ({1e6 / ours_ns.rate:,.0f} us per append), "
            f"baseline {raw_ns.rate:,.0f}/s"
        )
        return Result("events_append_vs_raw", cmp.ratio, _APPEND_VS_RAW)
    finally:
        await admin.close()
        await raw.close()
        await store.close()


# -- append against the eventsourcing library --------------------------------------------


_ES_TOPIC = "homeport.events:AppConfigured"


def _append_eventsourcing(
    recorder: Any, writers: int, per_writer: int, stop: threading.Event
) -> Run:
    """Events/s of `writers` threads each calling insert_events with one event."""
    from eventsourcing.persistence import StoredEvent

    payloads = [(_data(i), _meta(i)) for i in range(per_writer)]
    barrier = threading.Barrier(writers + 1)
    errors: list[BaseException] = []

    def writer() -> None:
        ids = [uuid.uuid4() for _ in range(_STREAMS_PER_WRITER)]
        versions = [0] * _STREAMS_PER_WRITER
        barrier.wait()
        try:
            for i, (data, meta) in enumerate(payloads):
                if stop.is_set():
                    return
                k = i % _STREAMS_PER_WRITER
                versions[k] += 1
                state = dumps({"data": data, "meta": {"occurred_at": _now(), **meta}})
                recorder.insert_events(
                    [StoredEvent(ids[k], versions[k], _ES_TOPIC, state.encode())]
                )
        except BaseException as e:  # reported by the caller after join
            errors.append(e)

    threads = [threading.Thread(target=writer, name=f"es-writer-{w}") for w in range(writers)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    run = Run(writers * per_writer, elapsed_since(t0))
    if errors:
        raise BenchError(f"eventsourcing writer failed: {errors[0]!r}") from errors[0]
    return run


async def _eventsourcing_round(recorder: Any, writers: int, per_writer: int) -> Run:
    """One round in worker threads; cancelling it stops the threads after their current insert."""
    stop = threading.Event()
    try:
        return await asyncio.to_thread(_append_eventsourcing, recorder, writers, per_writer, stop)
    except asyncio.CancelledError:
        stop.set()
        raise


async def events_append_vs_eventsourcing(b: Bench) -> Result:
    try:
        from eventsourcing.postgres import PostgresApplicationRecorder, PostgresDatastore
    except ImportError as e:
        raise BenchError(
            f"the eventsourcing library is missing ({e}): install the dev extras, "
            "`.venv/bin/pip install -e '.[dev]'`"
        ) from e

    cfg = b.cfg
    ours_dsn = await b.database("bench_es_ours")
    await b.database("bench_es_lib")
    store = await PostgresEventStore.open(ours_dsn, min_size=cfg.writers, max_size=cfg.writers)
    datastore = PostgresDatastore(
        dbname="bench_es_lib",
        host="127.0.0.1",
        port=b.servers.pg.port,
        user="postgres",
        password="",
        pool_size=cfg.writers,
    )
    try:
        recorder = PostgresApplicationRecorder(datastore)
        await asyncio.to_thread(recorder.create_table)
        n = cfg.appends_per_writer
        say(
            f"  {cfg.writers} writers x {n} appends of one event; ours: asyncio tasks, "
            f"eventsourcing {type(recorder).__name__}.insert_events: threads; "
            f"pool size {cfg.writers}"
        )
        await _append_ours(store, "warm", cfg.writers, 25)
        await _eventsourcing_round(recorder, cfg.writers, 25)
        cmp = await interleave(
            cfg.rounds,
            b.servers,
            lambda r: _append_ours(store, f"o{r}", cfg.writers, n),
            lambda r: _eventsourcing_round(recorder, cfg.writers, n),
            "appends/s",
        )
        cmp.report()
        return Result("events_append_vs_eventsourcing", cmp.ratio, _APPEND_VS_EVENTSOURCING)
    finally:
        await asyncio.to_thread(datastore.close)
        await store.close()


# -- seeding (replay and relay) -----------------------------------------------------------


async def _seed(store: PostgresEventStore, total: int, per_call: int = 1000) -> None:
    """Append `total` events through the store, `per_call` per append, one stream per call."""
    categories = list(_CATEGORIES)
    calls = iter(range((total + per_call - 1) // per_call))

    async def worker() -> None:
        for c in calls:
            first = c * per_call
            count = min(per_call, total - first)
            category = categories[c % len(categories)]
            types = _CATEGORIES[category]
            events = [
                NewEvent(types[j % len(types)], _data(first + j), meta=_meta(first + j))
                for j in range(count)
            ]
            await store.append(f"{category}-seed{c:06d}", events, expected_version=0)

    t0 = time.perf_counter()
    await asyncio.gather(worker(), worker())
    dt = elapsed_since(t0)
    say(
        f"  seeded {total:,} events through PostgresEventStore.append ({per_call} per call) "
        f"in {dt:.1f} s: {total / dt:,.0f} events/s"
    )


# -- replay -------------------------------------------------------------------------------

_RAW_PAGE = (
    "SELECT position, id, stream, version, type, schema, data, meta, recorded_at, hash "
    "FROM events.events WHERE position > $1 ORDER BY position LIMIT $2"
)


async def _keyset_raw(conn: asyncpg.Connection, total: int) -> Run:
    """Rows/s of a plain keyset fetch over the events table, page by page."""
    t0 = time.perf_counter()
    position, seen = 0, 0
    while True:
        rows = await conn.fetch(_RAW_PAGE, position, _PAGE)
        if not rows:
            break
        seen += len(rows)
        position = rows[-1]["position"]
    dt = elapsed_since(t0)
    if seen != total:
        raise BenchError(f"raw keyset fetch read {seen} rows, expected {total}")
    return Run(seen, dt)


@dataclass(slots=True)
class _Rss:
    before: float
    quarter: float
    end: float
    peak: float


async def _rebuild(runner: ProjectionRunner, total: int, rss: list[_Rss]) -> Run:
    """Events/s of one full rebuild; notes RSS at a quarter of the events and at the end."""
    quarter_at = total // 4
    marks: dict[str, float] = {}

    def progress(position: int) -> None:
        if "quarter" not in marks and position >= quarter_at:
            marks["quarter"] = rss_mib()

    async with RssSampler() as sampler:
        t0 = time.perf_counter()
        applied = await runner.rebuild(progress)
        dt = elapsed_since(t0)
        end = rss_mib()
    if applied != total:
        raise BenchError(f"rebuild applied {applied} events, expected {total}")
    rss.append(_Rss(sampler.start, marks.get("quarter", end), end, sampler.peak))
    return Run(total, dt)


_FLAT_MIB = 32.0  # allowed RSS growth between a quarter of the replay and its end


async def events_replay_vs_raw(b: Bench) -> Result:
    total = b.cfg.replay_events
    dsn = await b.database("bench_replay")
    store = await PostgresEventStore.open(dsn, min_size=2, max_size=4)
    conn = await asyncpg.connect(dsn)
    try:
        await _seed(store, total)
        await conn.execute("VACUUM (ANALYZE) events.events")
        runner = ProjectionRunner(ActivityProjection(), store)
        await runner.setup()
        say(
            f"  ours: ProjectionRunner(ActivityProjection()).rebuild() over {total:,} events "
            f"(page {runner.page_size}); baseline: asyncpg keyset fetch, page {_PAGE}"
        )
        rss: list[_Rss] = []
        cmp = await interleave(
            b.cfg.replay_rounds,
            b.servers,
            lambda r: _rebuild(runner, total, rss),
            lambda r: _keyset_raw(conn, total),
            "events/s",
        )
        cmp.report()
        q = f"{total // 4:,}"
        for i, m in enumerate(rss, 1):
            say(
                f"  rss rebuild {i}: before {m.before:.0f} MiB, at {q} {m.quarter:.0f} MiB, "
                f"at {total:,} {m.end:.0f} MiB, peak {m.peak:.0f} MiB "
                f"(peak growth {m.peak - m.before:+.0f} MiB, "
                f"{q}->{total:,} {m.end - m.quarter:+.1f} MiB)"
            )
        growth = max(m.end - m.quarter for m in rss)
        misses: tuple[str, ...] = ()
        if growth > _FLAT_MIB:
            misses = (f"RSS grew {growth:.0f} MiB between {q} and {total:,} events",)
        say(
            f"  memory: {'flat' if not misses else 'GROWS'} (largest growth from {q} to "
            f"{total:,} events: {growth:+.1f} MiB, allowed {_FLAT_MIB:.0f})"
        )
        return Result("events_replay_vs_raw", cmp.ratio, _REPLAY_VS_RAW, misses=misses)
    finally:
        await conn.close()
        await store.close()


# -- relay --------------------------------------------------------------------------------

_PREFIX = "hp.evt"
_RELAY_DEADLINE = 600.0
_Message = tuple[str, bytes, dict[str, str]]


async def _messages(store: PostgresEventStore) -> list[_Message]:
    """The messages the relay sends for the stored events: same subjects, bodies, headers."""
    out: list[_Message] = []
    position = 0
    while page := await store.read_all(position, _PAGE):
        for ev in page:
            out.append(
                (
                    subject_for(_PREFIX, ev),
                    encode_event(ev),
                    {
                        "Nats-Msg-Id": str(ev.id),
                        "Nats-Expected-Last-Sequence": str(len(out)),
                        POSITION_HEADER: str(ev.position),
                    },
                )
            )
        position = page[-1].position
    return out


async def _check_stream(nc: NATS, stream: str, total: int) -> None:
    js = nc.jetstream()
    info = await js.stream_info(stream)
    if info.state.messages != total:
        raise BenchError(f"stream {stream} holds {info.state.messages} messages, expected {total}")
    await js.delete_stream(stream)


async def _relay_ours(
    store: PostgresEventStore, nc: NATS, stream: str, total: int, window: int
) -> Run:
    """Msg/s of a Relay publishing the whole store into a fresh stream, until all are acked."""
    await ensure_stream(nc.jetstream(), stream, _PREFIX)
    relay = Relay(store, nc, name=stream.lower(), stream=stream, prefix=_PREFIX, window=window)
    t0 = time.perf_counter()
    task = asyncio.create_task(relay.run(), name="relay")
    try:
        while relay.published < total and not task.done():
            if time.perf_counter() - t0 > _RELAY_DEADLINE:
                raise BenchError(
                    f"relay published {relay.published} of {total} in {_RELAY_DEADLINE:.0f} s"
                )
            await asyncio.sleep(0.002)
        dt = elapsed_since(t0)
    finally:
        relay.stop()
        done, _ = await asyncio.wait({task}, timeout=15)
        if not done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if not done:
        raise BenchError("relay did not stop within 15 s of stop()")
    if task.exception() is not None:
        raise BenchError(f"relay failed: {task.exception()!r}") from task.exception()
    if relay.published < total:
        raise BenchError(f"relay returned after {relay.published} of {total} messages")
    await _check_stream(nc, stream, total)
    return Run(total, dt)


async def _relay_raw(nc: NATS, stream: str, msgs: Sequence[_Message], window: int) -> Run:
    """Msg/s of js.publish_async over the same messages with the same in-flight window, made
    beforehand (no Postgres read). The relay publishes with its own ack matching (`_Acks` in
    libs/events/relay.py) on the same nats-py connection calls."""
    js = nc.jetstream(publish_async_max_pending=window)
    await ensure_stream(js, stream, _PREFIX)
    futures = []
    t0 = time.perf_counter()
    for subject, body, headers in msgs:
        futures.append(await js.publish_async(subject, body, headers=headers))
    await asyncio.wait_for(js.publish_async_completed(), _RELAY_DEADLINE)
    dt = elapsed_since(t0)
    for i, fut in enumerate(futures, 1):
        ack = fut.result()
        if ack.seq != i:
            raise BenchError(f"raw publish {i} was stored at sequence {ack.seq}")
    await _check_stream(nc, stream, len(msgs))
    return Run(len(msgs), dt)


async def events_relay_vs_raw(b: Bench) -> Result:
    total, window = b.cfg.relay_events, b.cfg.relay_window
    dsn = await b.database("bench_relay")
    store = await PostgresEventStore.open(dsn, min_size=2, max_size=4)
    nc = await nats.connect(b.servers.nats_url, name="hp-bench", connect_timeout=5)
    try:
        await _seed(store, total)
        msgs = await _messages(store)
        size = statistics.mean(len(m[1]) for m in msgs)
        say(
            f"  {total:,} messages, mean body {size:.0f} bytes, window {window}; each round "
            "into a fresh file-backed stream, deleted afterwards"
        )
        cmp = await interleave(
            b.cfg.rounds,
            b.servers,
            lambda r: _relay_ours(store, nc, f"BENCH_RELAY_{r}", total, window),
            lambda r: _relay_raw(nc, f"BENCH_RAW_{r}", msgs, window),
            "msg/s",
        )
        cmp.report()
        return Result("events_relay_vs_raw", cmp.ratio, _RELAY_VS_RAW)
    finally:
        await nc.close()
        await store.close()


BENCHMARKS: dict[str, Benchmark] = {
    bm.name: bm
    for bm in (
        Benchmark("events_append_vs_raw", events_append_vs_raw, _APPEND_VS_RAW),
        Benchmark(
            "events_append_vs_eventsourcing",
            events_append_vs_eventsourcing,
            _APPEND_VS_EVENTSOURCING,
        ),
        Benchmark("events_replay_vs_raw", events_replay_vs_raw, _REPLAY_VS_RAW),
        Benchmark("events_relay_vs_raw", events_relay_vs_raw, _RELAY_VS_RAW, needs_nats=True),
    )
}
