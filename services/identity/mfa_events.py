"""The events of the second factor (TOTP), the MFA policy and API tokens.

Streams: `mfa-<user_id>` holds one account's TOTP enrolment and each use of its second factor
(so a code is refused twice even after a rebuild); `token-<token_id>` holds one API token;
`identity-mfa-policy` holds the platform's policy. The TOTP secret and token names are sealed
with the user's own key (crypto-shredding). Tokens and recovery codes appear only as SHA-256
hashes. Summaries name accounts by id, never by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from libs.events.registry import REGISTRY

__all__ = [
    "POLICY_STREAM",
    "ApiTokenCreated",
    "ApiTokenRevoked",
    "MfaPolicySet",
    "SecondFactorUsed",
    "TotpDisabled",
    "TotpEnabled",
    "TotpEnrolmentStarted",
    "mfa_stream",
    "token_stream",
]

POLICY_STREAM = "identity-mfa-policy"


def mfa_stream(user_id: str) -> str:
    return f"mfa-{user_id}"


def token_stream(token_id: str) -> str:
    return f"token-{token_id}"


def _short(some_id: str) -> str:
    return some_id[:8]


@REGISTRY.event("TotpEnrolmentStarted")
@dataclass(frozen=True, slots=True, kw_only=True)
class TotpEnrolmentStarted:
    user_id: str
    secret: str  # sealed with the user's key

    def summary(self) -> str:
        return f"account {_short(self.user_id)} started enrolling a second factor (TOTP)"


@REGISTRY.event("TotpEnabled")
@dataclass(frozen=True, slots=True, kw_only=True)
class TotpEnabled:
    user_id: str
    step: int  # the time step of the confirming code: it is used up
    recovery_code_hashes: list[str] = field(default_factory=list)  # SHA-256 hex

    def summary(self) -> str:
        return f"account {_short(self.user_id)} turned on a second factor (TOTP)"


@REGISTRY.event("TotpDisabled")
@dataclass(frozen=True, slots=True, kw_only=True)
class TotpDisabled:
    user_id: str

    def summary(self) -> str:
        return f"account {_short(self.user_id)} turned off its second factor (TOTP)"


@REGISTRY.event("SecondFactorUsed")
@dataclass(frozen=True, slots=True, kw_only=True)
class SecondFactorUsed:
    user_id: str
    step: int | None = None  # a TOTP code of this time step was accepted
    recovery_code_hash: str | None = None  # this recovery code was used up

    def summary(self) -> str:
        how = "a recovery code" if self.recovery_code_hash else "a TOTP code"
        return f"account {_short(self.user_id)} passed the second factor with {how}"


@REGISTRY.event("MfaPolicySet")
@dataclass(frozen=True, slots=True, kw_only=True)
class MfaPolicySet:
    require_admin_totp: bool

    def summary(self) -> str:
        if self.require_admin_totp:
            return "administrators must now use a second factor (TOTP)"
        return "administrators no longer must use a second factor"


@REGISTRY.event("ApiTokenCreated")
@dataclass(frozen=True, slots=True, kw_only=True)
class ApiTokenCreated:
    token_id: str
    user_id: str
    token_hash: str  # SHA-256 hex; the token is shown once and never stored
    name: str  # sealed with the user's key
    scope: str  # read | full
    expires_at: str | None  # ISO 8601; None: never

    def summary(self) -> str:
        return (
            f"account {_short(self.user_id)} created {self.scope} API token {_short(self.token_id)}"
        )


@REGISTRY.event("ApiTokenRevoked")
@dataclass(frozen=True, slots=True, kw_only=True)
class ApiTokenRevoked:
    token_id: str
    user_id: str

    def summary(self) -> str:
        return f"API token {_short(self.token_id)} of account {_short(self.user_id)} revoked"
