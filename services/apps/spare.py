"""One app id whose network is made before an install asks for it.

Docker takes about 80 ms to make a bridge network, a fifth of an install's time on a quiet
machine. The apps service therefore keeps one id in reserve with its network already made: the
next install or clone takes that id (its network step then finds the network and goes on) and a
new one is made once no operation runs, so it never competes with an install for dockerd.

Names stay derived from the app id (services/apps/names.py): nothing records a network name.
The reserve is only a head start: an install whose id has no network (none in reserve, or the
network removed meanwhile) makes it in its network step as before. At start, networks of ids no
app ever had (a reserve left by the last run, an install refused after it took the id) are
taken back: one becomes the reserve, the others are removed. Only a network made as the runtime
makes an app's (icc off, this id's label) can be the reserve; and the install's network step
makes again one that is not, so a network someone made first under our name never carries an
app.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

from libs.service.metrics import REGISTRY, Gauge
from services.apps.container import ContainerRuntime, NetworkInfo, RuntimeFailure
from services.apps.names import Names

__all__ = ["SpareNetwork"]

log = logging.getLogger("homeport.apps.spare")

NETWORKS_AHEAD = Gauge(
    "homeport_apps_networks_ahead",
    "App networks made before an install asks for one, ready to be taken (0 or 1)",
    registry=REGISTRY,
)


class SpareNetwork:
    def __init__(
        self,
        runtime: ContainerRuntime,
        names: Callable[[str], Names],
        known: Callable[[str], Awaitable[bool]],
        make: Callable[[str], Awaitable[NetworkInfo]],
    ) -> None:
        """`names`: an app id's names; `known`: whether an app with that id was ever asked for;
        `make`: makes an app id's network as an install's network step does."""
        self._runtime = runtime
        self._make_network = make
        self._names = names
        self._known = known
        self._ready: str | None = None  # the id in reserve (its network made), if any
        self._keep(None)  # the gauge too (a service started again in one process)
        self._taken: str | None = None
        self._making: asyncio.Task[None] | None = None
        self._closed = False

    def _keep(self, app_id: str | None) -> None:
        self._ready = app_id
        NETWORKS_AHEAD.set(0 if app_id is None else 1)

    def take(self) -> str:
        """An id for a new app: the one in reserve, else a new one (its network made later by
        the install's network step)."""
        app_id = self._ready
        self._keep(None)
        self._taken = app_id
        return app_id if app_id is not None else str(uuid.uuid4())

    def give_back(self, app_id: str) -> None:
        """The command that took `app_id` was refused before it recorded anything."""
        if app_id == self._taken and self._ready is None:
            self._keep(app_id)
        self._taken = None

    def refill(self) -> None:
        """Make a new reserve in the background, unless there is one or one is being made."""
        if self._closed or self._ready is not None:
            return
        if self._making is not None and not self._making.done():
            return
        self._making = asyncio.create_task(self._make(), name="apps.spare_network")
        self._making.add_done_callback(_said)

    async def _make(self) -> None:
        app_id = str(uuid.uuid4())
        try:
            await self._make_network(app_id)
        except RuntimeFailure as e:  # only a head start lost: the next install makes its own
            log.warning("no network made ahead for the next install: %s", e)
            return
        if not self._closed:
            self._keep(app_id)

    async def adopt(self) -> None:
        """At start: networks of ids no app ever had become the reserve (one) or go."""
        try:
            found = await self._runtime.app_networks(self._names("").network)
        except RuntimeFailure as e:
            log.warning("networks made ahead by the last run not looked for: %s", e)
            return
        for name, app_id, as_made in sorted(found):
            if not _an_id(app_id) or name != self._names(app_id).network:
                continue  # not a name this service gives
            if await self._known(app_id):
                continue
            if self._ready is None and as_made:  # one changed by hand (icc on...) is no reserve
                self._keep(app_id)
                continue
            try:
                await self._runtime.remove_network(name)
            except RuntimeFailure as e:
                log.warning("a network made ahead and not used was not removed: %s", e)

    async def aclose(self) -> None:
        """No new reserve after this; one being made is waited for (dockerd finishes it anyway,
        and the next start takes it back)."""
        self._closed = True
        if self._making is not None:
            await asyncio.gather(self._making, return_exceptions=True)


def _an_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _said(task: asyncio.Task[None]) -> None:
    """A failure other than the runtime's is a bug: logged with its trace, not lost."""
    if not task.cancelled() and task.exception() is not None:
        log.error("making a network ahead failed", exc_info=task.exception())
