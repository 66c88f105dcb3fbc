"""Errors of the backup repository, each with a message fit for an admin."""

from __future__ import annotations

__all__ = [
    "BackupError",
    "IntegrityError",
    "KeyInvalid",
    "RepositoryError",
    "RestoreRefused",
    "SnapshotNotFound",
    "WrongIdentity",
]


class BackupError(Exception):
    """Root of the backup repository's errors."""


class RepositoryError(BackupError):
    """The repository is missing, of an unknown format, or its bookkeeping is unreadable."""


class KeyInvalid(BackupError):
    """A recipient or identity string is not an age X25519 key."""


class WrongIdentity(BackupError):
    """The identity given is not one of the recipients the backup was encrypted to."""


class SnapshotNotFound(BackupError):
    """No completed backup of that id."""


class IntegrityError(BackupError):
    """Stored data is damaged or was tampered with; `files` names what it hurts."""

    def __init__(self, message: str, files: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.files = files


class RestoreRefused(BackupError):
    """The snapshot holds an entry that would land outside the destination (or is malformed)."""
