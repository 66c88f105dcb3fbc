"""The errors of the apps service: one tree rooted at `AppsError`, each with a message for people.

An error that answers a bus request also inherits its wire class (`NotFound`, `Invalid`,
`Conflict`), so the caller gets the right code; the others (catalog, addons, base image, a step
of an operation) are caught by the service and told through the operation's task.
"""

from __future__ import annotations

from libs.contracts.errors import BusError, Conflict, Forbidden, Invalid, NotFound, Unavailable

__all__ = [
    "AppConflict",
    "AppNotFound",
    "AppsError",
    "ChangedMeanwhile",
    "InvalidRequest",
    "LocationTaken",
    "NotAdmin",
    "OperationFailed",
    "PeerUnavailable",
    "PortTaken",
]


class AppsError(BusError):
    """Anything the apps service refuses or fails on purpose; the message says what to do."""


class AppNotFound(AppsError, NotFound):
    """No such app (or snapshot, or catalog entry); `field` names what was asked for."""


class InvalidRequest(AppsError, Invalid):
    """A request the contract lets through but the service's rules refuse; `field` names it."""


class AppConflict(AppsError, Conflict):
    """The app's state does not allow this now (busy, not installed, nothing to approve)."""


class LocationTaken(AppConflict):
    """Another app has the location on that domain."""

    def __init__(self, message: str = "that location is taken on this domain") -> None:
        super().__init__(message, field="location")


class PortTaken(AppConflict):
    """Another app has (or is taking) the host port; `field` names the request's port
    (`tcp_ports.<NAME>`) once the command knows which one it was."""

    def __init__(
        self, message: str = "a host port asked for is another app's", field: str | None = None
    ) -> None:
        super().__init__(message, field=field)


class ChangedMeanwhile(AppConflict):
    """The app's stream moved on between reading and writing it."""

    def __init__(
        self, message: str = "the app was changed at the same time; look again and retry"
    ) -> None:
        super().__init__(message)


class NotAdmin(AppsError, Forbidden):
    """Settings of the platform's apps are an administrator's (the gateway vouches who is one)."""

    def __init__(self, what: str = "change how apps are updated") -> None:
        super().__init__(f"only an administrator may {what}")


class PeerUnavailable(AppsError, Unavailable):
    """Another service the request needs an answer from (dns) does not give one now."""


class OperationFailed(AppsError):
    """A step of an operation failed: `reason` for programs (the task's code), message for
    people."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
