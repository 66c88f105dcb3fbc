"""Whether the caller of a long request (an event stream) still may: open streams end when
their session or token ends, the user is disabled, loses a role the route needs, or the
session expires (SECURITY.md "Accounts").

A streaming handler asks the dispatcher (app.py `caller_of`) for its request's caller: how to
check it again (`recheck`, the same authentication and authorization the request passed) and
how to hear that identity changed something of that user (`listen`, the principal cache's
drops after `hp.identity.changed`). The stream (handlers/tasks.py `TaskStreams.opened`)
follows its caller with a `Watch`: it
re-checks when a change of that user is announced, and at least every `every` seconds
otherwise (an expiry announces nothing). A check that cannot be made ends the stream too
(fail closed; the client reconnects and is answered as any new request).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from libs.events.bus import BusError

__all__ = ["Caller", "Watch"]

log = logging.getLogger("homeport.gateway.api")

Listen = Callable[[Callable[[str | None], None]], Callable[[], None]]


@dataclass(frozen=True, eq=False)
class Caller:
    """The authenticated caller of the request being handled."""

    user_id: str
    recheck: Callable[[], Awaitable[bool]]  # True while the credential and its rights hold
    listen: Listen | None = None  # hear drops of cached principals (None: no cache)


class Watch:
    """One open stream's view of its caller: `wake` on an announcement of them (or when the
    streams stop), `ended()` after a pause says whether the stream must end."""

    def __init__(self, caller: Caller | None, *, every: float) -> None:
        self.caller = caller
        self.every = every
        self.woken = asyncio.Event()
        self._forced = True  # a change may have come between the request's check and now
        self._next = asyncio.get_running_loop().time() + every
        self._unlisten: Callable[[], None] | None = None

    def __enter__(self) -> Watch:
        if self.caller is not None and self.caller.listen is not None:
            self._unlisten = self.caller.listen(self._heard)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._unlisten is not None:
            self._unlisten()

    def _heard(self, user_id: str | None) -> None:
        if self.caller is not None and user_id in (None, self.caller.user_id):
            self._forced = True
            self.woken.set()

    def wake(self) -> None:
        self.woken.set()

    async def pause(self, seconds: float) -> None:
        """Wait `seconds`, or less when woken."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.woken.wait()
        self.woken.clear()

    async def ended(self) -> bool:
        """Whether the caller no longer may (checked when announced, else every `every` s)."""
        if self.caller is None:
            return False
        now = asyncio.get_running_loop().time()
        if not self._forced and now < self._next:
            return False
        self._forced, self._next = False, now + self.every
        try:
            return not await self.caller.recheck()
        except BusError as e:
            log.info("an open stream ended: its caller could not be checked again: %s", e.message)
            return True
