"""The calls the backup service makes to the mail service: a snapshot of the mail store for a
full backup, then forgetting it (services/mail/snapshots.py). The backup service reads the
snapshot from `<mail_dir>/snapshots/<id>/` itself (a server install's backup unit reads every
service's files: deploy/units.py). A refusal or no answer becomes `JobFailed`."""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from libs.contracts.errors import BusError
from libs.contracts.mail import SNAPSHOTS_FOLDER
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
        return self.mail_dir / SNAPSHOTS_FOLDER / snapshot_id

    def _ctx(self, why: str) -> Context:
        return Context(actor="system", correlation_id=why, admin=True)

    async def _answer(self, what: str, call: Awaitable[Any]) -> dict[str, Any]:
        try:
            answer: dict[str, Any] = await call
        except BusError as e:
            raise JobFailed(
                f"the mail service could not {what} the mail store: {e.message}", "mail_" + e.code
            ) from e
        return answer

    async def snapshot(self, snapshot_id: str, why: str) -> int:
        """Ask for a snapshot of the mail store; how many mailboxes it holds."""
        call = self._bus.command(
            "mail", "snapshot", {"snapshot_id": snapshot_id}, ctx=self._ctx(why),
            timeout=self._timeout,
        )  # fmt: skip
        return int((await self._answer("snapshot", call)).get("mailboxes", 0))

    async def forget(self, snapshot_id: str, why: str) -> None:
        call = self._bus.command(
            "mail", "forget_snapshot", {"snapshot_id": snapshot_id}, ctx=self._ctx(why),
            timeout=self._timeout,
        )  # fmt: skip
        await self._answer("forget the snapshot of", call)
