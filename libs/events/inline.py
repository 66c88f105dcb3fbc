"""Read models written in the same transaction as the events they reflect.

A service whose commands must see their own writes at once (a unique location, a session usable
the moment login answers) appends and applies in one transaction: the read model's unique
indexes then guard invariants for the log too (a duplicate fails the whole transaction, events
included). The projection's advisory lock is taken shared here and exclusively by a rebuild
(`homeport replay <name>`), so inline writers and a rebuild wait for each other.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import asyncpg

from libs.events.envelope import RecordedEvent
from libs.events.projection import Projection, _lock_key
from libs.events.store import PostgresEventStore

__all__ = ["append_inline", "inline_lock_key"]


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
) -> list[RecordedEvent]:
    """Append `new` to `stream` and apply it to `projection`, in the caller's transaction."""
    lock = inline_lock_key(type(projection))
    recorded = await store.append_recorded(conn, stream, new, expected_version, lock=lock)
    await projection.apply(conn, recorded)
    return recorded
