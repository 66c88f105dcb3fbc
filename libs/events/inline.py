"""Read models written in the same transaction as the events they reflect.

A service whose commands must see their own writes at once (a unique location, a session usable
the moment login answers) appends and applies in one transaction: the read model's unique
indexes then guard invariants for the log too (a duplicate fails the whole transaction, events
included). The projection's advisory lock is taken shared here and exclusively by a rebuild
(`homeport replay <name>`), so inline writers and a rebuild wait for each other.

A projection that gives an event's change as statements (`Projection.statements_for`,
statements.py) has it run within the append's own statement: one round trip, and no
transaction needed around a lone append (`append_alone`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import asyncpg

from libs.events.envelope import NewEvent, RecordedEvent
from libs.events.projection import Projection, _lock_key
from libs.events.statements import Statement
from libs.events.store import PostgresEventStore

__all__ = ["append_alone", "append_inline", "inline_lock_key"]


@functools.cache
def inline_lock_key(projection: type[Projection]) -> int:
    """The advisory lock key a rebuild of `projection` holds exclusively."""
    return _lock_key(projection.name)


async def append_inline(
    store: PostgresEventStore,
    conn: asyncpg.Connection,
    projection: Projection,
    stream: str,
    new: Sequence[Any],
    expected_version: int | None,
    *,
    before: Any = None,
) -> list[RecordedEvent]:
    """Append `new` to `stream` and apply it to `projection`, in the caller's transaction:
    in the append's own statement when the projection gives its change as statements.
    `before`: the stream's state at `expected_version`, if the caller holds it
    (`Projection.statements_after`)."""
    prepared, statements = _change(store, projection, stream, new, expected_version, before)
    recorded = await store.append_recorded(
        conn,
        stream,
        prepared,
        expected_version,
        lock=inline_lock_key(type(projection)),
        statements=statements or (),
    )
    if statements is None:
        await projection.apply(conn, recorded)
    return recorded


async def append_alone(
    store: PostgresEventStore,
    conn: asyncpg.Connection,
    projection: Projection,
    stream: str,
    new: Sequence[Any],
    expected_version: int | None,
    *,
    before: Any = None,
) -> list[RecordedEvent] | None:
    """`append_inline` as one statement on a connection in no transaction (a statement is
    atomic on its own); None, having written nothing, when the projection cannot give the
    change as statements: the caller appends in a transaction instead."""
    prepared, statements = _change(store, projection, stream, new, expected_version, before)
    if statements is None:
        return None
    return await store.append_recorded(
        conn,
        stream,
        prepared,
        expected_version,
        lock=inline_lock_key(type(projection)),
        statements=statements,
    )


def _change(
    store: PostgresEventStore,
    projection: Projection,
    stream: str,
    new: Sequence[Any],
    expected: int | None,
    before: Any,
) -> tuple[list[NewEvent], Sequence[Statement] | None]:
    """`new` as it will be appended, and the projection's statements for it (None: apply)."""
    prepared = store.prepare(new)
    if before is None:
        return prepared, projection.statements_for(stream, prepared)
    return prepared, projection.statements_after(before, expected, stream, prepared)
