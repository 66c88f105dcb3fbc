"""The daily run: at the scheduled time (plus jitter) back up everything, then apply retention.

`tick(now)` does one step and says when to look again, so tests drive it with their own clock
and no sleeping; `run()` is the loop around it for the service.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from services.backup.service import metrics
from services.backup.service.jobs import Engine, new_run_id
from services.backup.service.schedule import next_run

__all__ = ["Scheduler"]

log = logging.getLogger("services.backup.scheduler")
_IDLE_LOOK = dt.timedelta(minutes=5)


class Scheduler:
    def __init__(self, engine: Engine, clock: Callable[[], dt.datetime], *, seed: str = "") -> None:
        self.engine = engine
        self.clock = clock
        self.seed = seed
        self.due: dt.datetime | None = None
        self._stop = asyncio.Event()

    async def tick(self) -> dt.datetime:
        """Start the run when due (and set up); the time to look again."""
        now = self.clock()
        settings = await self.engine.settings()
        metrics.SCHEDULED_SINCE.set(settings.scheduled_since)
        if self.due is None:
            self.due = next_run(settings.schedule, now, self.seed)
        if self.due is not None and now >= self.due:
            self.due = next_run(settings.schedule, now, self.seed)
            if settings.ready:
                run_id = new_run_id()
                job = self.engine.back_up_job(run_id, None)
                await self.engine.submit("run", "Daily backup", job, owner="system")
                await self.engine.submit(
                    "prune", "Apply retention", self.engine.prune_job(), owner="system"
                )
        later = now + _IDLE_LOOK
        return min(self.due, later) if self.due is not None else later

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                wake = await self.tick()
            except Exception:
                log.exception("backup schedule tick failed")
                wake = self.clock() + _IDLE_LOOK
            wait = max((wake - self.clock()).total_seconds(), 1.0)
            try:
                await asyncio.wait_for(self._stop.wait(), wait)
            except TimeoutError:
                pass

    def stop(self) -> None:
        self._stop.set()
