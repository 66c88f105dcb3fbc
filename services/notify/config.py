"""Notify configuration, read once from HP_* environment variables: the alert rules' numbers,
what is measured, and how mail names the platform and links to it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from libs.contracts.notify import MAIL_INTERVAL_SECONDS
from libs.events.relay import DEFAULT_PREFIX, DEFAULT_STREAM
from libs.service.config import ServiceConfig, check

__all__ = ["NotifyConfig"]


def _positive(v: float) -> bool:
    return v > 0


def _percent(v: float) -> bool:
    return 0 < v <= 100


def _paths(v: tuple[str, ...]) -> bool:
    return all(p.startswith("/") and "\x00" not in p and len(p) <= 4096 for p in v)


def _origin(v: str) -> bool:
    return v == "" or re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]{1,300}/?", v) is not None


def _name(v: str) -> bool:
    return 0 < len(v) <= 60 and re.search(r"[\x00-\x1f\x7f<>]", v) is None


@dataclass(frozen=True)
class NotifyConfig(ServiceConfig):
    events_stream: str = DEFAULT_STREAM
    events_prefix: str = DEFAULT_PREFIX
    # How often conditions are looked at (and measured). Alerts on events open within a round.
    notify_round_seconds: float = field(default=15.0, metadata=check(_positive, "seconds > 0"))
    # An app that died and is not back after this long is down (the issue: 5 minutes).
    notify_app_down_seconds: float = field(default=300.0, metadata=check(_positive, "seconds > 0"))
    # Restarting repeatedly: this many deaths within the window.
    notify_restart_count: int = field(default=3, metadata=check(_positive, "a whole number > 0"))
    notify_restart_window_seconds: float = field(
        default=900.0, metadata=check(_positive, "seconds > 0")
    )
    # Out of memory and restarting repeatedly clear after this long without another one.
    notify_quiet_seconds: float = field(default=900.0, metadata=check(_positive, "seconds > 0"))
    notify_cert_days: float = field(default=7.0, metadata=check(_positive, "days > 0"))
    notify_backup_hours: float = field(default=36.0, metadata=check(_positive, "hours > 0"))
    # Disk: the file systems of these paths (the data directory when empty), two levels.
    notify_disk_paths: tuple[str, ...] = field(
        default=(), metadata=check(_paths, "absolute paths, comma separated")
    )
    notify_disk_warning: float = field(default=90.0, metadata=check(_percent, "a percentage"))
    notify_disk_critical: float = field(default=95.0, metadata=check(_percent, "a percentage"))
    # Memory pressure: less than this share available, or the kernel's PSI "some avg60" above.
    notify_memory_available: float = field(default=5.0, metadata=check(_percent, "a percentage"))
    notify_memory_psi: float = field(default=40.0, metadata=check(_percent, "a percentage"))
    notify_proc: Path = Path("/proc")  # where meminfo and pressure/memory are read
    # Active bans are asked of the firewall this often (each new one is a notice).
    notify_bans_seconds: float = field(default=15.0, metadata=check(_positive, "seconds > 0"))
    # Updates are asked of the apps service this often.
    notify_updates_seconds: float = field(default=3600.0, metadata=check(_positive, "seconds > 0"))
    # Never more than one mail per condition within this long.
    notify_mail_interval_seconds: float = field(
        default=float(MAIL_INTERVAL_SECONDS), metadata=check(_positive, "seconds > 0")
    )
    # A notification found undelivered older than this (a long outage) is not mailed any more.
    notify_stale_seconds: float = field(default=86400.0, metadata=check(_positive, "seconds > 0"))
    notify_platform_name: str = field(
        default="Homeport", metadata=check(_name, "a name of 1-60 characters")
    )
    # The dashboard's origin for links in mail (https://my.example.org); empty: the first
    # domain's my.<domain> as the dns service lists it.
    notify_dashboard_url: str = field(
        default="", metadata=check(_origin, "an origin such as https://my.example.org")
    )
    notify_edge_https_port: int = 443

    def disk_paths(self) -> tuple[Path, ...]:
        return tuple(Path(p) for p in self.notify_disk_paths) or (self.data_dir,)
