"""`GuardedResolver`: aiohttp's resolver, refusing what `reach.refusal` refuses (see reach.py).

Apart from reach.py so that importing the URL checks does not import aiohttp.
"""

from __future__ import annotations

import socket

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from services.dns.providers.reach import RefusedAddress, _advice, refusal

__all__ = ["GuardedResolver"]


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing a name that resolves to any refused address."""

    def __init__(self, field: str) -> None:
        self._field = field
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for result in found:
            why = refusal(result["host"])
            if why is not None:
                raise RefusedAddress(
                    f"{self._field} must not point at this server itself ({host} resolves to"
                    f" {why}): {_advice(self._field)}"
                )
        return found

    async def close(self) -> None:
        await self._inner.close()
