"""The settings of the backup service, folded from stream `backup-settings` (last one wins)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from libs.events.sealing import Keyring, SealingError
from libs.events.store import PostgresEventStore
from services.backup.errors import BackupUnavailable
from services.backup.events import SETTINGS_STREAM
from services.backup.service.retention import DEFAULT_RETENTION, Retention
from services.backup.service.schedule import DEFAULT_SCHEDULE, Schedule
from services.backup.targets.base import Target
from services.backup.targets.factory import target_from_settings

__all__ = ["SECRET", "Settings", "load_settings", "make_target", "public_target"]

SECRET = "secret_access_key"  # noqa: S105 - a field name
# Contract field names -> target_from_settings' names (and back, for errors naming a field).
_TO_FACTORY = {"access_key_id": "access_key", "secret_access_key": "secret_key"}
TO_CONTRACT = {v: k for k, v in _TO_FACTORY.items()}
DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True, slots=True)
class Settings:
    version: int = 0
    target: dict[str, Any] | None = None  # as recorded: the secret sealed
    recipients: tuple[str, ...] = ()
    passphrase_copy: bool = False
    schedule: Schedule = DEFAULT_SCHEDULE
    retention: Retention = DEFAULT_RETENTION
    # when the daily backup was last set up (ready and the schedule on; Unix time), 0: it is not
    scheduled_since: float = 0.0

    @property
    def ready(self) -> bool:
        """A target and a key: backups can be stored off the disk."""
        return self.target is not None and bool(self.recipients)


async def load_settings(store: PostgresEventStore) -> Settings:
    events = await store.read_stream(SETTINGS_STREAM)
    target: dict[str, Any] | None = None
    recipients: tuple[str, ...] = ()
    copy = False
    schedule, retention = DEFAULT_SCHEDULE, DEFAULT_RETENTION
    since = 0.0
    for e in events:
        d = e.data
        if e.type == "BackupTargetSet":
            target = dict(d["target"])
        elif e.type == "BackupKeySet":
            recipients, copy = tuple(d["recipients"]), bool(d["passphrase_copy"])
        elif e.type == "BackupScheduleSet":
            schedule = Schedule(bool(d["enabled"]), str(d["time"]), int(d["jitter_minutes"]))
        elif e.type == "BackupRetentionSet":
            retention = Retention(
                int(d["last"]), int(d["daily"]), int(d["weekly"]), int(d["monthly"])
            )
        scheduled = target is not None and bool(recipients) and schedule.enabled
        if not scheduled:
            since = 0.0
        elif not since:
            since = e.recorded_at.timestamp()
    version = events[-1].version if events else 0
    return Settings(version, target, recipients, copy, schedule, retention, since)


def factory_settings(contract_target: dict[str, Any]) -> dict[str, Any]:
    """Contract fields (`access_key_id`...) as `target_from_settings` names them."""
    out = {_TO_FACTORY.get(k, k): v for k, v in contract_target.items() if v is not None}
    if out.get("kind") == "s3":
        out.setdefault("region", DEFAULT_REGION)
        if not out.get("prefix"):
            out.pop("prefix", None)
        if not out.get("endpoint_url"):
            out.pop("endpoint_url", None)
    return out


async def make_target(recorded: dict[str, Any], keys: Keyring, *, allow_loopback: bool) -> Target:
    """The Target of recorded settings (the secret unsealed in memory for the client)."""
    plain = dict(recorded)
    if SECRET in plain:
        try:
            plain[SECRET] = await asyncio.to_thread(keys.unseal_str, plain[SECRET])
        except SealingError as e:
            raise BackupUnavailable(
                f"cannot unseal the backup target's secret ({type(e).__name__}): check that"
                " HP_KEYRING is the keyring it was sealed with"
            ) from None
    return target_from_settings(factory_settings(plain), allow_loopback=allow_loopback)


def public_target(recorded: dict[str, Any] | None) -> dict[str, Any] | None:
    """The target as `settings` shows it: never the secret, only that it is set."""
    if recorded is None:
        return None
    out = {k: v for k, v in recorded.items() if k != SECRET}
    if recorded.get("kind") == "s3":
        out["secret_set"] = bool(recorded.get(SECRET))
    return out
