"""Backup service configuration, read once from HP_* environment variables.

Nothing secret lives here: the target's credentials are settings (sealed in events) and the
private backup key is never kept by the server.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from libs.events.relay import DEFAULT_PREFIX, DEFAULT_STREAM
from libs.service.config import ServiceConfig, check

__all__ = ["BackupConfig", "platform_dirs"]


def _positive(v: float) -> bool:
    return v > 0


def _not_negative(v: float) -> bool:
    return v >= 0


def _retries(v: int) -> bool:
    return 0 <= v <= 10


@dataclass(frozen=True)
class BackupConfig(ServiceConfig):
    """Where the backup service works, and how patient it is with others."""

    # The files cache (one per repository and source) and temporary folders (platform dumps).
    backup_dir: Path = Path(".homeport/backup")
    # The apps service's folder: its snapshots are read from and restored to `<apps_dir>/snapshots`.
    apps_dir: Path = Path(".homeport/apps")
    # The certificates the platform backup holds.
    certs_dir: Path = Path(".homeport/certs")
    # The mail service's mail root: a full backup holds a snapshot of its mail store, which the
    # mail service writes into `<mail_dir>/snapshots` (None: no mail service to ask; the mail
    # is not backed up).
    mail_dir: Path | None = None
    # How long the mail service may take to answer for a snapshot (hard links: seconds even
    # for a large store).
    mail_timeout: float = field(default=600.0, metadata=check(_positive, "seconds > 0"))
    events_stream: str = DEFAULT_STREAM
    events_prefix: str = DEFAULT_PREFIX
    # How long an apps task (snapshot, restore, install) may take before the job gives up.
    apps_task_seconds: float = field(default=1800.0, metadata=check(_positive, "seconds > 0"))
    apps_timeout: float = field(default=30.0, metadata=check(_positive, "seconds > 0"))
    # A target that does not answer: this many more tries, waiting 1, 2, 4... s (capped).
    target_retries: int = field(default=3, metadata=check(_retries, "an integer 0-10"))
    target_backoff_seconds: float = field(default=2.0, metadata=check(_positive, "seconds > 0"))
    # Run the daily schedule (off in tests that drive one tick themselves).
    schedule_loop: bool = True
    # Signed checkpoints of the event chain into <backup_dir>/audit (libs/events/checkpoints.py):
    # at start and every this many seconds; 0 turns them off.
    checkpoint_seconds: float = field(
        default=3600.0, metadata=check(_not_negative, "seconds >= 0 (0: off)")
    )
    # Targets on this machine's loopback (tests run moto there); off in production.
    allow_loopback_targets: bool = False


def audit_dir(cfg: BackupConfig) -> Path:
    """Where the signed checkpoints of the event chain and their key are kept."""
    return cfg.backup_dir.absolute() / "audit"


def platform_dirs(cfg: BackupConfig) -> tuple[Path, ...]:
    """The platform's folders this service reads or writes: no backup target may lie inside
    them (a server install's whole data folder, /var/lib/homeport, is refused as a system
    folder by the target factory)."""
    return tuple(p.absolute() for p in (cfg.backup_dir, cfg.apps_dir, cfg.certs_dir))
