"""Identity configuration, read once from HP_* environment variables."""

from __future__ import annotations

from dataclasses import dataclass, field

from libs.service.config import ServiceConfig, check
from services.identity.ldap.filters import DnError, parse_dn
from services.identity.passwords import (
    MAX_MEMORY_COST_KIB,
    MEMORY_COST_KIB,
    MIN_MEMORY_COST_KIB,
    memory_cost_ok,
)

__all__ = ["IdentityConfig"]


def _positive(v: int) -> bool:
    return v > 0


def _port(v: int) -> bool:
    return 0 <= v <= 65535


def _dn(v: str) -> bool:
    try:
        return bool(parse_dn(v))
    except DnError:
        return False


def _retention(v: int) -> bool:
    return 1 <= v <= 3650


_SECONDS = check(_positive, "a whole number of seconds > 0")
_COUNT = check(_positive, "a whole number > 0")


@dataclass(frozen=True)
class IdentityConfig(ServiceConfig):
    """Sessions, sign-in limits and the LDAP endpoint (SECURITY.md "Accounts", "Brute force")."""

    session_idle_seconds: int = field(default=30 * 60, metadata=_SECONDS)
    session_max_seconds: int = field(default=12 * 3600, metadata=_SECONDS)
    # Per address: this many failed sign-ins within the window refuse further tries from it.
    signin_ip_limit: int = field(default=20, metadata=_COUNT)
    signin_ip_window_seconds: int = field(default=600, metadata=_SECONDS)
    # Per account: past this many failures within an hour, passwords are checked only for
    # addresses the account has signed in from before (the real user is not locked out).
    signin_account_limit: int = field(default=100, metadata=_COUNT)
    # Anonymous password-reset requests within an hour: per client address, and per email
    # asked for (past it, a request changes nothing and answers the same).
    reset_ip_limit: int = field(default=10, metadata=_COUNT)
    reset_email_limit: int = field(default=3, metadata=_COUNT)
    # The read-only LDAP endpoint for apps: the addresses it listens on, comma separated (in
    # production the app networks' gateway addresses; "off" turns it off). Port 0 picks a free
    # one, for tests: production sets a fixed port, since apps keep the one they were given.
    ldap_host: tuple[str, ...] = ("127.0.0.1",)
    ldap_port: int = field(default=0, metadata=check(_port, "an integer 0-65535"))
    ldap_base_dn: str = field(
        default="dc=homeport,dc=local", metadata=check(_dn, "a DN such as dc=homeport,dc=local")
    )
    # Connections one client address (one app's container) may hold open at once.
    ldap_max_connections_per_address: int = field(default=32, metadata=_COUNT)
    # Client addresses and browser strings in events are sealed to their week's key, destroyed
    # this many days after the week began (libs/events/periods.py). The key file is identity's
    # (default <data dir>/ip-keys.json); its public keys are written beside it (.pub.json).
    ip_retention_days: int = field(
        default=30, metadata=check(_retention, "a whole number of days 1-3650")
    )
    # argon2id's memory per password hash, KiB: 64 MiB, about 0.15 s of CPU a verify. Never
    # below SECURITY.md's 19 MiB (19456); the test suite runs at that bar.
    password_memory_kib: int = field(
        default=MEMORY_COST_KIB,
        metadata=check(
            memory_cost_ok, f"a whole number of KiB {MIN_MEMORY_COST_KIB}-{MAX_MEMORY_COST_KIB}"
        ),
    )
