"""When the daily backup runs: at HH:MM server time plus a jitter fixed per day. Pure."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

__all__ = ["DEFAULT_SCHEDULE", "Schedule", "next_run"]


@dataclass(frozen=True, slots=True)
class Schedule:
    enabled: bool
    time: str  # HH:MM
    jitter_minutes: int

    def as_dict(self) -> dict[str, object]:
        return {"enabled": self.enabled, "time": self.time, "jitter_minutes": self.jitter_minutes}


DEFAULT_SCHEDULE = Schedule(enabled=True, time="03:30", jitter_minutes=30)


def _jitter(day: dt.date, minutes: int, seed: str) -> dt.timedelta:
    """The same offset for a day however often it is asked (a restart does not move it)."""
    if minutes <= 0:
        return dt.timedelta()
    digest = hashlib.sha256(f"{seed}:{day.isoformat()}".encode()).digest()
    return dt.timedelta(seconds=int.from_bytes(digest[:4], "big") % (minutes * 60))


def next_run(schedule: Schedule, after: dt.datetime, seed: str = "") -> dt.datetime | None:
    """The first scheduled time strictly after `after` (local aware datetime), or None if off."""
    if not schedule.enabled:
        return None
    hour, minute = (int(p) for p in schedule.time.split(":"))
    day = after.date() - dt.timedelta(days=1)  # yesterday's jitter may run past midnight
    for _ in range(4):
        at = dt.datetime.combine(day, dt.time(hour, minute), after.tzinfo)
        at += _jitter(day, schedule.jitter_minutes, seed)
        if at > after:
            return at
        day += dt.timedelta(days=1)
    raise AssertionError("unreachable: a day later is always after")
