"""The calls the backup service makes to the mail service: a snapshot of the mail store for a
full backup, then forgetting it (services/mail/snapshots.py). The backup service reads the
snapshot from `<mail_dir>/snapshots/<id>/` itself (a server install's backup unit reads every
service's files: deploy/units.py). A refusal or no answer becomes `JobFailed`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from libs.contracts.errors import BusError
from libs.events.bus import BusClient
from libs.events.context import Context
from services.backup.errors import JobFailed

__all__ = ["MailPeer"]


class MailPeer:
    """The mail service as the backup service asks it."""

    def __init__(self, bus: BusClient, mail_dir: Path, *, timeout: float) -> None:
        self._bus = bus
        self.mail_dir = mail_dir
        self._timeout = timeout

    def folder(self, snapshot_id: str) -> Path:
        """Where the mail service writes the snapshot `snapshot_id`."""
        return self.mail_dir / "snapshots" / snapshot_id

    async def _cmd(self, verb: str, snapshot_id: str, why: str) -> dict[str, Any]:
        ctx = Context(actor="system", correlation_id=why, admin=True)
        try:
            answer: dict[str, Any] = await self._bus.command(
                "mail", verb, {"snapshot_id": snapshot_id}, ctx=ctx, timeout=self._timeout
            )
        except BusError as e:
            raise JobFailed(
                f"the mail service could not {verb.replace('_', ' ')} the mail store: {e.message}",
                "mail_" + e.code,
            ) from e
        return answer

    async def snapshot(self, snapshot_id: str, why: str) -> int:
        """Ask for a snapshot of the mail store; how many mailboxes it holds."""
        return int((await self._cmd("snapshot", snapshot_id, why)).get("mailboxes", 0))

    async def forget(self, snapshot_id: str, why: str) -> None:
        await self._cmd("forget_snapshot", snapshot_id, why)
