"""Who is acting and why: carried from a command into the meta of the events it appends."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

__all__ = ["Context", "current", "use"]


@dataclass(frozen=True, slots=True)
class Context:
    actor: str = "system"
    correlation_id: str | None = None
    causation_id: str | None = None
    ip: str | None = None
    admin: bool = False  # the gateway vouches that `actor` is an administrator

    @property
    def is_admin(self) -> bool:
        """An administrator, or the platform itself."""
        return self.admin or self.actor == "system"

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


@contextmanager
def use(ctx: Context) -> Iterator[Context]:
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)
