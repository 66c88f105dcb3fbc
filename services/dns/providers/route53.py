"""Route 53 adapter over aioboto3 (ChangeResourceRecordSets, ListResourceRecordSets, GetChange).

The client is opened on first use and closed by `aclose`. `wait` first polls GetChange until
Route 53 reports the change INSYNC, then asks the hosted zone's own nameservers (its delegation
set), so a record is only reported live once the servers resolvers ask really serve it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import Any

import aioboto3
from aiobotocore.config import AioConfig
from botocore.exceptions import BotoCoreError, ClientError

from services.dns.errors import DnsProviderError, ProviderConfigError
from services.dns.propagation import resolve_hosts
from services.dns.providers.base import BaseProvider
from services.dns.providers.protocol import Progress, Record, canonical_name, format_record
from services.dns.providers.reach import GuardedResolver, check_url, refused_in
from services.dns.providers.zonefile import from_presentation, to_presentation

__all__ = ["Route53Provider"]

_CONFIG: dict[str, Any] = {
    "connect_timeout": 5,
    "read_timeout": 15,
    "retries": {"max_attempts": 3, "mode": "standard"},
}
_OCTAL = re.compile(r"\\(\d{3})")
_PERMISSIONS = (
    "route53:GetHostedZone, route53:ListResourceRecordSets, "
    "route53:ChangeResourceRecordSets and route53:GetChange"
)
_VERIFY_NAME = "_homeport-verify"


def _decode_name(name: str) -> str:
    """Route 53 writes `*` and other special characters as `\\052`-style octal escapes."""
    return canonical_name(_OCTAL.sub(lambda m: chr(int(m.group(1), 8)), name))


class Route53Provider(BaseProvider):
    """One hosted zone in Amazon Route 53."""

    kind = "route53"

    def __init__(
        self,
        access_key_id: str,
        secret_access_key: str,
        hosted_zone_id: str,
        zone: str,
        region: str = "us-east-1",
        endpoint_url: str | None = None,
        nameservers: Sequence[tuple[str, int]] | None = None,
        *,
        allow_loopback: bool = False,
    ) -> None:
        """`allow_loopback` lets endpoint_url lead to this machine (reach.py; tests, dev)."""
        super().__init__(zone, nameservers)
        if endpoint_url is not None:
            check_url("endpoint_url", endpoint_url, allow_loopback=allow_loopback)
        self._allow_loopback = allow_loopback
        self._access_key_id = access_key_id
        self._secret = secret_access_key
        self._zone_id = hosted_zone_id.strip().removeprefix("/hostedzone/")
        self._region = region
        self._endpoint_url = endpoint_url
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._changes: dict[tuple[str, str], str] = {}

    def __repr__(self) -> str:  # never the secret
        return f"Route53Provider(hosted_zone_id={self._zone_id!r}, zone={self.zone!r})"

    async def _route53(self) -> Any:
        if self._client is None:
            session = aioboto3.Session(
                aws_access_key_id=self._access_key_id,
                aws_secret_access_key=self._secret,
                region_name=self._region,
            )
            stack = AsyncExitStack()
            guard = {} if self._allow_loopback else {"resolver": GuardedResolver("endpoint_url")}
            config = AioConfig(connector_args=guard, **_CONFIG)
            self._client = await stack.enter_async_context(
                session.client("route53", endpoint_url=self._endpoint_url, config=config)
            )
            self._stack = stack
        return self._client

    async def _call(self, op: str, what: str, **kwargs: Any) -> Any:
        client = await self._route53()
        try:
            return await getattr(client, op)(**kwargs)
        except ClientError as e:
            raise self._translate(e, what) from e
        except (BotoCoreError, OSError) as e:
            refused = refused_in(e)
            if refused is not None:
                raise ProviderConfigError("endpoint_url", str(refused)) from None
            where = self._endpoint_url or "Route 53"
            raise DnsProviderError(
                f"cannot reach {where} for {what} ({e}): check the network, region and endpoint_url"
            ) from e

    def _translate(self, e: ClientError, what: str) -> DnsProviderError:
        err = e.response.get("Error") or {}
        if not err.get("Code"):  # some endpoints (moto) put auth errors in the query format
            err = (e.response.get("Errors") or {}).get("Error") or err
        code, msg = str(err.get("Code", "")), str(err.get("Message", "")).strip()
        if code in ("InvalidClientTokenId", "UnrecognizedClientException"):
            return DnsProviderError(
                f"Route 53 does not know the access key id {self._access_key_id} ({what}): "
                "check access_key_id"
            )
        if code in ("SignatureDoesNotMatch", "IncompleteSignature"):
            return DnsProviderError(
                f"Route 53 refused the secret of access key {self._access_key_id} ({what}): "
                "check secret_access_key"
            )
        if code in ("AccessDenied", "AccessDeniedException"):
            return DnsProviderError(
                f"access key {self._access_key_id} may not do {what} on hosted zone "
                f"{self._zone_id}: allow {_PERMISSIONS} on it"
            )
        if code == "NoSuchHostedZone":
            return DnsProviderError(
                f"hosted zone {self._zone_id} not found in Route 53 ({what}): check "
                "hosted_zone_id and that the key may list zones"
            )
        if code in ("Throttling", "PriorRequestNotComplete"):
            return DnsProviderError(
                f"Route 53 is throttling {what} on hosted zone {self._zone_id}: try again in "
                "a minute"
            )
        return DnsProviderError(
            f"Route 53 refused {what} on hosted zone {self._zone_id} ({code}: {msg}): check "
            "the record and the zone"
        )

    async def _verify(self) -> None:
        data = await self._call(
            "get_hosted_zone", f"reading hosted zone {self._zone_id}", Id=self._zone_id
        )
        name = _decode_name(str(data.get("HostedZone", {}).get("Name", "")))
        if name != self.zone:
            raise DnsProviderError(
                f"hosted zone {self._zone_id} is {name}, not {self.zone}: give the id of the "
                f"hosted zone of {self.zone}"
            )
        await self._records_at(self.zone)
        # Deleting a record that does not exist is refused only after the key's right to change
        # the zone was checked: an AccessDenied here means no write access, anything about the
        # missing record means the key may write.
        probe = f"{_VERIFY_NAME}.{self.zone}."
        try:
            await (await self._route53()).change_resource_record_sets(
                HostedZoneId=self._zone_id,
                ChangeBatch={
                    "Changes": [
                        {
                            "Action": "DELETE",
                            "ResourceRecordSet": {
                                "Name": probe,
                                "Type": "TXT",
                                "TTL": 60,
                                "ResourceRecords": [{"Value": '"homeport"'}],
                            },
                        }
                    ]
                },
            )
        except ClientError as e:
            code = str((e.response.get("Error") or {}).get("Code", ""))
            if code not in ("InvalidChangeBatch", "InvalidInput"):
                raise self._translate(e, f"changing hosted zone {self._zone_id}") from e
        except (BotoCoreError, OSError) as e:
            raise DnsProviderError(
                f"cannot reach Route 53 to check write access to {self.zone} ({e}): check the "
                "network and endpoint_url"
            ) from e

    async def _records_at(self, name: str) -> list[Record]:
        data = await self._call(
            "list_resource_record_sets",
            f"reading {name}",
            HostedZoneId=self._zone_id,
            StartRecordName=name + ".",
            MaxItems="50",
        )
        out: list[Record] = []
        for rrset in data.get("ResourceRecordSets", []):
            if _decode_name(rrset.get("Name", "")) != name:
                break
            type_ = str(rrset.get("Type", "")).upper()
            if "AliasTarget" in rrset:
                target = canonical_name(str(rrset["AliasTarget"].get("DNSName", "")))
                out.append(Record(name, type_, (f"alias to {target}",), 60))
                continue
            values = tuple(
                from_presentation(type_, r["Value"]) for r in rrset.get("ResourceRecords", [])
            )
            out.append(Record(name, type_, values, int(rrset.get("TTL", 300))))
        return out

    async def _change(self, action: str, record: Record, what: str) -> None:
        data = await self._call(
            "change_resource_record_sets",
            what,
            HostedZoneId=self._zone_id,
            ChangeBatch={
                "Comment": "Homeport",
                "Changes": [
                    {
                        "Action": action,
                        "ResourceRecordSet": {
                            "Name": record.name + ".",
                            "Type": record.type,
                            "TTL": record.ttl,
                            "ResourceRecords": [
                                {"Value": to_presentation(record.type, v)} for v in record.values
                            ],
                        },
                    }
                ],
            },
        )
        change_id = str(data.get("ChangeInfo", {}).get("Id", ""))
        if change_id:
            self._changes[(record.name, record.type)] = change_id

    async def _replace(self, record: Record) -> None:
        await self._change("UPSERT", record, f"writing {format_record(record)}")

    async def _remove(self, record: Record) -> None:
        if any(v.startswith("alias to ") for v in record.values):
            raise DnsProviderError(
                f"{record.name} {record.type} is a Route 53 alias: Homeport does not delete "
                "aliases, remove it in the Route 53 console"
            )
        try:
            await self._change("DELETE", record, f"deleting {record.name} {record.type}")
        except DnsProviderError as e:
            cause = e.__cause__
            if isinstance(cause, ClientError) and "not found" in str(cause).lower():
                return  # gone meanwhile: delete is idempotent
            raise

    async def _before_wait(
        self, record: Record, deadline: float, progress: Progress | None
    ) -> None:
        change_id = self._changes.get((record.name, record.type))
        if change_id is None:
            return
        end = time.monotonic() + deadline
        told = False
        while True:
            data = await self._call("get_change", f"checking change {change_id}", Id=change_id)
            status = str(data.get("ChangeInfo", {}).get("Status", ""))
            if status == "INSYNC":
                return
            if progress is not None and not told:
                told = True
                await progress(f"Route 53 is applying {format_record(record)} ({status})")
            left = end - time.monotonic()
            if left <= 0:
                raise DnsProviderError(
                    f"Route 53 still reports {format_record(record)} as {status} after "
                    f"{deadline:g}s: wait longer, or check the change in the Route 53 console"
                )
            await asyncio.sleep(min(2.0, left))

    async def _authoritative(self) -> Sequence[tuple[str, int]] | None:
        data = await self._call(
            "get_hosted_zone", f"reading hosted zone {self._zone_id}", Id=self._zone_id
        )
        hosts = [canonical_name(h) for h in data.get("DelegationSet", {}).get("NameServers", [])]
        if not hosts:
            return None  # a private zone: look the servers up
        return await resolve_hosts(hosts)

    async def aclose(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()
