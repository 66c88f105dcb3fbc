"""`make_provider` and `PROVIDER_FIELDS`: build a DNS provider from a stored config.

`PROVIDER_FIELDS` says which config fields each kind takes and which are secret, so callers
seal those before they store the config and never show them back.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from services.dns.errors import ProviderConfigError
from services.dns.providers.manual import ManualProvider
from services.dns.providers.protocol import DnsProvider
from services.dns.providers.reach import refusal
from services.dns.providers.wildcard import WildcardProvider

__all__ = [
    "PROVIDER_FIELDS",
    "PROVIDER_KINDS",
    "ProviderField",
    "make_provider",
    "secret_fields",
]


@dataclass(frozen=True)
class ProviderField:
    """One config field of a provider kind."""

    name: str
    required: bool
    secret: bool = False
    help: str = ""


_ZONE = ProviderField("zone", True, help="the domain, e.g. example.com")
_NAMESERVERS = ProviderField(
    "nameservers", False, help='authoritative servers to check, e.g. ["192.0.2.1:53"]'
)

PROVIDER_FIELDS: Mapping[str, tuple[ProviderField, ...]] = {
    "powerdns": (
        ProviderField("api_url", True, help="the PowerDNS API, e.g. http://127.0.0.1:8081"),
        ProviderField("api_key", True, secret=True, help="pdns.conf api-key"),
        _ZONE,
        ProviderField("server_id", False, help="usually localhost"),
        _NAMESERVERS,
    ),
    "route53": (
        ProviderField("access_key_id", True, help="an IAM access key id"),
        ProviderField("secret_access_key", True, secret=True, help="its secret"),
        ProviderField("hosted_zone_id", True, help="e.g. Z0123456789ABCDEFGHIJ"),
        _ZONE,
        ProviderField("region", False, help="default us-east-1"),
        ProviderField("endpoint_url", False, help="only for Route 53 compatible services"),
        _NAMESERVERS,
    ),
    "manual": (_ZONE, _NAMESERVERS),
    "wildcard": (_ZONE, _NAMESERVERS),
}

PROVIDER_KINDS = tuple(PROVIDER_FIELDS)


def secret_fields(kind: str) -> frozenset[str]:
    """The config fields of `kind` to seal (empty for an unknown kind)."""
    return frozenset(f.name for f in PROVIDER_FIELDS.get(kind, ()) if f.secret)


def _text(config: Mapping[str, Any], name: str) -> str | None:
    value = config.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ProviderConfigError(name, f"{name} must be a non-empty string")
    return value.strip()


def _url(config: Mapping[str, Any], name: str) -> str | None:
    value = _text(config, name)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProviderConfigError(name, f"{name} must be an http(s) URL, e.g. http://host:8081")
    return value


def _zone(config: Mapping[str, Any]) -> str:
    value = _text(config, "zone") or ""
    name = value.rstrip(".").lower()
    labels = name.split(".")
    if len(labels) < 2 or not all(
        0 < len(lb) <= 63 and lb.replace("-", "").isalnum() and not lb.startswith("-")
        for lb in labels
    ):
        raise ProviderConfigError("zone", f"zone {value!r} is not a domain name, e.g. example.com")
    return name


def _nameservers(config: Mapping[str, Any], allow_loopback: bool) -> list[tuple[str, int]] | None:
    raw = config.get("nameservers")
    if raw is None:
        return None
    if not isinstance(raw, list | tuple) or not raw:
        raise ProviderConfigError("nameservers", 'nameservers must be a list like ["192.0.2.1:53"]')
    out: list[tuple[str, int]] = []
    for item in raw:
        host: Any
        port: Any
        if isinstance(item, str):
            host, sep, port = item.rpartition(":") if item.count(":") == 1 else (item, "", 53)
            if not sep:
                host, port = item.strip("[]"), 53
            if item.startswith("[") and "]:" in item:
                host, port = item[1:].split("]:", 1)
        elif isinstance(item, list | tuple) and len(item) == 2:
            host, port = item
        else:
            raise ProviderConfigError("nameservers", f"nameservers: {item!r} is not host:port")
        try:
            ipaddress.ip_address(str(host))
            port_n = int(port)
        except ValueError as e:
            raise ProviderConfigError(
                "nameservers", f"nameservers: {item!r} must be an IP address with a port"
            ) from e
        if not 0 < port_n < 65536:
            raise ProviderConfigError(
                "nameservers", f"nameservers: port of {item!r} is out of range"
            )
        why = None if allow_loopback else refusal(str(host))
        if why is not None:
            raise ProviderConfigError(
                "nameservers",
                f"nameservers: {host} is {why}, not a nameserver to ask: check nameservers",
            )
        out.append((str(host), port_n))
    return out


def make_provider(
    kind: str, config: Mapping[str, Any], *, allow_loopback: bool = False
) -> DnsProvider:
    """Build the provider of `kind` from `config`; ProviderConfigError names the bad field.

    Its URLs and nameservers may not lead to this machine unless `allow_loopback` (reach.py).
    """
    if kind not in PROVIDER_FIELDS:
        raise ProviderConfigError(
            "kind", f"kind {kind!r} is not a DNS provider: use one of {', '.join(PROVIDER_KINDS)}"
        )
    fields = PROVIDER_FIELDS[kind]
    known = {f.name for f in fields}
    for key in config:
        if key not in known:
            raise ProviderConfigError(
                str(key), f"{key} is not a {kind} setting: use {', '.join(sorted(known))}"
            )
    for f in fields:
        if f.required and config.get(f.name) in (None, ""):
            raise ProviderConfigError(f.name, f"{f.name} is required for {kind} ({f.help})")
    zone = _zone(config)
    nameservers = _nameservers(config, allow_loopback)
    if kind == "powerdns":
        # imported here: it loads aiohttp (~11 MiB), which nothing else needs at rest
        from services.dns.providers.powerdns import PowerDnsProvider

        return PowerDnsProvider(
            api_url=_url(config, "api_url") or "",
            api_key=_text(config, "api_key") or "",
            zone=zone,
            server_id=_text(config, "server_id") or "localhost",
            nameservers=nameservers,
            allow_loopback=allow_loopback,
        )
    if kind == "route53":
        # imported here: aioboto3 costs ~14 MiB in every process that only imports the factory
        from services.dns.providers.route53 import Route53Provider

        return Route53Provider(
            access_key_id=_text(config, "access_key_id") or "",
            secret_access_key=_text(config, "secret_access_key") or "",
            hosted_zone_id=_text(config, "hosted_zone_id") or "",
            zone=zone,
            region=_text(config, "region") or "us-east-1",
            endpoint_url=_url(config, "endpoint_url"),
            nameservers=nameservers,
            allow_loopback=allow_loopback,
        )
    if kind == "manual":
        return ManualProvider(zone, nameservers)
    return WildcardProvider(zone, nameservers)
