"""Projections: read models fed by events, each change committed with its checkpoint.

A projection owns one Postgres schema. Its checkpoint (the last position it has taken into
account) lives in `<schema>.checkpoints` and is updated in the same transaction as the read
model, under a transaction advisory lock per projection; an event at or below the checkpoint
is skipped. So an event takes effect exactly once however often it is delivered.

Live events come from JetStream: at start the projection catches up from Postgres, then reads
the events stream from the first message after its checkpoint (found by binary search over the
`Hp-Position` header, which the relay keeps increasing with the stream sequence), in order.
On any error it starts again from its checkpoint. `rebuild()` resets the read model and replays
from Postgres directly, page by page; a projection that allows it (`parallel_rebuild`) is rebuilt
over ranges of positions on several connections at once, its checkpoint at -1 meanwhile: a
rebuild cut short that way is started over (read model emptied) by the next apply.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import logging
import pkgutil
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, ClassVar

import asyncpg
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from libs.events.envelope import NewEvent, RecordedEvent
from libs.events.migrations import migrate
from libs.events.pool import keep_session_state
from libs.events.relay import (
    DEFAULT_PREFIX,
    DEFAULT_STREAM,
    POSITION_HEADER,
    decode_event,
    ensure_stream,
    subject_for,
)
from libs.events.statements import Statement
from libs.events.store import PostgresEventStore
from libs.service.metrics import HANDLER_ERRORS, HANDLER_LATENCY

__all__ = [
    "Projection",
    "ProjectionError",
    "ProjectionRunner",
    "StartOver",
    "known_projections",
    "register_projection",
    "replay_by_name",
]

log = logging.getLogger("homeport.projection")
_IDENT = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


class ProjectionError(Exception):
    """A projection is misdeclared or unknown."""


class StartOver(Exception):
    """The read model is not whole (a parallel rebuild was cut short): catch up from its start."""


class Projection(ABC):
    """A read model: subclasses name it, own a schema, and apply batches of events."""

    name: ClassVar[str]
    schema: ClassVar[str]
    subject: ClassVar[str] = ">"  # JetStream filter below the prefix, e.g. "app.>"
    migrations: ClassVar[Path | None] = None
    # The set-based form: one SQL statement (ending in RETURNING) that reads the rows of
    # `events.events` from a CTE named `page` and writes the read model. When set, it is used
    # for live batches, catch-up and rebuilds alike, and `apply()` is not called. It sees events
    # as stored (not upcast), so it suits projections of the envelope more than of `data`.
    page_sql: ClassVar[str | None] = None
    # A page_sql whose rows depend only on the events of their page (no upsert of a row that
    # events of another page write too) may be rebuilt over ranges of positions on several
    # connections at once: `ProjectionRunner.rebuild` then uses `rebuild_workers` of them.
    parallel_rebuild: ClassVar[bool] = False

    @classmethod
    def for_replay(cls) -> Projection:
        """The projection as `homeport replay` builds it, with no service around it; one
        that takes settings reads them here (its own, as the service would)."""
        return cls()

    def wants(self, event: RecordedEvent) -> bool:
        """Events this projection applies (mirror of `subject` for reads from Postgres)."""
        return True

    def statements_for(self, stream: str, events: Sequence[NewEvent]) -> Sequence[Statement] | None:
        """For an inline projection (inline.py): the change `events`, about to be appended to
        `stream`, make to the read model, as statements run within the append's own statement
        (statements.py), or None: `apply()` them after the append, as by default."""
        return None

    def statements_after(
        self, before: Any, expected: int | None, stream: str, events: Sequence[NewEvent]
    ) -> Sequence[Statement] | None:
        """`statements_for`, for a writer that holds the stream's state as it was folded at
        `expected` (`before`, e.g. the state a command decided on; repository.py): a read
        model that is a fold of the whole stream can then give its change without reading the
        stream again. By default the state is not needed."""
        return self.statements_for(stream, events)

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        """Apply events (in position order) inside the caller's transaction."""
        raise NotImplementedError(f"projection {self.name} defines neither apply() nor page_sql")

    @abstractmethod
    async def reset(self, conn: asyncpg.Connection) -> None:
        """Empty the read model (inside the caller's transaction) before a rebuild."""

    async def drop_indexes(self, conn: asyncpg.Connection) -> None:  # noqa: B027 - optional hook
        """Before a rebuild: drop secondary indexes that are cheaper to build once at the end."""

    async def create_indexes(self, conn: asyncpg.Connection) -> None:
        """After a rebuild and at every start (so an interrupted rebuild heals): idempotent.
        By default the statements of `index_statements()`, one after the other."""
        statements = self.index_statements()
        if statements:
            await conn.execute(";".join(statements))

    def index_statements(self) -> list[str]:
        """Idempotent statements (CREATE INDEX IF NOT EXISTS) of the indexes `drop_indexes`
        drops; a parallel rebuild runs them on its connections at once."""
        return []


def _lock_key(name: str) -> int:
    return int.from_bytes(
        hashlib.sha256(f"projection:{name}".encode()).digest()[:8], "big", signed=True
    )


class ProjectionRunner:
    """Runs one projection: set-up, catch-up from Postgres, live follow from JetStream."""

    def __init__(
        self,
        projection: Projection,
        store: PostgresEventStore,
        nc: NATS | None = None,
        *,
        stream: str = DEFAULT_STREAM,
        prefix: str = DEFAULT_PREFIX,
        batch: int = 500,
        fetch_timeout: float = 1.0,
        page_size: int = 5000,
        rebuild_workers: int = 2,
    ) -> None:
        for what, value in (("name", projection.name), ("schema", projection.schema)):
            if not _IDENT.match(value):
                raise ProjectionError(f"projection {what} {value!r} must match {_IDENT.pattern}")
        self.projection = projection
        self.store = store
        self.nc = nc
        self.stream = stream
        self.prefix = prefix
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.page_size = page_size
        self.sql_page_size = max(page_size, 20_000)  # set-based pages cost no Python memory
        self.rebuild_workers = rebuild_workers  # connections at once (parallel_rebuild)
        self.applied = 0  # events applied by this runner (not skipped)
        self._key = _lock_key(projection.name)
        self._stop = asyncio.Event()
        self._pulling: asyncio.Timeout | None = None  # the deadline of the pull under way
        self.live = asyncio.Event()  # set once caught up and following
        self._subject_re = _subject_regex(f"{prefix}.{projection.subject}")

    @property
    def name(self) -> str:
        return self.projection.name

    def _matches(self, event: RecordedEvent) -> bool:
        return self._subject_re.match(subject_for(self.prefix, event)) is not None

    def stop(self) -> None:
        self._stop.set()
        if self._pulling is not None:
            # Cut the pull short (it raises TimeoutError): a stop need not wait fetch_timeout.
            self._pulling.reschedule(-1)

    # -- storage -------------------------------------------------------------------------

    async def setup(self) -> None:
        """Create the projection's schema, checkpoint table and read-model migrations."""
        s = self.projection.schema
        async with self.store.pool.acquire() as conn:
            keep_session_state(conn)
            await conn.execute(
                f"SELECT pg_advisory_lock({self._key});"
                f"CREATE SCHEMA IF NOT EXISTS {s};"
                f"CREATE TABLE IF NOT EXISTS {s}.checkpoints ("
                " name text PRIMARY KEY, position bigint NOT NULL,"
                " updated_at timestamptz NOT NULL DEFAULT now());"
                f"SELECT pg_advisory_unlock({self._key});"
            )
            await conn.execute(
                f"INSERT INTO {s}.checkpoints (name, position) VALUES ($1, 0) "  # noqa: S608 - schema checked by _IDENT
                "ON CONFLICT (name) DO NOTHING",
                self.name,
            )
            if self.projection.migrations is not None:
                await migrate(conn, f"{s}.{self.name}", self.projection.migrations)
            await self.projection.create_indexes(conn)

    async def checkpoint(self) -> int:
        return int(
            await self.store.pool.fetchval(
                f"SELECT position FROM {self.projection.schema}.checkpoints WHERE name = $1",  # noqa: S608 - schema checked by _IDENT
                self.name,
            )
            or 0
        )

    async def _set_checkpoint(self, conn: asyncpg.Connection, position: int) -> None:
        await conn.execute(
            f"UPDATE {self.projection.schema}.checkpoints SET position = $2, updated_at = now()"  # noqa: S608 - schema checked by _IDENT
            " WHERE name = $1",
            self.name,
            position,
        )

    def _page_statement(self, where: str) -> str:
        """`page_sql` over the events `where` says (its parameters from $1), counting rows."""
        return (
            f"WITH page AS (SELECT * FROM events.events WHERE {where}), "  # noqa: S608 - page_sql and `where` are code, not input
            f"applied AS ({self.projection.page_sql}) SELECT count(*) FROM applied"
        )

    async def _locked_checkpoint(self, conn: asyncpg.Connection, *, heal: bool) -> int:
        """In the caller's transaction: the projection's lock, and its checkpoint. One at -1
        is a parallel rebuild that did not finish: with `heal` the read model is emptied and
        the checkpoint set to 0 (the caller applies from the start), else `StartOver` (a batch
        of live events must not be applied on an incomplete model: `run()` catches up)."""
        s = self.projection.schema
        await conn.execute("SELECT pg_advisory_xact_lock($1)", self._key)
        cp = int(
            await conn.fetchval(
                f"SELECT position FROM {s}.checkpoints WHERE name = $1 FOR UPDATE",  # noqa: S608 - schema checked by _IDENT
                self.name,
            )
        )
        if cp < 0 and not heal:
            raise StartOver(f"projection {self.name}: a rebuild was cut short")
        if cp < 0:
            log.warning(
                "a rebuild of the projection was cut short: it starts over",
                extra={"projection": self.name},
            )
            await self.projection.reset(conn)
            await self._set_checkpoint(conn, 0)
            cp = 0
        return cp

    async def _apply_in(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> int:
        """One transaction: lock, skip what the checkpoint covers, apply, move the checkpoint."""
        if not events:
            return 0
        async with conn.transaction():
            cp = await self._locked_checkpoint(conn, heal=False)
            fresh = [e for e in events if e.position > cp]
            if not fresh:
                return 0
            wanted = [e for e in fresh if self._matches(e) and self.projection.wants(e)]
            if wanted:
                with HANDLER_LATENCY.labels(subject=f"projection.{self.name}").time():
                    if self.projection.page_sql is None:
                        await self.projection.apply(conn, wanted)
                    else:
                        await conn.execute(
                            self._page_statement("position = ANY($1::bigint[])"),
                            [e.position for e in wanted],
                        )
            await self._set_checkpoint(conn, fresh[-1].position)
        self.applied += len(wanted)
        return len(wanted)

    async def apply_batch(self, events: Sequence[RecordedEvent]) -> int:
        """Apply events in position order; returns how many took effect."""
        async with self.store.pool.acquire() as conn:
            return await self._apply_in(conn, events)

    # -- from Postgres -------------------------------------------------------------------

    @property
    def _set_based(self) -> bool:
        """Whole pages can go through `page_sql` (no filter to apply in Python)."""
        p = self.projection
        return p.page_sql is not None and p.subject == ">" and type(p).wants is Projection.wants

    async def _apply_page_sql(self, conn: asyncpg.Connection) -> tuple[int, int] | None:
        """One transaction: the next page after the checkpoint through `page_sql`.

        Returns (last position, rows written), or None when there is nothing after it.
        """
        async with conn.transaction():
            cp = await self._locked_checkpoint(conn, heal=True)
            row = await conn.fetchrow(
                "WITH page AS (SELECT * FROM events.events WHERE position > $1 "  # noqa: S608 - page_sql is code, not input
                "ORDER BY position LIMIT $2), "
                f"applied AS ({self.projection.page_sql}) "
                "SELECT (SELECT max(position) FROM page) AS last, "
                "(SELECT count(*) FROM applied) AS n",
                cp,
                self.sql_page_size,
            )
            if row is None or row["last"] is None:
                return None
            await self._set_checkpoint(conn, row["last"])
        self.applied += int(row["n"])
        return int(row["last"]), int(row["n"])

    async def catch_up(self) -> int:
        """Apply everything committed after the checkpoint, read from Postgres."""
        total = 0
        if self._set_based:
            async with self.store.pool.acquire() as conn:
                while not self._stop.is_set():
                    done = await self._apply_page_sql(conn)
                    if done is None:
                        break
                    total += done[1]
            return total
        position = await self.checkpoint()
        while not self._stop.is_set():
            page = await self.store.read_all(position, self.page_size)
            if not page:
                break
            total += await self.apply_batch(page)
            position = page[-1].position
        return total

    async def rebuild(self, progress: Callable[[int], None] | None = None) -> int:
        """Empty the read model and replay every event from Postgres; returns events applied.

        Holds the projection's lock for the whole run, so a live runner waits meanwhile.
        """
        await self.setup()
        total = 0
        async with self.store.pool.acquire() as conn:
            keep_session_state(conn)
            await conn.execute("SELECT pg_advisory_lock($1)", self._key)
            parallel = self._set_based and self._workers() > 1
            try:
                async with conn.transaction():
                    await self.projection.reset(conn)
                    await self.projection.drop_indexes(conn)
                    await self._set_checkpoint(conn, 0)
                position = 0
                if parallel:
                    total = await self._rebuild_parallel(conn, progress)
                while self._set_based and not parallel:
                    done = await self._apply_page_sql(conn)
                    if done is None:
                        break
                    position, applied = done
                    total += applied
                    if progress is not None:
                        progress(position)
                while not self._set_based:
                    page = await self.store.read_all(position, self.page_size, conn=conn)
                    if not page:
                        break
                    total += await self._apply_in(conn, page)
                    position = page[-1].position
                    if progress is not None:
                        progress(position)
            finally:
                try:
                    if parallel and self.projection.index_statements():
                        await self._create_indexes_parallel()
                    else:
                        await self.projection.create_indexes(conn)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1)", self._key)
        return total

    def _workers(self) -> int:
        """Connections a rebuild of this projection uses at once (besides the one holding
        the lock): its own wish, within what the pool can give."""
        if not self.projection.parallel_rebuild:
            return 1
        return max(1, min(self.rebuild_workers, int(self.store.pool.get_max_size()) - 1))

    async def _create_indexes_parallel(self) -> None:
        """The projection's indexes built on `_workers()` connections at once (a 1M-row log:
        4 s on one, 20 % less on two; Postgres builds one index at a time per connection)."""
        todo = iter(self.projection.index_statements())

        async def worker() -> None:
            async with self.store.pool.acquire() as c:
                for statement in todo:
                    await c.execute(statement)

        await self._on_workers(worker)

    async def _on_workers(self, worker: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """`worker` on `_workers()` tasks at once; one that fails cancels the others, and its
        error is raised as a rebuild on one connection raises it (not as a group)."""
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self._workers()):
                    group.create_task(worker())
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None

    async def _rebuild_parallel(
        self, conn: asyncpg.Connection, progress: Callable[[int], None] | None
    ) -> int:
        """The events up to the last one now, in ranges of `sql_page_size` positions, through
        `page_sql` on `_workers()` connections at once (each range one transaction); then the
        checkpoint, from -1 (a rebuild under way) to the last position. `conn` holds the
        projection's lock throughout, so no live apply runs meanwhile. Events appended during
        the rebuild are applied after it, from the checkpoint."""
        bounds = await conn.fetchrow("SELECT min(position), max(position) FROM events.events")
        if bounds is None or bounds[1] is None:
            return 0
        first, last = int(bounds[0]), int(bounds[1])
        await self._set_checkpoint(conn, -1)
        size = self.sql_page_size
        ranges = [(lo, min(lo + size, last)) for lo in range(first - 1, last, size)]
        todo = iter(enumerate(ranges))
        finished: set[int] = set()  # indexes into `ranges`
        reported = 0  # ranges done without a gap before them
        total = 0
        statement = self._page_statement("position > $1 AND position <= $2")

        async def worker() -> None:
            nonlocal total, reported
            async with self.store.pool.acquire() as c:
                for i, (lo, hi) in todo:
                    async with c.transaction():
                        n = int(await c.fetchval(statement, lo, hi))
                    total += n  # not `total += await ...`: that reads total before the wait
                    finished.add(i)
                    while reported in finished:
                        reported += 1
                        if progress is not None:
                            progress(ranges[reported - 1][1])

        await self._on_workers(worker)
        await self._set_checkpoint(conn, last)
        self.applied += total
        return total

    # -- live ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Set up, catch up, then follow (JetStream if connected, else Postgres) until stop()."""
        await self.setup()
        delay = 0.2
        while not self._stop.is_set():
            try:
                await self.catch_up()
                if self.nc is None:
                    await self._follow_postgres()
                else:
                    await self._follow_jetstream(self.nc.jetstream())
                delay = 0.2
            except (
                StartOver,
                nats.errors.Error,
                nats.js.errors.Error,
                OSError,
                TimeoutError,
                asyncpg.InterfaceError,
                asyncpg.PostgresConnectionError,
            ) as e:
                log.warning(
                    "projection interrupted; resuming from its checkpoint",
                    extra={"projection": self.name, "error": f"{type(e).__name__}: {e}"},
                )
            except asyncpg.PostgresError as e:
                HANDLER_ERRORS.labels(subject=f"projection.{self.name}", code="apply").inc()
                log.exception(
                    "projection failed to apply events; retrying",
                    extra={"projection": self.name, "error": str(e)},
                )
            self.live.clear()
            try:
                await asyncio.wait_for(self._stop.wait(), delay)
            except TimeoutError:
                delay = min(delay * 2, 10.0)

    async def _follow_postgres(self) -> None:
        async with self.store.subscribe(await self.checkpoint()) as sub:
            self.live.set()
            while not self._stop.is_set():
                try:
                    page = await asyncio.wait_for(sub.next_page(), self.fetch_timeout)
                except TimeoutError:
                    continue
                await self.apply_batch(page)

    async def _start_seq(self, js: JetStreamContext, position: int) -> int:
        """The first stream sequence whose event lies after `position` (binary search)."""
        info = await js.stream_info(self.stream)
        lo, hi = max(info.state.first_seq, 1), info.state.last_seq
        if hi < lo:
            return hi + 1
        while lo < hi:
            mid = (lo + hi) // 2
            try:
                msg = await js.get_msg(self.stream, seq=mid)
                pos = int((msg.headers or {}).get(POSITION_HEADER, "0"))
            except nats.js.errors.NotFoundError:
                lo = mid + 1
                continue
            if pos > position:
                hi = mid
            else:
                lo = mid + 1
        try:
            last = await js.get_msg(self.stream, seq=lo)
            if int((last.headers or {}).get(POSITION_HEADER, "0")) <= position:
                return lo + 1
        except nats.js.errors.NotFoundError:
            return lo + 1
        return lo

    async def _follow_jetstream(self, js: JetStreamContext) -> None:
        await ensure_stream(js, self.stream, self.prefix)
        durable = f"proj_{self.name}"
        start = await self._start_seq(js, await self.checkpoint())
        try:
            await js.delete_consumer(self.stream, durable)
        except nats.js.errors.NotFoundError:
            pass
        cfg = api.ConsumerConfig(
            durable_name=durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=60.0,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            filter_subject=f"{self.prefix}.{self.projection.subject}",
            max_ack_pending=self.batch * 2,
        )
        psub = await js.pull_subscribe(
            cfg.filter_subject or ">", durable=durable, stream=self.stream, config=cfg
        )
        try:
            self.live.set()
            while not self._stop.is_set():
                msgs = await self._fetch(psub)
                if not msgs:
                    continue  # nothing new within fetch_timeout, or stop() was called
                events = [decode_event(m.data) for m in msgs]
                events = [self.store.registry.upcast_recorded(e) for e in events]
                await self.apply_batch(events)
                for m in msgs:
                    await m.ack()
        finally:
            try:
                await psub.unsubscribe()
            except (nats.errors.Error, nats.js.errors.Error):
                pass

    async def _fetch(self, psub: JetStreamContext.PullSubscription) -> list[Msg]:
        """The next messages: none after fetch_timeout without any, or at once on stop().

        No task per pull (this runs for every batch): stop() moves the pull's deadline to now.
        What a pull cut short brings stays unacked and is read again from the checkpoint."""
        try:
            async with asyncio.timeout(None) as self._pulling:
                if self._stop.is_set():
                    return []
                return await psub.fetch(self.batch, timeout=self.fetch_timeout)
        except (nats.errors.TimeoutError, TimeoutError):
            return []
        finally:
            self._pulling = None


def _subject_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for tok in pattern.split("."):
        parts.append({"*": r"[^.]+", ">": r".+"}.get(tok, re.escape(tok)))
    return re.compile("^" + r"\.".join(parts) + "$")


# -- registry of projections, for `homeport replay <name>` --------------------------------

_FACTORIES: dict[str, type[Projection]] = {}


def register_projection(cls: type[Projection]) -> type[Projection]:
    """Class decorator: make a projection known to `homeport replay`."""
    _FACTORIES[cls.name] = cls
    return cls


def known_projections() -> dict[str, type[Projection]]:
    """Every registered projection, after importing each `services.<name>.projections`."""
    try:
        import services
    except ImportError:  # pragma: no cover - services always ship with libs
        return dict(_FACTORIES)
    for mod in pkgutil.iter_modules(services.__path__):
        if mod.ispkg:
            try:
                importlib.import_module(f"services.{mod.name}.projections")
            except ModuleNotFoundError as e:
                if e.name != f"services.{mod.name}.projections":
                    raise
    return dict(_FACTORIES)


async def replay_by_name(name: str, dsn: str, progress: Callable[[int], None] | None = None) -> int:
    """Rebuild one projection from Postgres; returns the number of events it applied."""
    known = known_projections()
    if name not in known:
        raise ProjectionError(
            f"no projection named {name!r}; known: {', '.join(sorted(known)) or 'none'}"
        )
    store = await PostgresEventStore.open(dsn, max_size=2)
    try:
        count = await ProjectionRunner(known[name].for_replay(), store).rebuild(progress)
        # run as the superuser: what the rebuild made goes back to the service's own role
        from libs.events.roles import hand_over_schemas

        async with store.pool.acquire() as conn:
            if await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
                await hand_over_schemas(conn)
        return count
    finally:
        await store.close()
