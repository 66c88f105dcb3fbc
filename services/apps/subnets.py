"""The subnets of app networks: taken in turn from a pool of Homeport's, never one again soon.

The edge reaches an app at its container's own address (`<subnet>.2`), not through the port
Docker publishes on 127.0.0.1: that path goes through docker-proxy, a userland copy of every
byte, which cost the edge about a fifth of its requests a second (bench/edge.py). An address is
safe for the edge only while it cannot belong to another app. Docker's own pools hand a freed
subnet to the very next network, so an edge configuration one step behind (the gateway down
while an app is removed and another installed) would send the removed app's host name to the
new app. Subnets from this pool go in turn instead:

- Each is recorded (`SubnetTaken`, stream `apps-subnets`) before its network is made, so the
  turn survives restarts, restores and a replay.
- The next one is the one after the last taken, wrapping at the pool's end: a subnet comes
  back only after every other subnet of the pool has been given since (4,096 networks for the
  default /16 in /28s).
- A subnet that overlaps a Docker network or a route of the host (a VPN, the LAN) is passed
  over, and so is one Docker then refuses (another dockerd client took it meanwhile).

`HP_APP_SUBNETS=none` turns the pool off: Docker picks, and the edge uses the published port.
An app whose network was made before the pool (or outside it) keeps the published port too.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable
from pathlib import Path

from libs.events.errors import ConcurrencyError
from libs.events.store import PostgresEventStore
from services.apps import events as ev
from services.apps.container import ContainerRuntime, RuntimeFailure

__all__ = ["PREFIX", "SubnetPool", "app_address", "host_routes"]

PREFIX = 28  # 16 addresses: the network, its gateway (.1), the app (.2), Docker's own (.8-.15)
_ROUTES = Path("/proc/self/net/route")  # ProcSubset=pid hides /proc/net, not this


def app_address(subnet: str) -> str:
    """The address of an app's container in its network's `subnet` (the second host)."""
    return str(ipaddress.IPv4Network(subnet)[2])


def host_routes(path: Path = _ROUTES) -> list[ipaddress.IPv4Network]:
    """The IPv4 destinations the host routes somewhere other than its default route (read from
    the process's /proc/self/net/route; none when it cannot be read)."""
    try:
        lines = path.read_text().splitlines()[1:]
    except OSError:
        return []
    found = []
    for line in lines:
        cols = line.split()
        if len(cols) < 8:
            continue
        try:
            dest, mask = (ipaddress.IPv4Address(bytes.fromhex(c)[::-1]) for c in (cols[1], cols[7]))
            net = ipaddress.IPv4Network(f"{dest}/{mask}", strict=False)
        except ValueError:
            continue
        if net.prefixlen > 0:
            found.append(net)
    return found


class SubnetPool:
    """Hands out the /28 subnets of `pool` in turn (see the module's docstring)."""

    def __init__(
        self,
        store: PostgresEventStore,
        pool: str,
        runtime: ContainerRuntime,
        routes: Path = _ROUTES,
    ) -> None:
        self._store = store
        self._pool = ipaddress.IPv4Network(pool)
        if self._pool.prefixlen > PREFIX - 4:
            raise ValueError(f"app subnet pool {pool}: /{PREFIX - 4} or larger (16 subnets)")
        self._runtime = runtime
        self._routes = routes
        self._size = 2 ** (PREFIX - self._pool.prefixlen)
        self._lock = asyncio.Lock()
        self._last = -1  # the index of the last subnet taken
        self._version: int | None = None  # of the stream, once read

    def holds(self, subnet: str) -> bool:
        """Whether `subnet` is one of the pool's (its containers' addresses are the edge's)."""
        try:
            net = ipaddress.IPv4Network(subnet)
        except ValueError:
            return False
        return net.prefixlen == PREFIX and net.subnet_of(self._pool)

    def _subnet(self, index: int) -> ipaddress.IPv4Network:
        base = int(self._pool.network_address) + index * 2 ** (32 - PREFIX)
        return ipaddress.IPv4Network((base, PREFIX))

    def _index(self, subnet: str) -> int:
        net = ipaddress.IPv4Network(subnet)
        return (int(net.network_address) - int(self._pool.network_address)) >> (32 - PREFIX)

    async def _load(self) -> None:
        events = await self._store.read_stream(ev.SUBNETS_STREAM)
        self._version = events[-1].version if events else 0
        for e in reversed(events):
            if self.holds(str(e.data.get("subnet", ""))):  # one of a pool configured before
                self._last = self._index(e.data["subnet"])
                break

    async def take(self, network: str, refused: Iterable[str] = ()) -> str:
        """The next free subnet, recorded as `network`'s. `refused`: subnets Docker just refused
        (taken meanwhile), passed over like the ones in use."""
        async with self._lock:
            for _ in range(3):
                if self._version is None:
                    await self._load()
                busy = [
                    ipaddress.IPv4Network(s)
                    for s in (*await self._runtime.subnets_in_use(), *refused)
                ]
                busy += host_routes(self._routes)
                subnet = self._next_free(busy)
                taken = ev.SubnetTaken(network=network, subnet=str(subnet))
                try:
                    done = await self._store.append(
                        ev.SUBNETS_STREAM, [taken], expected_version=self._version
                    )
                except ConcurrencyError:  # another process of ours took one: read them again
                    self._version = None
                    continue
                self._last, self._version = self._index(str(subnet)), done.version
                return str(subnet)
        raise RuntimeFailure(f"no subnet could be recorded for network {network}: retry")

    def _next_free(self, busy: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
        for step in range(1, self._size + 1):
            subnet = self._subnet((self._last + step) % self._size)
            if not any(subnet.overlaps(b) for b in busy):
                return subnet
        raise RuntimeFailure(
            f"every subnet of the app pool {self._pool} overlaps a network or route of this "
            "server; set HP_APP_SUBNETS to a range no network here uses (e.g. 10.214.0.0/16)"
        )
