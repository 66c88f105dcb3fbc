"""The time identity decides by: sessions, sign-in windows, TOTP steps, link and token expiry.

Every area takes a `Clock` (default `utcnow`, the wall clock), so tests move time instead of
sleeping through it. Event times (`recorded_at`) stay the store's.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

__all__ = ["Clock", "utcnow"]

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The wall clock, timezone-aware (the default `Clock`)."""
    return datetime.now(UTC)
