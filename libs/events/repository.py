"""A service's streams: load one and fold it; append with the expected version, applying the
service's inline read model in the same transaction; driver errors become the service's own.

Apps, certs, dns and identity keep their state this way: a command loads the stream, decides,
and appends at the version it decided on. A concurrent writer makes the append fail with the
service's conflict error (reload and decide again); a unique index of the read model that the
new events would break (a location or a username already taken) fails the whole transaction,
events included, with the error the service maps that constraint to.

A command whose decision is made on a row read before, without a query of its own, appends as
one statement on its own (`on_demand`, `append_decided`): the expected version guards that row,
and the read model's change runs within the append's statement (inline.py). A decision that
queries (a lock, a count) begins the transaction with its first query, as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import asyncpg
from asyncpg.transaction import Transaction

from libs.events.envelope import RecordedEvent
from libs.events.errors import ConcurrencyError
from libs.events.inline import append_alone, append_inline
from libs.events.projection import Projection
from libs.events.store import PostgresEventStore

__all__ = ["OnDemand", "Repository"]

S = TypeVar("S")
T = TypeVar("T")

ErrorFactory = Callable[[], Exception]


@dataclass(frozen=True)
class Repository(Generic[S]):
    """The streams `<category>-<key>` of one service.

    `fold(key, events)` gives the state of a stream; `projection` is applied inline; `conflict`
    makes the error a concurrent append raises; `unique` maps a constraint name (a part of it)
    to the error a unique violation of it becomes. An unmapped violation is raised unchanged.
    """

    store: PostgresEventStore
    stream_of: Callable[[str], str]
    fold: Callable[[str, Sequence[RecordedEvent]], S]
    projection: Projection | None
    conflict: ErrorFactory
    unique: Mapping[str, ErrorFactory] = field(default_factory=dict)

    async def load(self, key: str) -> S:
        """The folded state of `key`'s stream (from its first event)."""
        return self.fold(key, await self.store.read_stream(self.stream_of(key)))

    async def append(
        self,
        key: str,
        new: Sequence[Any],
        expected: int | None,
        *,
        conn: asyncpg.Connection | None = None,
        state: S | None = None,
    ) -> list[RecordedEvent]:
        """Append `new` to `key`'s stream at `expected` (None: any version) and apply it.

        `state`: the stream folded at `expected`, which the caller decided on. With it, a
        projection whose rows are a fold of the stream may give the change as statements
        (`Projection.statements_after`): outside a caller's transaction the append is then
        one statement on its own, no BEGIN, no read of the stream, no COMMIT."""
        if conn is not None:
            return await self._append_on(conn, key, new, expected, state)
        if state is not None:
            return await self.on_demand(
                lambda od: self.append_decided(od, key, new, expected, state)
            )
        return await self.transaction(lambda c: self._append_on(c, key, new, expected))

    async def transaction(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `fn` in one transaction, with the driver's errors translated."""
        with self._translated():
            async with self.store.pool.acquire() as conn, conn.transaction():
                return await fn(conn)

    async def on_demand(self, fn: Callable[[OnDemand], Awaitable[T]]) -> T:
        """Run `fn` with a connection whose transaction begins only when it is needed (see
        `OnDemand`), committed if `fn` returns and rolled back if it raises; errors translated."""
        with self._translated():
            async with self.store.pool.acquire() as conn:
                od = OnDemand(conn)
                try:
                    result = await fn(od)
                except BaseException:
                    # a rollback that fails (the connection lost) must not hide why: the
                    # pool resets the connection on release anyway
                    with contextlib.suppress(Exception):
                        await od.rollback()
                    raise
                await od.commit()
                return result

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """The driver's errors as the service's: a raced version, a unique value taken."""
        try:
            yield
        except ConcurrencyError:
            raise self.conflict() from None
        except asyncpg.UniqueViolationError as e:
            raise self.translate(e) from None

    async def append_decided(
        self,
        od: OnDemand,
        key: str,
        new: Sequence[Any],
        expected: int | None,
        state: S | None = None,
    ) -> list[RecordedEvent]:
        """Append what a decision made on `od` returned: as one statement on its own when
        nothing began the transaction and the projection gives the change as statements;
        else in the transaction (begun here if need be). `state`: as for `append`."""
        stream = self.stream_of(key)
        if not od.begun and self.projection is not None:
            done = await append_alone(
                self.store, od.conn, self.projection, stream, new, expected, before=state
            )
            if done is not None:
                return done
        return await self._append_on(await od.begin(), key, new, expected, state)

    def translate(self, e: asyncpg.UniqueViolationError) -> Exception:
        """The service's error for a unique violation (`e` itself when none is mapped)."""
        constraint = e.constraint_name or ""
        for part, make in self.unique.items():
            if part in constraint:
                return make()
        unmapped: Exception = e
        return unmapped

    async def _append_on(
        self,
        conn: asyncpg.Connection,
        key: str,
        new: Sequence[Any],
        expected: int | None,
        state: S | None = None,
    ) -> list[RecordedEvent]:
        stream = self.stream_of(key)
        if self.projection is None:
            return await self.store.append_recorded(conn, stream, new, expected)
        return await append_inline(
            self.store, conn, self.projection, stream, new, expected, before=state
        )


class OnDemand:
    """A pooled connection for a decision: the first query a decision runs on it begins the
    transaction the change then commits in (what it read stays as it was until then: a lock
    it took, a count it made).

    A decision that runs no query (it decided on a row read before, whose version the append
    checks) leaves the append to run alone, as one statement: no BEGIN and no COMMIT round trip.
    Only the query methods begin it; `conn` is the connection itself, outside any transaction
    until `begin`."""

    __slots__ = ("_tx", "conn")

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self._tx: Transaction | None = None

    @property
    def begun(self) -> bool:
        return self._tx is not None

    async def begin(self) -> asyncpg.Connection:
        """The connection, in the transaction (begun now if it was not)."""
        if self._tx is None:
            tx = self.conn.transaction()
            await tx.start()
            self._tx = tx
        return self.conn

    async def commit(self) -> None:
        if self._tx is not None:
            tx, self._tx = self._tx, None
            await tx.commit()

    async def rollback(self) -> None:
        if self._tx is not None:
            tx, self._tx = self._tx, None
            await tx.rollback()

    async def execute(self, query: str, *args: Any) -> str:
        result: str = await (await self.begin()).execute(query, *args)
        return result

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await (await self.begin()).fetch(query, *args)
        return rows

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        row: asyncpg.Record | None = await (await self.begin()).fetchrow(query, *args)
        return row

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await (await self.begin()).fetchval(query, *args)
