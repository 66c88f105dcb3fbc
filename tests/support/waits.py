"""Waiting for a condition, with a deadline that names what was awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["wait_until"]


async def wait_until(
    predicate: Callable[[], Awaitable[object]], deadline: float, what: str, step: float = 0.1
) -> None:
    """Poll an async predicate until true; fail naming `what` after `deadline` seconds."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if await predicate():
            return
        await asyncio.sleep(step)
    raise AssertionError(f"timed out after {deadline:.0f}s waiting for {what}")
