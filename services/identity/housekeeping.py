"""Pruning what no rule looks at any more (old failures, ended sessions, expired links), every
`every` seconds until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

__all__ = ["PRUNE_EVERY", "Housekeeping"]

log = logging.getLogger(__name__)

PRUNE_EVERY = 600.0  # seconds


class Housekeeping:
    """Runs each of `prunes` in turn, then waits `every` seconds or for `stop()`."""

    def __init__(
        self, prunes: Sequence[Callable[[], Awaitable[None]]], *, every: float = PRUNE_EVERY
    ) -> None:
        self.prunes = tuple(prunes)
        self.every = every
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                for prune in self.prunes:
                    await prune()
            except Exception:  # housekeeping: log and try again later
                log.exception("pruning old sign-in failures, sessions and links failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.every)

    def stop(self) -> None:
        self._stopping.set()
