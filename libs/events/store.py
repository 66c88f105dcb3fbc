"""The Postgres event store.

Ordering without skips: every append runs `events.append()` (or `events.append_many()` for a
group-committed batch of appends), which first locks the single row
of `events.head` and holds that lock until its transaction commits. Positions are taken from that
row, so they are gap-free, and a transaction can only take position N+1 after the one holding N
has committed (Postgres makes a commit visible before it releases the committing transaction's
locks). Commit order is therefore position order, and a reader that asks for `position > p`
can never later find an event below a position it has already seen. The same lock orders the
hash chain. The price is that appends are serial in the database, each holding the lock through
its commit's WAL flush; to keep throughput near that of plain inserts, concurrent appends of
one process are group-committed (one `events.append_many()` call, one transaction).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import asyncpg

from libs.events import context
from libs.events.envelope import NewEvent, RecordedEvent, dumps
from libs.events.errors import ConcurrencyError, EventStoreError
from libs.events.migrations import migrate
from libs.events.pool import open_pool
from libs.events.registry import REGISTRY, EventRegistry
from libs.events.statements import Statement, compose
from libs.service.metrics import EVENTS_APPENDED

if TYPE_CHECKING:  # periods.py needs cryptography: not for processes that seal nothing
    from libs.events.periods import AddressSealer

__all__ = [
    "AppendResult",
    "ChainProblem",
    "ChainReport",
    "PostgresEventStore",
    "Subscription",
    "read_stream_on",
    "record_of",
    "validate_stream",
]

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
NOTIFY_CHANNEL = "hp_events"
GENESIS_HASH = bytes(32)
_APPEND = (
    "SELECT out_position, out_version, out_recorded_at, out_hash "
    "FROM events.append($1, $2, $3, $4, $5, $6, $7, $8)"
)
_APPENDED = "SELECT out_position, out_version, out_recorded_at, out_hash FROM appended"
_STREAM = re.compile(r"^[a-z][a-z0-9_]{0,31}-[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
_SELECT = (
    "SELECT position, id, stream, version, type, schema, data, meta, recorded_at, hash "
    "FROM events.events"
)


def record_of(r: asyncpg.Record, registry: EventRegistry) -> RecordedEvent:
    """A row of `events.events` (as selected by the store) in its current shape."""
    ev = RecordedEvent(
        position=r["position"],
        id=r["id"],
        stream=r["stream"],
        version=r["version"],
        type=r["type"],
        schema=r["schema"],
        data=json.loads(r["data"]),
        meta=json.loads(r["meta"]),
        recorded_at=r["recorded_at"],
        hash=r["hash"],
    )
    return registry.upcast_recorded(ev)


async def read_stream_on(
    conn: asyncpg.Connection,
    stream: str,
    registry: EventRegistry,
    until_position: int | None = None,
) -> list[RecordedEvent]:
    """One stream's events read on `conn` (a projection's transaction), up to a position."""
    rows = await conn.fetch(
        f"{_SELECT} WHERE stream = $1 AND ($2::bigint IS NULL OR position <= $2) ORDER BY version",
        stream,
        until_position,
    )
    return [record_of(r, registry) for r in rows]


def validate_stream(stream: str) -> str:
    """Stream names are `<category>-<id>`: lower-case category, then a plain identifier."""
    if not _STREAM.match(stream):
        raise EventStoreError(
            f"stream name {stream!r} is invalid: expected <category>-<id>, e.g. app-4f1c"
        )
    return stream


class _Prepared(NewEvent):
    """A NewEvent `prepare` made: the context's meta in it, its address sealed."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class AppendResult:
    stream: str
    version: int
    positions: tuple[int, ...]

    @property
    def last_position(self) -> int:
        return self.positions[-1] if self.positions else 0


@dataclass(frozen=True, slots=True)
class ChainProblem:
    position: int
    kind: str  # "altered" | "missing" | "head"
    detail: str


@dataclass(slots=True)
class ChainReport:
    checked: int = 0
    last_position: int = 0
    problems: list[ChainProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(slots=True)
class _Request:
    stream: str
    expected: int | None
    events: list[NewEvent]
    future: asyncio.Future[AppendResult]


class PostgresEventStore:
    """Append-only event store in schema `events`, on an asyncpg pool."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        dsn: str,
        registry: EventRegistry = REGISTRY,
        *,
        owns_pool: bool = False,
        addresses: AddressSealer | None = None,
    ) -> None:
        self.pool = pool
        self.dsn = dsn
        self.registry = registry
        self._owns_pool = owns_pool
        self._addresses = addresses
        self.max_batch_events = 1000
        # Appends through this store so far (committed or not): a cheap "did anything change"
        # for in-process loops that would otherwise ask Postgres every round (apps' health).
        self.appends = 0
        # Each append of a batch runs in a subtransaction (its own all-or-nothing); staying
        # under Postgres' 64 cached subtransactions per transaction keeps readers fast.
        self.max_batch_appends = 60
        self._queue: collections.deque[_Request] = collections.deque()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        registry: EventRegistry = REGISTRY,
        run_migrations: bool = True,
        addresses: AddressSealer | None = None,
    ) -> PostgresEventStore:
        """Connect a pool to `dsn` and bring the schema up to date; with `addresses`, the
        client address of every appended event (`meta.ip`) is sealed to its week's key."""
        pool = await open_pool(dsn, min_size=min_size, max_size=max_size)
        try:
            if run_migrations:
                async with pool.acquire() as conn:
                    await migrate(conn, "events", MIGRATIONS)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, dsn, registry, owns_pool=True, addresses=addresses)

    async def close(self) -> None:
        self._closing = True
        if self._writer is not None and not self._writer.done():
            await asyncio.wait({self._writer}, timeout=30)
        if self._owns_pool:
            await self.pool.close()

    async def __aenter__(self) -> PostgresEventStore:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- writing -------------------------------------------------------------------------

    def seal_addresses_with(self, addresses: AddressSealer) -> None:
        """From now on, seal `meta.ip` of appended events with `addresses` (periods.py): for
        a process whose store was opened before its key source (libs/events/wiring.py)."""
        self._addresses = addresses

    def prepare(self, events: Sequence[Any]) -> list[NewEvent]:
        """`events` as they will be appended: NewEvents with the context's meta (and the client
        address sealed); `append_recorded` takes these as they are."""
        new = self._prepare(events)
        if not new:
            raise EventStoreError("append needs at least one event")
        return new

    def _prepare(self, events: Sequence[Any]) -> list[NewEvent]:
        base = context.current().meta()
        sealed: dict[str, str] = {}  # one seal per address and call, not one per event
        out: list[NewEvent] = []
        for ev in events:
            new = ev if isinstance(ev, NewEvent) else self.registry.to_new_event(ev)
            meta = {**base, **new.meta}
            ip = meta.get("ip")
            if self._addresses is not None and isinstance(ip, str) and ip:
                if not ip.startswith("hp:sealed:"):  # already sealed (a continuation's meta)
                    if ip not in sealed:
                        sealed[ip] = self._seal_address(self._addresses, ip)
                    if sealed[ip]:
                        meta["ip"] = sealed[ip]
                    else:
                        del meta["ip"]
            out.append(_Prepared(new.type, new.data, new.schema, new.id, meta))
        return out

    @staticmethod
    def _seal_address(addresses: AddressSealer, ip: str) -> str:
        """`ip` sealed to this week's key; "" if that cannot be done (no key for this week, an
        unreadable key file): the event is appended without it, never with it in clear."""
        try:
            return addresses.seal(ip)
        except EventStoreError as e:  # SealingError
            log.warning("a client address was left out of an event: %s", e)
            return ""

    async def append(
        self,
        stream: str,
        events: Sequence[Any],
        expected_version: int | None = None,
        *,
        conn: asyncpg.Connection | None = None,
    ) -> AppendResult:
        """Append `events` (NewEvent or registered event objects) to `stream`, all or none.

        `expected_version` is the version the caller decided on (0: the stream must not exist
        yet); None appends whatever the version. A mismatch raises ConcurrencyError.
        With `conn`, the append joins the caller's transaction; otherwise concurrent appends
        of this process are group-committed: one transaction, one WAL flush, each append
        still all-or-nothing and checked on its own.
        """
        validate_stream(stream)
        new = self._prepare(events)
        if not new:
            raise EventStoreError("append needs at least one event")
        if conn is not None:
            return await self._append_in(conn, stream, new, expected_version)
        if self._closing:
            raise EventStoreError("the event store is closed")
        fut: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(stream, expected_version, new, fut))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_batches(), name="hp-group-commit")
        return await fut

    async def append_recorded(
        self,
        conn: asyncpg.Connection,
        stream: str,
        events: Sequence[Any],
        expected_version: int | None,
        *,
        lock: int | None = None,
        statements: Sequence[Statement] = (),
    ) -> list[RecordedEvent]:
        """`append` on the caller's connection, returning the events as committed (in their
        current shape) without reading them back; `lock`: a transaction advisory lock taken
        shared first, in the same round trip (a projection's, see inline.py); `statements`:
        a read model's change, run in the same statement (statements.py). Events made by
        `prepare` are taken as they are."""
        validate_stream(stream)
        new: list[NewEvent] = [e for e in events if isinstance(e, _Prepared)]
        if not new or len(new) != len(events):
            new = self.prepare(events)  # refuses an append of nothing
        data, meta = self._encoded(new)
        rows = await self._call_append(
            conn, stream, new, data, meta, expected_version, lock, statements
        )
        return [
            self.registry.upcast_recorded(
                RecordedEvent(
                    position=r["out_position"],
                    id=e.id,
                    stream=stream,
                    version=r["out_version"],
                    type=e.type,
                    schema=e.schema,
                    data=json.loads(d),
                    meta=json.loads(m),
                    recorded_at=r["out_recorded_at"],
                    hash=r["out_hash"],
                )
            )
            for e, r, d, m in zip(new, rows, data, meta, strict=True)
        ]

    async def _append_in(
        self, conn: asyncpg.Connection, stream: str, new: list[NewEvent], expected: int | None
    ) -> AppendResult:
        data, meta = self._encoded(new)
        rows = await self._call_append(conn, stream, new, data, meta, expected, None)
        return AppendResult(stream, rows[-1]["out_version"], tuple(r["out_position"] for r in rows))

    @staticmethod
    def _encoded(new: Sequence[NewEvent]) -> tuple[list[str], list[str]]:
        return [dumps(e.data) for e in new], [dumps(e.meta) for e in new]

    async def _call_append(
        self,
        conn: asyncpg.Connection,
        stream: str,
        new: list[NewEvent],
        data: list[str],
        meta: list[str],
        expected: int | None,
        lock: int | None,
        statements: Sequence[Statement] = (),
    ) -> list[asyncpg.Record]:
        args = (
            stream,
            expected,
            [e.id for e in new],
            [e.type for e in new],
            [e.schema for e in new],
            data,
            meta,
            lock,
        )
        sql = _APPEND
        if statements:
            sql, composed = compose(_APPEND, args, statements, _APPENDED)
            args = tuple(composed)
        try:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        except asyncpg.PostgresError as e:
            if getattr(e, "sqlstate", None) == "HP409":
                actual = int(getattr(e, "detail", None) or -1)
                raise ConcurrencyError(stream, expected, actual) from None
            if isinstance(e, asyncpg.UniqueViolationError) and e.schema_name == "events":
                raise EventStoreError(f"an event id in this append already exists: {e}") from e
            raise  # a read model's statement refused (statements): the caller maps it
        self.appends += 1
        for item in new:
            EVENTS_APPENDED.labels(type=item.type).inc()
        return rows

    async def _write_batches(self) -> None:
        """Drain the queue: each round sends the waiting appends in one call and one commit."""
        while self._queue:
            batch: list[_Request] = []
            size = 0
            while self._queue and (
                not batch
                or (
                    size + len(self._queue[0].events) <= self.max_batch_events
                    and len(batch) < self.max_batch_appends
                )
            ):
                req = self._queue.popleft()
                if not req.future.done():  # a caller cancelled before we sent it: not appended
                    batch.append(req)
                    size += len(req.events)
            if not batch:
                continue
            events = [e for r in batch for e in r.events]
            try:
                async with self.pool.acquire() as c:
                    rows = await c.fetch(
                        "SELECT out_append, out_position, out_version, out_error FROM "
                        "events.append_many($1, $2, $3, $4, $5, $6, $7, $8)",
                        [r.stream for r in batch],
                        [r.expected for r in batch],
                        [len(r.events) for r in batch],
                        [e.id for e in events],
                        [e.type for e in events],
                        [e.schema for e in events],
                        [dumps(e.data) for e in events],
                        [dumps(e.meta) for e in events],
                    )
            except (Exception, asyncio.CancelledError) as e:
                err = (
                    e
                    if isinstance(e, asyncpg.PostgresError | OSError)
                    else EventStoreError(f"append interrupted: {type(e).__name__}")
                )
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(err)
                if isinstance(e, asyncio.CancelledError):
                    raise
                continue
            by_append: dict[int, list[asyncpg.Record]] = collections.defaultdict(list)
            for row in rows:
                by_append[row["out_append"]].append(row)
            for i, r in enumerate(batch, start=1):
                got = by_append[i]
                error = got[0]["out_error"] if got else "no result"
                if error is None:
                    self.appends += 1
                    for item in r.events:
                        EVENTS_APPENDED.labels(type=item.type).inc()
                    result = AppendResult(
                        r.stream, got[-1]["out_version"], tuple(x["out_position"] for x in got)
                    )
                    if not r.future.done():
                        r.future.set_result(result)
                elif not r.future.done():
                    if error == "conflict":
                        r.future.set_exception(
                            ConcurrencyError(r.stream, r.expected, got[0]["out_version"])
                        )
                    else:
                        r.future.set_exception(
                            EventStoreError(f"an event id in this append already exists: {error}")
                        )

    # -- reading -------------------------------------------------------------------------

    def _record(self, r: asyncpg.Record) -> RecordedEvent:
        return record_of(r, self.registry)

    async def read_stream(
        self,
        stream: str,
        after_version: int = 0,
        limit: int | None = None,
        *,
        until_position: int | None = None,
        conn: asyncpg.Connection | None = None,
    ) -> list[RecordedEvent]:
        """Events of one stream in version order, in their current shape (up to a position)."""
        rows = await (conn or self.pool).fetch(
            f"{_SELECT} WHERE stream = $1 AND version > $2"
            " AND ($4::bigint IS NULL OR position <= $4) ORDER BY version LIMIT $3",
            stream,
            after_version,
            limit,
            until_position,
        )
        return [self._record(r) for r in rows]

    async def stream_version(self, stream: str) -> int:
        v = await self.pool.fetchval("SELECT version FROM events.streams WHERE stream = $1", stream)
        return int(v or 0)

    async def read_all(
        self,
        after_position: int = 0,
        limit: int = 1000,
        *,
        conn: asyncpg.Connection | None = None,
    ) -> list[RecordedEvent]:
        """Up to `limit` events after `after_position`, in position order."""
        q = f"{_SELECT} WHERE position > $1 ORDER BY position LIMIT $2"
        rows = await (conn or self.pool).fetch(q, after_position, limit)
        return [self._record(r) for r in rows]

    async def head(self) -> int:
        """The position of the last committed event (0 for an empty store)."""
        return int(await self.pool.fetchval("SELECT position FROM events.head"))

    def subscribe(
        self, after_position: int = 0, *, page_size: int = 500, poll_interval: float = 1.0
    ) -> Subscription:
        """Catch up from `after_position`, then follow new events as they commit."""
        return Subscription(self, after_position, page_size, poll_interval)

    # -- integrity -----------------------------------------------------------------------

    async def verify_chain(self, page_size: int = 5000) -> ChainReport:
        """Recompute the hash chain; name every altered row and every missing position."""
        report = ChainReport()
        prev_hash = GENESIS_HASH
        last = 0
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
            head = await conn.fetchrow("SELECT position, hash FROM events.head")
            while True:
                rows = await conn.fetch(
                    "SELECT position, hash, events.canonical(position, id, stream, version, "
                    "type, schema, data, meta) AS body FROM events.events "
                    "WHERE position > $1 ORDER BY position LIMIT $2",
                    last,
                    page_size,
                )
                for r in rows:
                    pos: int = r["position"]
                    if pos != last + 1:
                        gap = f"{last + 1}" if pos == last + 2 else f"{last + 1}..{pos - 1}"
                        for missing in range(last + 1, pos):
                            report.problems.append(
                                ChainProblem(missing, "missing", f"position {gap} was deleted")
                            )
                    elif hashlib.sha256(prev_hash + r["body"]).digest() != r["hash"]:
                        report.problems.append(
                            ChainProblem(
                                pos, "altered", "row content does not match its chain hash"
                            )
                        )
                    prev_hash = r["hash"]
                    last = pos
                    report.checked += 1
                if len(rows) < page_size:
                    break
            if head is not None and head["position"] > last:
                for missing in range(last + 1, head["position"] + 1):
                    report.problems.append(
                        ChainProblem(missing, "missing", "event after the last row was deleted")
                    )
            elif head is not None and last and head["hash"] != prev_hash:
                report.problems.append(
                    ChainProblem(last, "head", "the chain head does not match the last row")
                )
        report.last_position = last
        return report


class Subscription:
    """Async iterator over committed events: catch-up reads, then LISTEN/NOTIFY with a poll."""

    def __init__(
        self, store: PostgresEventStore, after_position: int, page_size: int, poll_interval: float
    ) -> None:
        self._store = store
        self.position = after_position
        self._page_size = page_size
        self._poll = poll_interval
        self._buf: collections.deque[RecordedEvent] = collections.deque()
        self._wake = asyncio.Event()
        self._conn: asyncpg.Connection | None = None

    def _notified(self, *_: object) -> None:
        self._wake.set()

    async def __aenter__(self) -> Subscription:
        self._conn = await asyncpg.connect(self._store.dsn)
        await self._conn.add_listener(NOTIFY_CHANNEL, self._notified)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await asyncio.shield(conn.close(timeout=5))
            except (OSError, asyncpg.PostgresError, TimeoutError):
                conn.terminate()

    def __aiter__(self) -> AsyncIterator[RecordedEvent]:
        return self

    async def __anext__(self) -> RecordedEvent:
        if self._conn is None:
            raise EventStoreError("use the subscription in `async with` before iterating")
        while not self._buf:
            self._wake.clear()
            page = await self._store.read_all(self.position, self._page_size)
            if page:
                self._buf.extend(page)
                break
            try:
                await asyncio.wait_for(self._wake.wait(), self._poll)
            except TimeoutError:
                pass
        ev = self._buf.popleft()
        self.position = ev.position
        return ev

    async def next_page(self) -> list[RecordedEvent]:
        """All buffered or available events (at least one), for batch consumers."""
        first = await self.__anext__()
        out = [first, *self._buf]
        self._buf.clear()
        self.position = out[-1].position
        return out
