"""The identity read model (schema `identity`), written inline with the events it reflects.

Identity answers "who is this session?" on every API request and must see its own writes at
once (a session is usable the moment login answers; a disabled user's sessions end at once).
So a command appends its events and applies them to the read model in one transaction
(store.py, through libs/events/repository.py), rather than waiting for the read model to catch
up through the relay. Consequences, each relied on:
- The unique indexes of the read model (name, email) guard those invariants: a duplicate makes
  the whole transaction fail, the events included. The log therefore never holds two live
  accounts with one name.
- `homeport replay identity` rebuilds the read model from the log with the same `apply`, under
  the projection's advisory lock held exclusively; inline writers take it shared, so they wait
  for a rebuild and a rebuild waits for them.
- Each row keeps only sealed personal data (and keyed blind indexes for look-ups), so the read
  model needs no keyring to be rebuilt, and a deleted user's row goes with the user. Client
  addresses and browser strings are the exception: sealed to their week in the events, kept
  plain here (read back as events are applied) for at most the retention period (addresses.py).
- `sessions.last_seen` (idle timeout) is operational state, touched by whoami and not an event:
  a rebuild sets it to the sign-in time, so a rebuild may end sessions idle since then early.
- Gateways cache whoami answers for up to a second: `apply` notes the users whose answer an
  event changes (each step declares its `Effect`), and `IdentityStore.write` announces them
  once the transaction commits (changes.py).

The steps come from the areas that own them, each a `readmodel.Table`; `TABLES` lists them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import asyncpg

from libs.events.envelope import NewEvent, RecordedEvent, category_of
from libs.events.periods import AddressReader
from libs.events.projection import Projection, register_projection
from libs.events.registry import REGISTRY
from libs.events.statements import RECORDED_HEAD, Statement, compose
from services.identity import changes, groups, ldap_apps, mfa, sessions, signin, users
from services.identity.addresses import keys_for_replay, unsealed
from services.identity.readmodel import Effect, Step, Table

__all__ = ["TABLES", "IdentityProjection"]

# Every area's read-model steps.
TABLES: tuple[Table, ...] = (
    users.TABLE,
    sessions.TABLE,
    signin.TABLE,
    mfa.TABLE,
    groups.TABLE,
    ldap_apps.TABLE,
)


@register_projection
class IdentityProjection(Projection):
    """Accounts, sessions, failed sign-ins, second factors, tokens, groups, links, app accounts."""

    name: ClassVar[str] = "identity"
    schema: ClassVar[str] = "identity"
    migrations: ClassVar[Path | None] = Path(__file__).parent / "migrations"

    def __init__(
        self, tables: Sequence[Table] = TABLES, *, addresses: AddressReader | None = None
    ) -> None:
        """`addresses`: the weeks' keys, to keep a plain copy of recent client addresses (the
        sign-in limits and the sessions list need them); without, sealed ones are not kept."""
        self.addresses = addresses
        self.categories: frozenset[str] = frozenset().union(*(t.categories for t in tables))
        self.steps: dict[str, Step] = {}
        for table in tables:
            for event_type, step in table.steps.items():
                if event_type in self.steps:
                    raise ValueError(f"{event_type} has two read-model steps")
                self.steps[event_type] = step

    @classmethod
    def for_replay(cls) -> IdentityProjection:
        """`homeport replay identity`: reads addresses back with identity's key file."""
        return cls(TABLES, addresses=keys_for_replay())

    def wants(self, event: RecordedEvent) -> bool:
        return event.category in self.categories

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            "TRUNCATE identity.sessions, identity.login_failures, identity.known_addresses,"
            " identity.known_places, identity.users, identity.platform"
        )

    async def apply(self, conn: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        for event in events:
            step = self.steps.get(event.type)
            if step is None or event.category not in self.categories:
                continue
            decoded = unsealed(self.addresses, REGISTRY.decode(event))
            if step.sql is not None:
                head = (event.position, event.version, event.recorded_at)
                sql, args = compose(RECORDED_HEAD, head, step.sql(decoded), "SELECT 1")
                await conn.execute(sql, *args)
            else:
                assert step.apply is not None
                await step.apply(conn, decoded, event)
            _note(step, decoded, event.data)

    def statements_for(self, stream: str, events: Sequence[NewEvent]) -> Sequence[Statement] | None:
        """One event whose step is given as statements: those, to run within the append."""
        if len(events) != 1:
            return None
        event = events[0]
        step = self.steps.get(event.type)
        if step is None or category_of(stream) not in self.categories:
            return ()  # nothing to apply: what `apply` skips
        if step.sql is None:
            return None
        decoded = unsealed(
            self.addresses, REGISTRY.decode_data(event.type, event.schema, event.data)
        )
        _note(step, decoded, event.data)  # dropped with the write if the append fails
        return step.sql(decoded)


def _note(step: Step, decoded: object, data: Mapping[str, Any]) -> None:
    """The whoami answers an applied event changes, for the write to announce once it
    commits (changes.py; a no-op outside a write)."""
    effect = step.effect_for(decoded)
    user_id = data.get("user_id")
    if effect is Effect.all:
        changes.note((), everyone=True)
    elif effect is Effect.user and isinstance(user_id, str):
        changes.note((user_id,))
