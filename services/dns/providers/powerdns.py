"""PowerDNS adapter: the authoritative server's HTTP API (`/api/v1`), over aiohttp.

Writes are RRset PATCHes with changetype REPLACE or DELETE
(https://doc.powerdns.com/authoritative/http-api/zone.html).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import aiohttp

from services.dns.errors import DnsProviderError, ProviderConfigError
from services.dns.providers.base import BaseProvider
from services.dns.providers.protocol import Record, canonical_name, format_record
from services.dns.providers.reach import GuardedResolver, RefusedAddress, check_url
from services.dns.providers.zonefile import from_presentation, to_presentation

__all__ = ["PowerDnsProvider"]

_TIMEOUT = aiohttp.ClientTimeout(total=15)
_WRITABLE_KINDS = ("native", "master", "primary")


class PowerDnsProvider(BaseProvider):
    """One zone on a PowerDNS authoritative server."""

    kind = "powerdns"

    def __init__(
        self,
        api_url: str,
        api_key: str,
        zone: str,
        server_id: str = "localhost",
        nameservers: Sequence[tuple[str, int]] | None = None,
        *,
        allow_loopback: bool = False,
    ) -> None:
        """`allow_loopback` lets api_url lead to this machine (reach.py; tests and dev only)."""
        super().__init__(zone, nameservers)
        check_url("api_url", api_url, allow_loopback=allow_loopback)
        self._allow_loopback = allow_loopback
        self._api_url = api_url.rstrip("/")
        self._api_key = api_key
        self._server_id = server_id
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never the key
        return f"PowerDnsProvider(api_url={self._api_url!r}, zone={self.zone!r})"

    @property
    def _server_path(self) -> str:
        return f"/api/v1/servers/{quote(self._server_id, safe='')}"

    @property
    def _zone_path(self) -> str:
        return f"{self._server_path}/zones/{quote(self.zone + '.', safe='')}"

    async def _call(self, method: str, path: str, what: str, body: Any = None) -> tuple[int, Any]:
        if self._session is None:
            connector = None
            if not self._allow_loopback:
                connector = aiohttp.TCPConnector(resolver=GuardedResolver("api_url"))
            self._session = aiohttp.ClientSession(timeout=_TIMEOUT, connector=connector)
        try:
            async with self._session.request(
                method,
                self._api_url + path,
                json=body,
                headers={"X-API-Key": self._api_key, "Accept": "application/json"},
                allow_redirects=False,  # a redirect could lead where api_url may not
            ) as resp:
                text = await resp.text()
                status = resp.status
        except aiohttp.ClientConnectorError as e:
            if isinstance(e.os_error, RefusedAddress):
                raise ProviderConfigError("api_url", str(e.os_error)) from None
            raise self._unreachable(what, e) from e
        except (aiohttp.ClientError, TimeoutError) as e:
            raise self._unreachable(what, e) from e
        try:
            data = json.loads(text) if text else None
        except ValueError:
            data = text
        if status == 401:
            raise DnsProviderError(
                f"the PowerDNS API at {self._api_url} refused the API key for {what} (401): "
                "check api_key (pdns.conf `api-key`)"
            )
        return status, data

    def _unreachable(self, what: str, e: Exception) -> DnsProviderError:
        return DnsProviderError(
            f"cannot reach the PowerDNS API at {self._api_url} for {what} ({type(e).__name__}"
            f"{': ' + str(e) if str(e) else ''}): check api_url and that pdns runs with "
            "api=yes and webserver=yes"
        )

    def _fail(self, status: int, data: Any, what: str) -> DnsProviderError:
        reason = data.get("error") if isinstance(data, dict) else str(data or "").strip()
        if status == 404:
            return DnsProviderError(
                f"zone {self.zone} not found on PowerDNS server {self._server_id!r} at "
                f"{self._api_url} ({what}): create the zone there first, or check zone and "
                "server_id"
            )
        return DnsProviderError(
            f"PowerDNS refused {what} ({status}: {reason or 'no reason given'}): check the "
            "value, and the zone's settings on the PowerDNS server"
        )

    async def _verify(self) -> None:
        status, data = await self._call("GET", self._server_path, f"server {self._server_id}")
        if status == 404:
            raise DnsProviderError(
                f"PowerDNS at {self._api_url} has no server {self._server_id!r}: check server_id "
                "(usually localhost)"
            )
        if status != 200:
            raise self._fail(status, data, f"reading server {self._server_id}")
        status, data = await self._call("GET", self._zone_path + "?rrsets=false", self.zone)
        if status != 200:
            raise self._fail(status, data, f"reading zone {self.zone}")
        kind = str(data.get("kind", "")).lower() if isinstance(data, dict) else ""
        if kind not in _WRITABLE_KINDS:
            raise DnsProviderError(
                f"zone {self.zone} is a {kind or 'unknown'} zone on PowerDNS, so its records "
                "cannot be changed there: make it Native or Primary, or use the primary server"
            )
        # An empty change set goes through the same checks as a real one (read-only API, ...).
        status, data = await self._call(
            "PATCH", self._zone_path, f"changing zone {self.zone}", {"rrsets": []}
        )
        if status not in (200, 204):
            raise self._fail(status, data, f"a change to zone {self.zone}")

    async def _records_at(self, name: str) -> list[Record]:
        path = f"{self._zone_path}?rrset_name={quote(name + '.', safe='')}"
        status, data = await self._call("GET", path, f"reading {name}")
        if status != 200:
            raise self._fail(status, data, f"reading {name}")
        out = []
        for rrset in data.get("rrsets", []) if isinstance(data, dict) else []:
            if canonical_name(rrset.get("name", "")) != name:
                continue
            type_ = str(rrset.get("type", "")).upper()
            values = tuple(
                from_presentation(type_, r["content"])
                for r in rrset.get("records", [])
                if not r.get("disabled")
            )
            if values:
                out.append(Record(name, type_, values, int(rrset.get("ttl", 300))))
        return out

    async def _patch(self, rrset: dict[str, Any], what: str) -> None:
        status, data = await self._call("PATCH", self._zone_path, what, {"rrsets": [rrset]})
        if status not in (200, 204):
            raise self._fail(status, data, what)

    async def _replace(self, record: Record) -> None:
        await self._patch(
            {
                "name": record.name + ".",
                "type": record.type,
                "ttl": record.ttl,
                "changetype": "REPLACE",
                "records": [
                    {"content": to_presentation(record.type, v), "disabled": False}
                    for v in record.values
                ],
            },
            f"writing {format_record(record)}",
        )

    async def _remove(self, record: Record) -> None:
        await self._patch(
            {"name": record.name + ".", "type": record.type, "changetype": "DELETE"},
            f"deleting {record.name} {record.type}",
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
