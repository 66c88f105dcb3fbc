"""Who is acting and why: carried from a command into the meta of the events it appends."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from libs.ctxvars import bound
from libs.events.nats_access import GATEWAY

__all__ = ["Context", "current", "use"]


@dataclass(frozen=True, slots=True)
class Context:
    actor: str = "system"
    correlation_id: str | None = None
    causation_id: str | None = None
    ip: str | None = None
    admin: bool = False  # the gateway vouches that `actor` is an administrator
    # The service that sent the request being served (its NATS user; proven by the subject's
    # last token, which nats-server lets only that user publish). None: not from the bus.
    sender: str | None = None

    @property
    def is_admin(self) -> bool:
        """An administrator, or the platform itself."""
        return self.admin or self.actor == "system"

    @property
    def is_gateway_itself(self) -> bool:
        """The gateway acting for itself (its edge, its metrics), as the bus proved: it may
        read what the edge serves, nothing more (it is never "system")."""
        return self.actor == GATEWAY and self.sender == GATEWAY

    def meta(self) -> dict[str, Any]:
        m: dict[str, Any] = {
            "actor": self.actor,
            "occurred_at": datetime.now(UTC).isoformat(),
        }
        if self.correlation_id:
            m["correlation_id"] = self.correlation_id
        if self.causation_id:
            m["causation_id"] = self.causation_id
        if self.ip:
            m["ip"] = self.ip
        return m

    def caused_by(self, event_id: str) -> Context:
        return replace(self, causation_id=event_id)


_current: ContextVar[Context] = ContextVar("hp_context", default=Context())  # noqa: B039


def current() -> Context:
    return _current.get()


def use(ctx: Context) -> bound[Context]:
    """`with use(ctx):` the current context inside the block."""
    return bound(_current, ctx)
