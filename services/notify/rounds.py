"""A loop of rounds: every `every` seconds, or at once when nudged, until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging

__all__ = ["Rounds"]

log = logging.getLogger("services.notify")


class Rounds:
    """Subclasses define `round()` (the work of one round; a true result asks for another
    round at once) and set `every`."""

    every: float = 15.0
    what: str = "round"
    again: bool = False  # a round that did something is followed by another at once

    def __init__(self) -> None:
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def nudge(self) -> None:
        self._wake.set()

    async def round(self) -> int:
        raise NotImplementedError

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                while await self.round() and self.again and not self._stop.is_set():
                    pass
            except Exception:  # the loop outlives any one bad round
                log.exception("%s failed", self.what)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.every)
            self._wake.clear()
