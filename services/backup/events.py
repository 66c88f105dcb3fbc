"""The events of the backup service.

Stream `backup-settings` holds the settings (target with its S3 secret sealed for subject
`backup-settings`, the public keys, schedule, retention); the last event of each kind wins.
Stream `backup-<run_id>` holds one run: `BackupStarted`, a `BackupCompleted` per stored
snapshot or a `BackupFailed`; `BackupPruned` goes to `backup-prune`. No event holds a secret
in clear, nor a private key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from libs.events.registry import REGISTRY

__all__ = [
    "BACKUP_CATEGORY",
    "PRUNE_STREAM",
    "SETTINGS_STREAM",
    "BackupCompleted",
    "BackupFailed",
    "BackupKeySet",
    "BackupPruned",
    "BackupRetentionSet",
    "BackupScheduleSet",
    "BackupStarted",
    "BackupTargetSet",
    "run_stream",
]

BACKUP_CATEGORY = "backup"
SETTINGS_STREAM = "backup-settings"
PRUNE_STREAM = "backup-prune"


def run_stream(run_id: str) -> str:
    """`backup-<run id>`: one run of backups."""
    return f"{BACKUP_CATEGORY}-{run_id}"


def _short(value: str) -> str:
    return value[:8]


@REGISTRY.event("BackupTargetSet")
@dataclass(frozen=True, slots=True, kw_only=True)
class BackupTargetSet:
    target: dict[str, Any]  # {kind, ...public fields, secret_access_key sealed}

    def summary(self) -> str:
        return f"backup target set ({self.target.get('kind')})"


@REGISTRY.event("BackupKeySet")
@dataclass(frozen=True, slots=True, kw_only=True)
class BackupKeySet:
    recipients: list[str]  # age public keys; the private key is never recorded
    passphrase_copy: bool  # a passphrase-protected copy of the private key is on the target

    def summary(self) -> str:
        return f"backup key set ({len(self.recipients)} recipient(s))"


@REGISTRY.event("BackupScheduleSet")
@dataclass(frozen=True, slots=True, kw_only=True)
class BackupScheduleSet:
    enabled: bool
    time: str  # HH:MM, server time
    jitter_minutes: int

    def summary(self) -> str:
        return f"backup schedule: {'daily at ' + self.time if self.enabled else 'off'}"


@REGISTRY.event("BackupRetentionSet")
@dataclass(frozen=True, slots=True, kw_only=True)
class BackupRetentionSet:
    last: int
    daily: int
    weekly: int
    monthly: int

    def summary(self) -> str:
        return (
            f"backup retention: last {self.last}, daily {self.daily}, weekly {self.weekly},"
            f" monthly {self.monthly}"
        )


@REGISTRY.event("BackupStarted")
@dataclass(frozen=True, slots=True, kw_only=True)
class BackupStarted:
    run_id: str
    task_id: str
    scope: str  # "all" | "app" | "update"
    app_ids: list[str]

    def summary(self) -> str:
        return f"backup run {_short(self.run_id)} started ({self.scope})"


@REGISTRY.event("BackupCompleted")
@dataclass(frozen=True, slots=True, kw_only=True)
class BackupCompleted:
    run_id: str
    snapshot_id: str
    kind: str  # "app" | "platform"
    app_id: str | None
    size_bytes: int
    new_bytes: int
    duration_s: float

    def summary(self) -> str:
        what = f"app {_short(self.app_id)}" if self.app_id else self.kind
        return f"backup {self.snapshot_id} of {what} stored"


@REGISTRY.event("BackupFailed")
@dataclass(frozen=True, slots=True, kw_only=True)
class BackupFailed:
    run_id: str
    app_id: str | None
    reason: str  # for a person; never holds a secret

    def summary(self) -> str:
        what = f" of app {_short(self.app_id)}" if self.app_id else ""
        return f"backup run {_short(self.run_id)}{what} failed"


@REGISTRY.event("BackupPruned")
@dataclass(frozen=True, slots=True, kw_only=True)
class BackupPruned:
    snapshot_ids: list[str]
    packs_deleted: int
    bytes_freed: int

    def summary(self) -> str:
        return f"{len(self.snapshot_ids)} backup(s) forgotten, {self.bytes_freed} bytes freed"
