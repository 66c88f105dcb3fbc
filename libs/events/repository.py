"""A service's streams: load one and fold it; append with the expected version, applying the
service's inline read model in the same transaction; driver errors become the service's own.

Apps, certs, dns and identity keep their state this way: a command loads the stream, decides,
and appends at the version it decided on. A concurrent writer makes the append fail with the
service's conflict error (reload and decide again); a unique index of the read model that the
new events would break (a location or a username already taken) fails the whole transaction,
events included, with the error the service maps that constraint to.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import asyncpg

from libs.events.envelope import RecordedEvent
from libs.events.errors import ConcurrencyError
from libs.events.inline import append_inline
from libs.events.projection import Projection
from libs.events.store import PostgresEventStore

__all__ = ["Repository"]

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
    ) -> list[RecordedEvent]:
        """Append `new` to `key`'s stream at `expected` (None: any version) and apply it."""
        if conn is not None:
            return await self._append_on(conn, key, new, expected)
        return await self.transaction(lambda c: self._append_on(c, key, new, expected))

    async def transaction(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run `fn` in one transaction, with the driver's errors translated."""
        try:
            async with self.store.pool.acquire() as conn, conn.transaction():
                return await fn(conn)
        except ConcurrencyError:
            raise self.conflict() from None
        except asyncpg.UniqueViolationError as e:
            raise self.translate(e) from None

    def translate(self, e: asyncpg.UniqueViolationError) -> Exception:
        """The service's error for a unique violation (`e` itself when none is mapped)."""
        constraint = e.constraint_name or ""
        for part, make in self.unique.items():
            if part in constraint:
                return make()
        unmapped: Exception = e
        return unmapped

    async def _append_on(
        self, conn: asyncpg.Connection, key: str, new: Sequence[Any], expected: int | None
    ) -> list[RecordedEvent]:
        stream = self.stream_of(key)
        if self.projection is None:
            return await self.store.append_recorded(conn, stream, new, expected)
        return await append_inline(self.store, conn, self.projection, stream, new, expected)
