"""The errors of the mail service, rooted at `MailError`: callers catch one type.

Each also inherits its wire class (`libs/contracts/errors.py`), so a handler raising it answers
with that code. The servers adapter raises `MailServersError` (and `MailConfigRefused` when a
server's own checker refuses a rendered configuration: the running one stays).
"""

from __future__ import annotations

from libs.contracts.errors import BusError, Conflict, Forbidden, Invalid, NotFound, Unavailable

__all__ = [
    "InvalidRequest",
    "MailConfigRefused",
    "MailConflict",
    "MailError",
    "MailForbidden",
    "MailNotFound",
    "MailServersError",
]


class MailError(BusError):
    """Anything the mail service refuses or fails to do."""


class InvalidRequest(MailError, Invalid):
    """Input the service cannot use; `field` names it."""


class MailNotFound(MailError, NotFound):
    """No such mail domain, address, list or app password."""


class MailForbidden(MailError, Forbidden):
    """Only an administrator may do this."""


class MailConflict(MailError, Conflict):
    """The change clashes with what exists (an address taken, a domain already on)."""


class MailServersError(MailError, Unavailable):
    """A mail server (Postfix, Dovecot, rspamd) could not be run, reloaded or stopped."""


class MailConfigRefused(MailServersError):
    """A rendered configuration failed its server's own check; the running one stays."""

    def __init__(self, server: str, output: str) -> None:
        self.server = server
        self.output = output
        super().__init__(
            f"{server} refused the new mail configuration, so the running one stays: {output}"
        )
