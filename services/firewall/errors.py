"""The firewall's errors: one tree rooted at `FirewallError`, each with a user-facing message.

Each request error also inherits its wire class (`libs/contracts/errors.py`), so a handler
raising it answers with that code; `NftError` is the adapter's (nft missing or refusing).
"""

from __future__ import annotations

from libs.contracts.errors import BusError, Conflict, Forbidden, Invalid, NotFound

__all__ = [
    "FirewallConflict",
    "FirewallError",
    "FirewallForbidden",
    "FirewallNotFound",
    "InvalidRequest",
    "NftError",
]


class FirewallError(BusError):
    """Something the firewall service could not do; the message says what and what to do."""


class NftError(FirewallError):
    """nft could not be run, or refused a command; the message is nft's own."""


class InvalidRequest(FirewallError, Invalid):
    """Input the service cannot use; `field` names it."""


class FirewallForbidden(FirewallError, Forbidden):
    """Only an administrator may do this (or, confirming a trial, only from the new rules)."""


class FirewallNotFound(FirewallError, NotFound):
    """No such app, or no such trial."""


class FirewallConflict(FirewallError, Conflict):
    """Someone changed the same thing at the same moment, or the trial is over."""
