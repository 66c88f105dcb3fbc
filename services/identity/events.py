"""The events of identity: accounts, sessions and failed sign-ins.

Streams: `user-<uuid>` holds everything about one account, sessions included;
`identity-setup` holds the one `PlatformSetUp`; `signin-failures` holds every failed sign-in
(an attacker's guesses do not grow an account's own stream). Personal data (username, email,
display name) and the password hash are sealed with the user's own key (subject
`user:<id>`), so deleting the user's key leaves the log intact and unreadable; look-ups use
keyed blind indexes. Summaries name accounts by id, never by name: they are stored in clear.
"""

from __future__ import annotations

from dataclasses import dataclass

from libs.events.registry import REGISTRY

__all__ = [
    "SETUP_STREAM",
    "SIGNIN_FAILURES_STREAM",
    "AdminChanged",
    "LoginFailed",
    "PasswordChanged",
    "PlatformSetUp",
    "SessionEnded",
    "SessionStarted",
    "UserCreated",
    "UserDeleted",
    "UserDisabled",
    "UserEnabled",
    "UserUpdated",
    "subject_of",
    "user_stream",
]

SETUP_STREAM = "identity-setup"
SIGNIN_FAILURES_STREAM = "signin-failures"


def user_stream(user_id: str) -> str:
    return f"user-{user_id}"


def subject_of(user_id: str) -> str:
    """The keyring subject whose key seals this user's personal data."""
    return f"user:{user_id}"


def _short(user_id: str) -> str:
    return user_id[:8]


@REGISTRY.event("PlatformSetUp")
@dataclass(frozen=True, slots=True, kw_only=True)
class PlatformSetUp:
    admin_id: str

    def summary(self) -> str:
        return f"platform set up; first administrator {_short(self.admin_id)}"


@REGISTRY.event("UserCreated")
@dataclass(frozen=True, slots=True, kw_only=True)
class UserCreated:
    user_id: str
    username: str  # sealed
    username_index: str  # blind index of the folded username (the unique key of names)
    email: str  # sealed
    email_index: str  # blind index of the folded email
    display_name: str | None  # sealed
    password_hash: str  # sealed
    is_admin: bool
    via: str  # setup | admin | invitation

    def summary(self) -> str:
        role = "administrator" if self.is_admin else "user"
        return f"{role} account {_short(self.user_id)} created ({self.via})"


@REGISTRY.event("UserUpdated")
@dataclass(frozen=True, slots=True, kw_only=True)
class UserUpdated:
    user_id: str
    email: str | None = None  # sealed; None: unchanged
    email_index: str | None = None
    display_name: str | None = None  # sealed; None: unchanged
    clear_display_name: bool = False

    def summary(self) -> str:
        return f"profile of account {_short(self.user_id)} changed"


@REGISTRY.event("PasswordChanged")
@dataclass(frozen=True, slots=True, kw_only=True)
class PasswordChanged:
    user_id: str
    password_hash: str  # sealed
    kept_session_id: str | None = None  # the session that changed it stays; the others end
    rehash: bool = False  # the same password stored with stronger parameters

    def summary(self) -> str:
        if self.rehash:
            return f"password hash of account {_short(self.user_id)} upgraded"
        return (
            f"password of account {_short(self.user_id)} changed; other sessions and its API "
            "tokens ended"
        )


@REGISTRY.event("AdminChanged")
@dataclass(frozen=True, slots=True, kw_only=True)
class AdminChanged:
    user_id: str
    is_admin: bool

    def summary(self) -> str:
        what = "made an administrator" if self.is_admin else "no longer an administrator"
        return f"account {_short(self.user_id)} {what}"


@REGISTRY.event("UserDisabled")
@dataclass(frozen=True, slots=True, kw_only=True)
class UserDisabled:
    user_id: str

    def summary(self) -> str:
        return f"account {_short(self.user_id)} disabled; its sessions ended"


@REGISTRY.event("UserEnabled")
@dataclass(frozen=True, slots=True, kw_only=True)
class UserEnabled:
    user_id: str

    def summary(self) -> str:
        return f"account {_short(self.user_id)} enabled"


@REGISTRY.event("UserDeleted")
@dataclass(frozen=True, slots=True, kw_only=True)
class UserDeleted:
    user_id: str

    def summary(self) -> str:
        return f"account {_short(self.user_id)} deleted; its personal data shredded"


@REGISTRY.event("SessionStarted")
@dataclass(frozen=True, slots=True, kw_only=True)
class SessionStarted:
    user_id: str
    session_id: str  # public name (uuid)
    session_hash: str  # SHA-256 hex of the secret cookie value; the value itself is never stored
    expires_at: str  # ISO 8601, absolute end
    idle_seconds: int
    ip: str | None  # sealed to its week's key (addresses.py), like user_agent
    user_agent: str | None
    # where from, as a keyed hash of the address and browser family (sessions.py), sealed to
    # its week like the address: the read model's known places are rebuilt from it
    place: str | None = None
    # an administrator's sign-in, not their first, from a place not seen within the retention
    # period: notify tells that administrator (services/notify/projections.py)
    new_place: bool = False

    def summary(self) -> str:
        return f"account {_short(self.user_id)} signed in"


@REGISTRY.event("SessionEnded")
@dataclass(frozen=True, slots=True, kw_only=True)
class SessionEnded:
    user_id: str
    session_id: str
    reason: str  # logout | revoked

    def summary(self) -> str:
        how = "signed out" if self.reason == "logout" else "had a session revoked"
        return f"account {_short(self.user_id)} {how}"


@REGISTRY.event("LoginFailed")
@dataclass(frozen=True, slots=True, kw_only=True)
class LoginFailed:
    user_id: str | None  # None: no account has that name, or ssh_* (the name itself is not kept)
    ip: str | None  # sealed to its week's key (addresses.py); the activity log shows meta.ip
    # password | unknown_user | disabled | limited | current_password | ldap_* | mail_* | ssh_*
    reason: str

    def summary(self) -> str:
        if self.reason.startswith("ssh_"):  # the name an SSH client tried is not kept
            return f"failed SSH sign-in ({self.reason})"
        who = f"account {_short(self.user_id)}" if self.user_id else "an unknown name"
        return f"failed sign-in for {who} ({self.reason})"
