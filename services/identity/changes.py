"""Announcing changed principals: after a transaction commits, identity names on core NATS the
users whose whoami answer it changed, so gateways drop what they cached of them.

    hp.identity.changed  {"user_id": "<uuid>"}  one message per user (credentials ended, role or
                         profile changed, user disabled or deleted), or
                         {"all": true}              every user (the admin TOTP policy changed)

Every transaction goes through `IdentityStore.write`, which collects what the projection's
`apply` noted (`collecting`) and, once it has committed, publishes (`announce`) before the
command replies. Core NATS, not JetStream: a lost message costs at most the gateways' cache
lifetime (1 s at most, services/gateway/api/principals.py), which is the bar anyway.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import nats.errors
from nats.aio.client import Client as NATS

__all__ = ["CHANGED_SUBJECT", "Changes", "announce", "collecting", "note"]

log = logging.getLogger(__name__)

CHANGED_SUBJECT = "hp.identity.changed"


@dataclass(slots=True)
class Changes:
    """The users one transaction changed the whoami answers of (or everyone's)."""

    users: set[str] = field(default_factory=set)
    everyone: bool = False

    def __bool__(self) -> bool:
        return self.everyone or bool(self.users)

    def messages(self) -> list[bytes]:
        """The messages that announce these changes."""
        if self.everyone:
            return [b'{"all":true}']
        return [json.dumps({"user_id": u}).encode() for u in sorted(self.users)]


_CURRENT: ContextVar[Changes | None] = ContextVar("hp_identity_changes", default=None)


@contextlib.contextmanager
def collecting() -> Iterator[Changes]:
    """Collect what `note` is told within the block (one transaction)."""
    changes = Changes()
    token = _CURRENT.set(changes)
    try:
        yield changes
    finally:
        _CURRENT.reset(token)


def note(users: Iterable[str], *, everyone: bool = False) -> None:
    """Record changed principals in the transaction being collected, if any."""
    changes = _CURRENT.get()
    if changes is None:
        return
    changes.users.update(users)
    changes.everyone = changes.everyone or everyone


async def announce(nc: NATS, changes: Changes) -> None:
    """Publish `changes` and flush. A NATS failure is logged, not raised: the change is
    committed, and gateways forget what they cached within a second anyway."""
    if not changes:
        return
    try:
        # No flush: the reply is published after these on the same connection, and NATS
        # delivers one connection's messages in order, so no gateway sees the reply first.
        for body in changes.messages():
            await nc.publish(CHANGED_SUBJECT, body)
    except (nats.errors.Error, TimeoutError) as e:
        log.warning("could not announce changed principals on %s: %r", CHANGED_SUBJECT, e)
