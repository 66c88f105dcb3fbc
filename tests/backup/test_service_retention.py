"""Retention and the daily schedule: pure rules, property-tested."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from services.backup.service.retention import Retention, select_kept
from services.backup.service.schedule import Schedule, next_run

UTC = dt.UTC
_times = st.lists(
    st.datetimes(
        min_value=dt.datetime(2025, 1, 1),
        max_value=dt.datetime(2027, 12, 31),
        timezones=st.just(UTC),
    ),
    min_size=0,
    max_size=60,
    unique=True,
)
_policy = st.builds(
    Retention,
    last=st.integers(0, 10),
    daily=st.integers(0, 10),
    weekly=st.integers(0, 6),
    monthly=st.integers(0, 6),
)


def _backups(times: list[dt.datetime]) -> list[tuple[str, dt.datetime]]:
    return [(f"b{i:03d}", t) for i, t in enumerate(times)]


@settings(max_examples=300, deadline=None)
@given(_times, _policy)
def test_retention_never_forgets_the_newest_and_keeps_newest_of_each_bucket(
    times: list[dt.datetime], policy: Retention
) -> None:
    backups = _backups(times)
    kept = select_kept(backups, policy)
    assert kept <= {b for b, _ in backups}
    if not backups:
        assert kept == set()
        return
    newest = max(backups, key=lambda b: (b[1], b[0]))
    assert newest[0] in kept
    by_time = dict(backups)
    order = sorted(backups, key=lambda b: (b[1], b[0]), reverse=True)
    assert {b for b, _ in order[: policy.last]} <= kept
    # every kept backup is in the last-N, or the newest of its day, ISO week or month
    for b in kept:
        t = by_time[b]
        same_day = [i for i, u in backups if u.date() == t.date()]
        same_week = [i for i, u in backups if u.isocalendar()[:2] == t.isocalendar()[:2]]
        same_month = [i for i, u in backups if (u.year, u.month) == (t.year, t.month)]

        def newest_of(ids: list[str], when: dict[str, dt.datetime] = by_time) -> str:
            return max(ids, key=lambda n: (when[n], n))

        assert (
            b in {i for i, _ in order[: max(policy.last, 1)]}
            or (policy.daily and newest_of(same_day) == b)
            or (policy.weekly and newest_of(same_week) == b)
            or (policy.monthly and newest_of(same_month) == b)
        )
    # the number of days kept by the daily rule is what it asks (or every day there is)
    days = {u.date() for _, u in backups}
    kept_days = {by_time[b].date() for b in kept}
    assert len(kept_days) >= min(policy.daily, len(days))


def test_retention_of_a_month_of_dailies_with_the_defaults() -> None:
    start = dt.datetime(2026, 1, 1, 3, 30, tzinfo=UTC)
    backups = _backups([start + dt.timedelta(days=d) for d in range(60)])
    kept = select_kept(backups, Retention(last=7, daily=7, weekly=4, monthly=6))
    kept_days = sorted(t for b, t in backups if b in kept)
    assert kept_days[-1] == backups[-1][1]
    assert len([t for t in kept_days if t > backups[-8][1]]) == 7  # the last week, daily
    assert dt.datetime(2026, 1, 31, 3, 30, tzinfo=UTC) in kept_days  # January's newest
    assert len(kept) == 7 + 3 + 1  # 7 days, 3 more Sundays, January's last day


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(min_value=dt.datetime(2025, 1, 1), max_value=dt.datetime(2027, 1, 1)),
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 180),
)
def test_the_next_run_is_after_now_within_a_day_and_jitter_and_stable(
    now: dt.datetime, hour: int, minute: int, jitter: int
) -> None:
    now = now.replace(tzinfo=UTC)
    schedule = Schedule(True, f"{hour:02d}:{minute:02d}", jitter)
    at = next_run(schedule, now, "seed")
    assert at is not None and now < at <= now + dt.timedelta(days=1, minutes=jitter)
    base = at.replace(hour=hour, minute=minute, second=0, microsecond=0)
    offset = at - base if at >= base else at - (base - dt.timedelta(days=1))
    assert dt.timedelta() <= offset < dt.timedelta(minutes=max(jitter, 1))
    assert next_run(schedule, now, "seed") == at
    assert next_run(schedule, at, "seed") not in (None, at)


def test_a_disabled_schedule_never_runs() -> None:
    assert next_run(Schedule(False, "03:30", 30), dt.datetime.now(UTC)) is None
