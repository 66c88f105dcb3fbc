"""The events of groups, invitations and password-reset links.

Streams: `group-<uuid>` holds one group (name, members); `invitation-<uuid>` one invitation;
`reset-<uuid>` one password-reset request (an anonymous caller can make many, so they never
grow the user's own stream). Link tokens are stored only as SHA-256 hashes. The invited email
is sealed with the invitation's own key (subject `invitation:<id>`), destroyed once the
invitation is accepted, revoked or expired: the account then holds the email under the user's
key, and the log keeps no readable copy tied to the invitation. Group names are not personal
data and are stored in clear.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from libs.events.registry import REGISTRY

__all__ = [
    "GroupCreated",
    "GroupDeleted",
    "GroupMemberAdded",
    "GroupMemberRemoved",
    "GroupRenamed",
    "InvitationAccepted",
    "InvitationCreated",
    "InvitationRevoked",
    "PasswordResetRequested",
    "PasswordResetUsed",
    "group_stream",
    "invitation_stream",
    "invitation_subject",
    "reset_stream",
]


def group_stream(group_id: str) -> str:
    return f"group-{group_id}"


def invitation_stream(invitation_id: str) -> str:
    return f"invitation-{invitation_id}"


def reset_stream(reset_id: str) -> str:
    return f"reset-{reset_id}"


def invitation_subject(invitation_id: str) -> str:
    """The keyring subject whose key seals the invited email."""
    return f"invitation:{invitation_id}"


def _short(some_id: str) -> str:
    return some_id[:8]


@REGISTRY.event("GroupCreated")
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupCreated:
    group_id: str
    name: str

    def summary(self) -> str:
        return f"group {self.name} created"


@REGISTRY.event("GroupRenamed")
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupRenamed:
    group_id: str
    name: str
    old_name: str

    def summary(self) -> str:
        return f"group {self.old_name} renamed to {self.name}"


@REGISTRY.event("GroupDeleted")
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupDeleted:
    group_id: str
    name: str

    def summary(self) -> str:
        return f"group {self.name} deleted"


@REGISTRY.event("GroupMemberAdded")
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupMemberAdded:
    group_id: str
    user_id: str

    def summary(self) -> str:
        return f"account {_short(self.user_id)} added to group {_short(self.group_id)}"


@REGISTRY.event("GroupMemberRemoved")
@dataclass(frozen=True, slots=True, kw_only=True)
class GroupMemberRemoved:
    group_id: str
    user_id: str

    def summary(self) -> str:
        return f"account {_short(self.user_id)} removed from group {_short(self.group_id)}"


@REGISTRY.event("InvitationCreated")
@dataclass(frozen=True, slots=True, kw_only=True)
class InvitationCreated:
    invitation_id: str
    email: str  # sealed with the invitation's key
    email_index: str  # blind index of the folded email (the one that may accept)
    token_hash: str  # SHA-256 hex of the link token; the token itself is never stored
    expires_at: str  # ISO 8601
    is_admin: bool
    group_ids: list[str] = field(default_factory=list)

    def summary(self) -> str:
        role = "an administrator" if self.is_admin else "a user"
        return f"invitation {_short(self.invitation_id)} sent for {role}"


@REGISTRY.event("InvitationAccepted")
@dataclass(frozen=True, slots=True, kw_only=True)
class InvitationAccepted:
    invitation_id: str
    user_id: str

    def summary(self) -> str:
        return f"invitation {_short(self.invitation_id)} accepted: account {_short(self.user_id)}"


@REGISTRY.event("InvitationRevoked")
@dataclass(frozen=True, slots=True, kw_only=True)
class InvitationRevoked:
    invitation_id: str

    def summary(self) -> str:
        return f"invitation {_short(self.invitation_id)} revoked"


@REGISTRY.event("PasswordResetRequested")
@dataclass(frozen=True, slots=True, kw_only=True)
class PasswordResetRequested:
    reset_id: str
    user_id: str | None  # None: no enabled account has that email (nothing is usable)
    token_hash: str | None  # SHA-256 hex of the link token
    expires_at: str  # ISO 8601
    by_admin: bool  # an administrator created the link (and was shown it)

    def summary(self) -> str:
        if self.user_id is None:
            return "password reset asked for an email without an account"
        who = "by an administrator" if self.by_admin else "by request"
        return f"password reset link for account {_short(self.user_id)} created {who}"


@REGISTRY.event("PasswordResetUsed")
@dataclass(frozen=True, slots=True, kw_only=True)
class PasswordResetUsed:
    reset_id: str
    user_id: str

    def summary(self) -> str:
        return f"account {_short(self.user_id)} set a new password with a reset link"
