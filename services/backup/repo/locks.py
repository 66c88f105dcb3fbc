"""Lock objects on the target (FORMAT.md, "Locks"): a backup holds a shared lock, a prune (or
forget) an exclusive one, so that the two never overlap, even from two processes or machines.

Taking a lock writes `locks/<kind>-<32 hex>` (JSON: kind, time, host, pid), then lists `locks/`:
if another live lock conflicts (exclusive against anything), the own object is deleted and the
taker backs off (random jitter) and tries again, until `wait` seconds have passed. As both sides
write before they list, and a target lists every completed put, at least one of two racing
takers sees the other: they never both proceed. A held lock is rewritten with a new time every
`stale / 4` seconds; one whose time is older than `stale` seconds is stale (its process died)
and is ignored (and removed by the next exclusive taker). A holder that could not refresh for
`stale / 2` seconds stops before its next step (`LockLost`): by then another taker may deem it
stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable

from services.backup.repo.errors import BackupError
from services.backup.targets.base import Target, TargetError, TargetMissing

__all__ = ["HeldLock", "LockLost", "RepositoryLocked", "hold"]

PREFIX = "locks/"
_NAME = re.compile(r"^locks/(backup|prune)-[0-9a-f]{32}$")


class RepositoryLocked(BackupError):
    """Another backup or prune holds the repository (message names what and since when)."""


class LockLost(BackupError):
    """The lock could not be refreshed in time: another process may have taken over."""


class HeldLock:
    """A lock object this process holds and refreshes."""

    def __init__(self, target: Target, kind: str, stale: float, clock: Callable[[], float]):
        self.target = target
        self.kind = kind
        self.name = f"{PREFIX}{kind}-{secrets.token_hex(16)}"
        self.stale = stale
        self._clock = clock
        self._refreshed = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def _body(self) -> bytes:
        doc = {"kind": self.kind, "time": self._clock(), "host": socket.gethostname()[:64]}
        doc["pid"] = os.getpid()
        return json.dumps(doc, sort_keys=True).encode()

    async def write(self) -> None:
        started = time.monotonic()
        await self.target.put(self.name, self._body())
        self._refreshed = started

    def check(self) -> None:
        """LockLost unless the lock was refreshed within `stale / 2` seconds."""
        if time.monotonic() - self._refreshed > self.stale / 2:
            raise LockLost(
                f"the repository lock {self.name} could not be refreshed for"
                f" {self.stale / 2:.0f} s: stopping so as not to overlap another process"
            )

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.stale / 4)
            with contextlib.suppress(TargetError):
                await self.write()

    def start_refreshing(self) -> None:
        self._task = asyncio.create_task(self._refresh_loop())

    async def release(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        with contextlib.suppress(TargetError):
            await self.target.delete(self.name)


async def _others(
    target: Target, own: str, now: float, stale: float, seen: dict[str, float]
) -> list[tuple[str, str, float]]:
    """(name, kind, time) of the other lock objects. One that is unreadable, or whose time
    lies in the future (a skewed clock), ages from when this taker first saw it."""
    out = []
    async for info in target.list(PREFIX):
        if info.name == own or not _NAME.fullmatch(info.name):
            continue
        kind = info.name.removeprefix(PREFIX).split("-", 1)[0]
        try:
            when = float(json.loads(await target.get(info.name))["time"])
        except TargetMissing:
            continue  # released meanwhile
        except (ValueError, KeyError, TypeError):
            when = float("nan")
        if not when <= now + stale / 4:  # damaged, or from the future
            when = now - (time.monotonic() - seen.setdefault(info.name, time.monotonic()))
        out.append((info.name, kind, when))
    return out


@contextlib.asynccontextmanager
async def hold(
    target: Target,
    kind: str,
    *,
    stale: float,
    wait: float,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[HeldLock]:
    """Hold a `backup` (shared) or `prune` (exclusive) lock on `target` for the block."""
    if kind not in ("backup", "prune"):
        raise ValueError(f"a repository lock is 'backup' or 'prune', not {kind!r}")
    deadline = time.monotonic() + wait
    delay = 0.05
    lock = HeldLock(target, kind, stale, clock)
    seen: dict[str, float] = {}
    while True:
        await lock.write()
        now = clock()
        try:
            others = await _others(target, lock.name, now, stale, seen)
        except BaseException:
            await lock.release()
            raise
        live = [(n, k, t) for n, k, t in others if now - t <= stale]
        conflict = [o for o in live if kind == "prune" or o[1] == "prune"]
        if not conflict:
            break
        await lock.release()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            name, other, when = conflict[0]
            since = f" (refreshed {max(now - when, 0):.0f} s ago)"
            what = "a prune" if other == "prune" else "a backup"
            raise RepositoryLocked(
                f"{what} holds the backup repository{since}: lock object {name}; it is"
                f" considered stale {stale:.0f} s after its last refresh"
            )
        await asyncio.sleep(min(delay * (0.5 + random.random()), remaining))
        delay = min(delay * 2, 2.0)
    if kind == "prune":  # stale locks of dead processes go with the next exclusive taker
        for name, _k, t in others:
            if now - t > stale:
                with contextlib.suppress(TargetError):
                    await target.delete(name)
    lock.start_refreshing()
    try:
        yield lock
    finally:
        await lock.release()
