"""DNS-01 through the dns service: the `TxtPublisher` port (`acme_client`) over the bus.

`publish` asks the dns service to add one value to the `_acme-challenge` TXT set and answers
once every authoritative server serves it; `remove` takes that value out again, leaving the
others. Bus failures become `AcmeError`s an order records: `timeout` when the dns service did
not answer in time, `dns` when it refused or failed.
"""

from __future__ import annotations

from libs.events.bus import BusClient, BusError, DeadlineExceeded
from services.certs.errors import AcmeError

__all__ = ["BusTxtPublisher"]

_PUBLISH_TIMEOUT = 150.0  # the dns service answers publish_txt once the record propagated
_REMOVE_TIMEOUT = 30.0


class BusTxtPublisher:
    """DNS-01 through the dns service: `publish_txt` and `remove_txt` over the bus."""

    def __init__(self, bus: BusClient, publish_timeout: float = _PUBLISH_TIMEOUT) -> None:
        self.bus = bus
        self.publish_timeout = publish_timeout

    async def publish(self, name: str, value: str) -> None:
        await self._send("publish_txt", name, value, self.publish_timeout)

    async def remove(self, name: str, value: str) -> None:
        await self._send("remove_txt", name, value, _REMOVE_TIMEOUT)

    async def _send(self, verb: str, name: str, value: str, timeout: float) -> None:  # noqa: ASYNC109
        try:
            await self.bus.command("dns", verb, {"name": name, "value": value}, timeout=timeout)
        except DeadlineExceeded as e:
            raise AcmeError(
                "timeout",
                f"the dns service did not answer {verb} for the TXT record {name} within "
                f"{timeout:.0f} s: check the domain's DNS provider",
            ) from e
        except BusError as e:
            raise AcmeError(
                "dns",
                f"the dns service could not {verb.replace('_txt', '')} the TXT record {name}: "
                f"{e.message}",
            ) from e
