"""The pieces of identity's read model each area declares: a `Table` of steps, one per event
type, with the stream categories it writes and what each event does to whoami's answers.

Each area module (users, sessions, signin, mfa, groups, ldap_apps) owns its table;
projections.py assembles them into the projection. This module imports none of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import asyncpg

from libs.events.envelope import RecordedEvent
from libs.events.statements import Statement

__all__ = ["Apply", "Effect", "Sql", "Step", "Table"]

Apply = Callable[[asyncpg.Connection, Any, RecordedEvent], Awaitable[None]]
Sql = Callable[[Any], Sequence[Statement]]


class Effect(StrEnum):
    """What an event does to whoami's answers (who a credential is, with role and profile),
    which gateways cache for up to a second."""

    none = "none"  # nothing any cached answer holds (a new session or token, a failed sign-in)
    user = "user"  # the answers of `data["user_id"]` change or end
    all = "all"  # every answer may change (the admin TOTP policy)


@dataclass(frozen=True, slots=True)
class Step:
    """The read-model change of one event type, and its effect on whoami's answers.

    Either `apply` runs it on the connection, or `sql` gives it as statements that join the
    relation `appended` (libs/events/statements.py): those run within the append's own
    statement on the live path, and after the event's figures on a rebuild."""

    apply: Apply | None = None
    effect: Effect = Effect.user
    effect_of: Callable[[Any], Effect] | None = None  # when it depends on the event
    sql: Sql | None = None

    def __post_init__(self) -> None:
        if (self.apply is None) == (self.sql is None):
            raise ValueError("a read-model step has either apply or sql")

    def effect_for(self, event: Any) -> Effect:
        return self.effect_of(event) if self.effect_of is not None else self.effect


@dataclass(frozen=True)
class Table:
    """An area's read-model steps by event type, and the stream categories it writes."""

    categories: frozenset[str]
    steps: Mapping[str, Step] = field(default_factory=dict)
