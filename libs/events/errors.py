"""Errors of the event store, relay, consumers and bus."""

from __future__ import annotations

__all__ = [
    "ConcurrencyError",
    "EventStoreError",
    "MigrationError",
    "UnknownEventType",
]


class EventStoreError(Exception):
    """Base of every error raised by libs.events."""


class ConcurrencyError(EventStoreError):
    """An append found the stream at another version than the caller expected."""

    def __init__(self, stream: str, expected: int | None, actual: int) -> None:
        super().__init__(
            f"stream {stream} is at version {actual}, expected {expected}: "
            "reload the stream and decide again"
        )
        self.stream = stream
        self.expected = expected
        self.actual = actual


class UnknownEventType(EventStoreError):
    """An event type name has no registered class."""


class MigrationError(EventStoreError):
    """A schema migration could not be applied."""
