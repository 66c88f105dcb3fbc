"""The local stack's error: one type, its message says why and what to do."""

from __future__ import annotations

__all__ = ["StackError"]


class StackError(Exception):
    """The stack cannot start or run; the message says why and what to do."""
