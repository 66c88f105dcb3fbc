"""Identity's checks of input beyond its shape (the shape is libs/contracts/identity.py, checked
by the bus before a handler runs): names in their canonical form, rules with messages of their
own, and the grammars sign-in and the LDAP endpoint look names up by.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from libs.contracts.identity import EMAIL_PATTERN, USERNAME_PATTERN
from services.identity.errors import IdentityInvalid
from services.identity.passwords import check_password

__all__ = [
    "EMAIL",
    "USERNAME",
    "address",
    "canonical_id",
    "email",
    "expiry",
    "group_ids",
    "new_password",
    "one_factor",
    "token_name",
    "user_ids",
]

USERNAME = re.compile(USERNAME_PATTERN)
EMAIL = re.compile(EMAIL_PATTERN)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_EXPIRY_HINT = "an ISO 8601 time with a zone in the future (e.g. 2030-01-01T00:00:00Z)"


def canonical_id(value: str) -> str:
    """A UUID the contract let through, in its canonical (lower-case) form."""
    return str(uuid.UUID(value))


def address(value: str, field: str = "ip") -> str:
    """A client's IPv4 or IPv6 address in its one canonical form (an IPv4-mapped IPv6 address
    as IPv4), so one client cannot pass for many under the per-address limit; no zone id."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        ip = None
    if ip is None or "%" in value:
        raise IdentityInvalid(
            f"{field} must be an IPv4 or IPv6 address (e.g. 192.0.2.1 or 2001:db8::1)", field=field
        )
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    return str(mapped or ip)


def email(value: str) -> str:
    return value.strip()


def display_name(payload: Mapping[str, Any]) -> str | None:
    """The display name sent, if any ("" and null give None)."""
    value: str | None = payload.get("display_name")
    return value or None


def new_password(password: str, *, username: str | None, email: str | None) -> None:
    """The password policy, for a field named new_password."""
    try:
        check_password(password, username=username, email=email)
    except IdentityInvalid as e:
        raise IdentityInvalid(str(e), field="new_password") from None


def one_factor(payload: Mapping[str, Any], code_name: str) -> tuple[str | None, str | None]:
    """(TOTP code, recovery code): at most one of them given."""
    code: str | None = payload.get(code_name)
    recovery: str | None = payload.get("recovery_code")
    if code is not None and recovery is not None:
        raise IdentityInvalid(
            f"send either {code_name} or recovery_code, not both", field="recovery_code"
        )
    return code, recovery


def token_name(value: str) -> str:
    """An API token's name: stripped, not empty, no control characters."""
    value = value.strip()
    if not value:
        raise IdentityInvalid("name must not be empty", field="name")
    if _CONTROL.search(value):
        raise IdentityInvalid("name must not contain control characters", field="name")
    return value


def expiry(
    payload: Mapping[str, Any], now: datetime, default: timedelta, longest: timedelta
) -> datetime:
    """When a new API token ends: `expires_in_days` from `now`, or `expires_at` (in the
    future), at most `longest` from `now`; `default` from `now` when neither is given. Every
    token ends: null is refused."""
    days, raw = payload.get("expires_in_days"), payload.get("expires_at")
    if days is not None and raw is not None:
        raise IdentityInvalid("give expires_in_days or expires_at, not both", field="expires_at")
    if days is not None:
        if not 1 <= days <= longest.days:
            raise IdentityInvalid(
                f"expires_in_days must be 1 to {longest.days}", field="expires_in_days"
            )
        return now + timedelta(days=days)
    if "expires_at" not in payload:
        return now + default
    if raw is None:
        raise IdentityInvalid(
            f"every token expires: give expires_at at most {longest.days} days ahead, or leave "
            "it out for the default",
            field="expires_at",
        )
    try:
        when = datetime.fromisoformat(str(raw).upper())  # 't' and 'z' are valid RFC 3339 too
        if when.tzinfo is None or when <= now:
            raise ValueError("no zone, or not in the future")
        when = when.astimezone(UTC)
    except (ValueError, OverflowError):  # OverflowError: near year 1 or 9999 in UTC
        raise IdentityInvalid(f"expires_at must be {_EXPIRY_HINT}", field="expires_at") from None
    if when > now + longest:
        raise IdentityInvalid(
            f"expires_at may be at most {longest.days} days ahead: a token lasts a year at most",
            field="expires_at",
        )
    return when


def group_ids(raw: Iterable[str]) -> list[str]:
    """Group ids the contract let through, canonical, each once, in order."""
    return list(dict.fromkeys(canonical_id(g) for g in raw))


def user_ids(raw: Iterable[str], field: str) -> list[str]:
    """User ids, canonical, each once; a string that is no UUID names `field` (the list)."""
    out: list[str] = []
    for item in raw:
        try:
            out.append(str(uuid.UUID(item)))
        except ValueError:
            raise IdentityInvalid(f"{field} must be user ids (UUIDs)", field=field) from None
    return list(dict.fromkeys(out))
