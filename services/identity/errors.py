"""The errors of identity: one tree rooted at `IdentityError`, each kind also its wire class.

Callers catch `IdentityError` (or one kind); the bus sends the wire class's code, so the
gateway's HTTP status is unchanged. Refusals that must not say why (sign-in, links) have one
fixed message each.
"""

from __future__ import annotations

from libs.contracts.errors import (
    BusError,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Unauthorized,
    Unavailable,
)

__all__ = [
    "CREDENTIALS_REFUSED",
    "INVITATION_REFUSED",
    "LOGIN_REFUSED",
    "RESET_REFUSED",
    "TICKET_REFUSED",
    "WRONG_CODE",
    "AddressLimited",
    "Changed",
    "CredentialsRefused",
    "EmailTaken",
    "GroupNameTaken",
    "IdentityConflict",
    "IdentityError",
    "IdentityForbidden",
    "IdentityInvalid",
    "IdentityNotFound",
    "IdentityUnauthorized",
    "InvitationRefused",
    "LdapOff",
    "LoginRefused",
    "NoSuchUser",
    "NotAdmin",
    "NotOwnAccount",
    "NotPlatform",
    "ResetRefused",
    "SetupDone",
    "SetupTokenRefused",
    "TicketRefused",
    "UsernameTaken",
    "WrongCode",
]

LOGIN_REFUSED = "wrong username or password"
CREDENTIALS_REFUSED = "unknown, expired or revoked credentials"
WRONG_CODE = "wrong code"
TICKET_REFUSED = "the sign-in ticket is unknown, used or expired: sign in again"
INVITATION_REFUSED = (
    "this invitation is not valid: it was used or revoked, has expired, or was sent to another "
    "email; ask an administrator for a new one"
)
RESET_REFUSED = "this reset link is not valid: it was used or has expired; ask for a new one"


class IdentityError(BusError):
    """Anything identity refuses."""


class IdentityInvalid(IdentityError, Invalid):
    """The input breaks one of identity's rules; `field` names it."""


class IdentityNotFound(IdentityError, NotFound):
    """The user, group, session, token, invitation or app account does not exist."""


class IdentityConflict(IdentityError, Conflict):
    """The request conflicts with the current state."""


class IdentityForbidden(IdentityError, Forbidden):
    """The caller may not do this."""


class IdentityUnauthorized(IdentityError, Unauthorized):
    """The credentials are not good."""


# -- who may act ------------------------------------------------------------------------------


class NotAdmin(IdentityForbidden):
    def __init__(self) -> None:
        super().__init__("only an administrator may do this")


class NotOwnAccount(IdentityForbidden):
    def __init__(self) -> None:
        super().__init__("only the account's own user may do this")


class NotPlatform(IdentityForbidden):
    def __init__(self) -> None:
        super().__init__("only the platform's own services may do this")


class AddressLimited(IdentityForbidden):
    """Too many failed sign-ins from one address (says nothing about any account)."""

    def __init__(self, wait: int, *, what: str = "failed sign-ins") -> None:
        super().__init__(f"too many {what} from your address; try again in {wait} seconds")
        self.wait = wait


# -- sign-in refusals (one message each: no oracle) --------------------------------------------


class LoginRefused(IdentityUnauthorized):
    def __init__(self) -> None:
        super().__init__(LOGIN_REFUSED)


class CredentialsRefused(IdentityUnauthorized):
    def __init__(self) -> None:
        super().__init__(CREDENTIALS_REFUSED)


class WrongCode(IdentityUnauthorized):
    def __init__(self) -> None:
        super().__init__(WRONG_CODE)


class TicketRefused(IdentityUnauthorized):
    def __init__(self) -> None:
        super().__init__(TICKET_REFUSED)


class InvitationRefused(IdentityInvalid):
    def __init__(self) -> None:
        super().__init__(INVITATION_REFUSED, field="token")


class ResetRefused(IdentityInvalid):
    def __init__(self) -> None:
        super().__init__(RESET_REFUSED, field="token")


# -- state ------------------------------------------------------------------------------------


class NoSuchUser(IdentityNotFound):
    def __init__(self, field: str = "user_id") -> None:
        super().__init__("no such user", field=field)


class UsernameTaken(IdentityConflict):
    def __init__(self) -> None:
        super().__init__("that username is taken", field="username")


class EmailTaken(IdentityConflict):
    def __init__(self) -> None:
        super().__init__("that email belongs to another account", field="email")


class GroupNameTaken(IdentityConflict):
    def __init__(self) -> None:
        super().__init__("a group with that name exists", field="name")


class SetupDone(IdentityConflict):
    def __init__(self) -> None:
        super().__init__("setup is already done: sign in as an administrator")


class SetupTokenRefused(IdentityForbidden):
    """The one-time setup token is missing or wrong (setup_token.py)."""

    def __init__(self) -> None:
        super().__init__(
            "the setup token is missing or wrong: open the setup link the server printed when "
            "it started (it is also in its log), or run `homeport setup` on the server",
            field="setup_token",
        )


class Changed(IdentityConflict):
    """A stream was appended to since it was read: decide again on the new state."""

    def __init__(self) -> None:
        super().__init__("the record changed meanwhile: reload it and try again")


class LdapOff(IdentityError, Unavailable):
    def __init__(self) -> None:
        super().__init__("the LDAP endpoint is off: set HP_LDAP_HOST for the identity service")
