"""The events of platform updates (issue 15, "Platform updates, signed").

`homeport update` (root, deploy/update_events.py) appends the outcome of every update to stream
`platform-updates`: `PlatformUpdateStarted`, then `PlatformUpdated` or
`PlatformUpdateRolledBack`; a release refused before anything was installed (unsigned, altered,
older) is one `PlatformUpdateRefused`. The apps service (services/apps/platform.py) appends the
admin's nightly-check setting, `PlatformAutoUpdateSet`, to stream `platform-settings` (the last
one wins; off until the admin turns it on), and `homeport update --scheduled` reads it.

This module imports only the event registry: the CLI loads it without the service.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from libs.events.registry import REGISTRY

__all__ = [
    "MAX_REASON",
    "SETTINGS_STREAM",
    "UPDATES_STREAM",
    "PlatformAutoUpdateSet",
    "PlatformUpdateRefused",
    "PlatformUpdateRolledBack",
    "PlatformUpdateStarted",
    "PlatformUpdated",
    "auto_update_enabled",
]

UPDATES_STREAM = "platform-updates"
SETTINGS_STREAM = "platform-settings"
MAX_REASON = 500  # characters of a refusal's or failure's reason kept in the event


def _cut(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 1] + "…"


@REGISTRY.event("PlatformUpdateStarted")
@dataclass(frozen=True, slots=True, kw_only=True)
class PlatformUpdateStarted:
    """A verified, newer release is being installed."""

    from_version: str
    to_version: str
    scheduled: bool = False  # started by the nightly timer

    def summary(self) -> str:
        how = " (nightly check)" if self.scheduled else ""
        return f"platform update from {self.from_version} to {self.to_version} started{how}"


@REGISTRY.event("PlatformUpdated")
@dataclass(frozen=True, slots=True, kw_only=True)
class PlatformUpdated:
    """The new version runs and every service passed its health check."""

    from_version: str
    to_version: str
    seconds: float

    def summary(self) -> str:
        return (
            f"platform updated from {self.from_version} to {self.to_version}"
            f" in {self.seconds:.0f} s"
        )


@REGISTRY.event("PlatformUpdateRolledBack")
@dataclass(frozen=True, slots=True, kw_only=True)
class PlatformUpdateRolledBack:
    """The update failed at `step`; `from_version` runs again (or never stopped)."""

    from_version: str
    to_version: str
    step: str
    reason: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", _cut(self.reason))

    def summary(self) -> str:
        return (
            f"platform update to {self.to_version} failed at {self.step} and was rolled back:"
            f" {self.from_version} is running ({self.reason})"
        )


@REGISTRY.event("PlatformUpdateRefused")
@dataclass(frozen=True, slots=True, kw_only=True)
class PlatformUpdateRefused:
    """A release was refused before anything was installed (unsigned, altered, older)."""

    reason: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "reason", _cut(self.reason))

    def summary(self) -> str:
        return f"platform update refused: {self.reason}"


@REGISTRY.event("PlatformAutoUpdateSet")
@dataclass(frozen=True, slots=True, kw_only=True)
class PlatformAutoUpdateSet:
    """The nightly platform update check on or off (stream `platform-settings`)."""

    enabled: bool

    def summary(self) -> str:
        return f"nightly platform updates: {'on' if self.enabled else 'off'}"


def auto_update_enabled(settings: Sequence[Any]) -> bool:
    """Whether the nightly update is on, from the recorded events of `platform-settings`
    (anything with `.type` and `.data`); off when nothing was set."""
    enabled = False
    for e in settings:
        if e.type == "PlatformAutoUpdateSet":
            enabled = bool(e.data["enabled"])
    return enabled
