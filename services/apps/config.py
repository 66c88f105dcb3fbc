"""Apps configuration, read once from HP_* environment variables."""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path

from libs.service.config import ServiceConfig, check

__all__ = ["BUNDLED_CATALOG", "NO_POOL", "AppsConfig"]

BUNDLED_CATALOG = Path(__file__).parent / "bundled"


def _positive(v: float) -> bool:
    return v > 0


def _not_negative(v: float) -> bool:
    return v >= 0


def _subnet(v: str) -> bool:
    try:
        net = ipaddress.ip_network(v)
    except ValueError:
        return False
    return net.version == 4 and net.prefixlen <= 29


NO_POOL = "none"  # HP_APP_SUBNETS=none: Docker picks app subnets, the edge uses published ports


def _pool(v: str) -> bool:
    return v == NO_POOL or (_subnet(v) and ipaddress.ip_network(v).prefixlen <= 24)


def _name(v: str) -> bool:
    return re.fullmatch(r"[a-z][a-z0-9-]{0,30}", v) is not None


def _domain(v: str) -> bool:
    label = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
    return len(v) <= 200 and re.fullmatch(rf"{label}(\.{label})*", v) is not None


def _time_zone(v: str) -> bool:
    if not v:
        return True  # /etc/localtime
    try:
        zoneinfo.ZoneInfo(v)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        return False
    return True


@dataclass(frozen=True)
class AppsConfig(ServiceConfig):
    """Where apps run (dockerd), where their catalog comes from and what they may reach."""

    docker_host: str = "unix:///var/run/docker.sock"
    # Empty: the bundled catalog, signed at start by a key made on this machine (catalog.py).
    # Otherwise a published index directory and the public keys (PEM files) trusted to sign it.
    catalog_index: str = ""
    catalog_trust: tuple[str, ...] = ()
    catalog_source: Path = BUNDLED_CATALOG
    # Snapshots, the Debian base image cache, the locally signed catalog (under data_dir).
    apps_dir: Path = Path(".homeport/apps")
    # The debootstrap tarball of the Debian base image (kept: the next machine build is fast).
    base_cache: Path = Path(".homeport/apps/base-cache")
    default_domain: str = field(
        default="localhost", metadata=check(_domain, "a lower-case domain name")
    )
    # The domain browsers resolve to this machine (the variable the gateway reads too): its
    # hosts get no DNS record and no certificate from certs (the edge makes them one).
    local_domain: str = field(
        default="localhost", metadata=check(_domain, "a lower-case domain name")
    )
    # The edge's HTTPS port (the variable the gateway reads too): apps' addresses name it
    # unless it is 443, as in the local stack.
    edge_https_port: int = 443
    # How long an install or configuration waits for the edge to serve the app's host before
    # its task ends saying the address will answer later (0: ask once, do not wait).
    edge_wait_seconds: float = field(default=60.0, metadata=check(_not_negative, "seconds >= 0"))
    # The network whose gateway address the addons (database, LDAP, mail relay) listen on.
    services_network: str = field(
        default="homeport-services", metadata=check(_name, "a Docker network name (a-z, 0-9, -)")
    )
    services_subnet: str = field(
        default="10.213.0.0/24", metadata=check(_subnet, "an IPv4 subnet of /29 or larger")
    )
    # The app networks' subnets (/28 each, given in turn: services/apps/subnets.py); the edge
    # reaches an app at its container's address there. "none": Docker's pools and the
    # published port, as before the pool.
    app_subnets: str = field(
        default="10.214.0.0/16",
        metadata=check(_pool, "an IPv4 range of /24 or larger (e.g. 10.214.0.0/16), or none"),
    )
    # Names of containers, networks and volumes start with this (tests give each run its own).
    name_prefix: str = field(
        default="hp", metadata=check(_name, "a short lower-case name (a-z, 0-9, -)")
    )
    # The addon Postgres (a server apart from the platform's): admin DSN and its pg_hba file.
    addon_pg_dsn: str = field(default="", repr=False)
    addon_pg_hba: Path = Path(".homeport/addon-pg/pg_hba.conf")
    addon_pg_port: int = 5432  # the port apps connect to on the services gateway address
    health_interval: float = field(default=10.0, metadata=check(_positive, "seconds > 0"))
    unhealthy_after: float = field(default=180.0, metadata=check(_positive, "seconds > 0"))
    # How long an install, update or restore waits for the app's first healthy answer.
    ready_timeout: float = field(default=300.0, metadata=check(_positive, "seconds > 0"))
    stats_interval: float = field(default=15.0, metadata=check(_positive, "seconds > 0"))
    platform_version: str = "0.1.0"
    # The zone of the automatic updates' nightly window (IANA name); empty: /etc/localtime.
    time_zone: str = field(
        default="", metadata=check(_time_zone, "an IANA time zone name such as Europe/Berlin")
    )
    # Automatic updates (autoupdate.py): how often the loop looks at the clock; the loop is off
    # only in tests that must not see apps updated by the wall clock.
    auto_update_interval: float = field(default=60.0, metadata=check(_positive, "seconds > 0"))
    auto_update_loop: bool = True
    # Platform updates (platform.py): the install's root (its /etc/homeport holds the release
    # URL and the pinned key), how often the release URL is checked (0: at start and when
    # asked), and Debian's reboot flag (its packages in <file>.pkgs).
    install_root: Path = Path("/")
    platform_check_interval: float = field(
        default=86400.0, metadata=check(_not_negative, "seconds >= 0")
    )
    reboot_required_file: Path = Path("/run/reboot-required")
    # Fault injection for the crash tests only: "<operation>:<step>" makes the worker stop
    # (sleep until killed) right after recording that step. Never set in production.
    apps_pause_after: str = ""
