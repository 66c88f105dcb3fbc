"""Which backups retention keeps: keep-last N, then the newest of each of the last D days,
W ISO weeks and M months that have a backup (as restic's `forget --keep-*`). Pure."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

__all__ = ["DEFAULT_RETENTION", "Retention", "select_kept"]


@dataclass(frozen=True, slots=True)
class Retention:
    last: int
    daily: int
    weekly: int
    monthly: int

    def as_dict(self) -> dict[str, int]:
        return {
            "last": self.last,
            "daily": self.daily,
            "weekly": self.weekly,
            "monthly": self.monthly,
        }


DEFAULT_RETENTION = Retention(last=7, daily=7, weekly=4, monthly=6)


def _day(t: dt.datetime) -> Hashable:
    return t.date()


def _week(t: dt.datetime) -> Hashable:
    year, week, _ = t.isocalendar()
    return (year, week)


def _month(t: dt.datetime) -> Hashable:
    return (t.year, t.month)


def select_kept(backups: Sequence[tuple[str, dt.datetime]], policy: Retention) -> set[str]:
    """The ids of `backups` (id, time) that `policy` keeps; the newest is always kept."""
    newest_first = sorted(backups, key=lambda b: (b[1], b[0]), reverse=True)
    kept: set[str] = set()
    if not newest_first:
        return kept
    kept.add(newest_first[0][0])
    kept.update(b[0] for b in newest_first[: policy.last])
    rules: list[tuple[int, Callable[[dt.datetime], Hashable]]] = [
        (policy.daily, _day),
        (policy.weekly, _week),
        (policy.monthly, _month),
    ]
    for count, bucket in rules:
        seen: set[Hashable] = set()
        for backup_id, time in newest_first:
            if len(seen) >= count:
                break
            key = bucket(time)
            if key not in seen:  # the first met is the newest of its bucket
                seen.add(key)
                kept.add(backup_id)
    return kept
