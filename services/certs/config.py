"""Certs configuration, read once from HP_* environment variables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from libs.service.config import ServiceConfig, check

__all__ = ["LETS_ENCRYPT", "CertsConfig"]

LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"


def _https_url(v: str) -> bool:
    parts = urlsplit(v)
    return parts.scheme == "https" and bool(parts.hostname)


def _positive(v: float) -> bool:
    return v > 0


def _days(v: int) -> bool:
    return 1 <= v <= 89


def _email(v: str) -> bool:
    local, at, domain = v.partition("@")
    return not v or (bool(local) and at == "@" and "." in domain and " " not in v)


@dataclass(frozen=True)
class CertsConfig(ServiceConfig):
    """Which ACME CA to use, where certificates and challenge tokens go, when to renew."""

    acme_directory: str = field(
        default=LETS_ENCRYPT, metadata=check(_https_url, "an https:// ACME directory URL")
    )
    acme_email: str = field(default="", metadata=check(_email, "an email address (or unset)"))
    # A PEM file of CAs trusted for the ACME server's own TLS (a private CA such as Pebble).
    acme_ca_bundle: str = ""
    # PEM files for nginx: <certs_dir>/<host>/fullchain.pem and privkey.pem.
    certs_dir: Path = Path(".homeport/certs")
    # HTTP-01 token files; nginx serves /.well-known/acme-challenge/ from here.
    acme_dir: Path = Path(".homeport/acme-challenge")
    renew_days: int = field(default=30, metadata=check(_days, "a number of days from 1 to 89"))
    check_hours: float = field(default=12.0, metadata=check(_positive, "hours > 0"))
    # Backoff after a failed order: from retry_min_s, doubling, up to retry_max_s.
    retry_min_s: float = field(default=60.0, metadata=check(_positive, "seconds > 0"))
    retry_max_s: float = field(default=21600.0, metadata=check(_positive, "seconds > 0"))
    # The deadline of one order, DNS propagation included.
    order_deadline_s: float = field(default=600.0, metadata=check(_positive, "seconds > 0"))
