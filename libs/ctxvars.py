"""`with bound(var, value):` a context variable holds `value` for the block.

A class rather than a `@contextmanager` generator: the gateway enters three of these for every
request, and a generator-based one costs several times as much to enter and leave.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any, Generic, TypeVar

__all__ = ["bound"]

T = TypeVar("T")


class bound(Generic[T]):
    __slots__ = ("_token", "_value", "_var")

    def __init__(self, var: ContextVar[T], value: T) -> None:
        self._var = var
        self._value = value
        self._token: Token[T] | None = None

    def __enter__(self) -> T:
        self._token = self._var.set(self._value)
        return self._value

    def __exit__(self, *exc: Any) -> None:
        assert self._token is not None
        self._var.reset(self._token)
