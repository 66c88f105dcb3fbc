"""The errors of the backup service, rooted at `BackupServiceError`: callers catch one type.

Each also inherits its wire class (`libs/contracts/errors.py`), so a handler raising it answers
with that code. Messages never hold a secret (an S3 secret, a private key).
"""

from __future__ import annotations

from libs.contracts.errors import BusError, Conflict, Forbidden, Invalid, NotFound, Unavailable

__all__ = [
    "BackupConflict",
    "BackupNotFound",
    "BackupServiceError",
    "BackupUnavailable",
    "InvalidRequest",
    "JobFailed",
    "NotAdmin",
]


class BackupServiceError(BusError):
    """Anything the backup service refuses or fails to do."""


class InvalidRequest(BackupServiceError, Invalid):
    """Input the service cannot use; `field` names it."""


class NotAdmin(BackupServiceError, Forbidden):
    """Backups are an administrator's business (the gateway vouches who is one)."""

    def __init__(self) -> None:
        super().__init__("only an administrator may see or change backups")


class BackupNotFound(BackupServiceError, NotFound):
    """No such backup (or app)."""


class BackupConflict(BackupServiceError, Conflict):
    """Not now or not here: the message says what to do instead."""


class BackupUnavailable(BackupServiceError, Unavailable):
    """The target or a service asked could not do it now."""


class JobFailed(Exception):
    """A step of a job failed; `code` is the task's failure code, the message is for a person."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
