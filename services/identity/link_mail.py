"""Links by email: the token of an invitation or a password reset, handed to notify's `email`
command (libs/contracts/notify.py), which puts it in a link, renders the mail with the
platform's name and sends it through the mail service. The token travels in that request
only; identity keeps its hash, notify forgets it.

An invitation's mail is awaited: the administrator's answer says whether it went out and, if
not, why (the token is in that answer too, so the link can be handed over another way). A
requested reset's mail goes out in a task the service tracks, not awaited by the request, so
the anonymous caller's answer and its timing are the same whether or not the email has an
account; a failure is logged without the address.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Coroutine
from typing import Any

from libs.contracts.errors import BusError, DeadlineExceeded
from libs.events.bus import BusClient
from libs.service.runner import ServiceStopping

__all__ = ["EMAIL_TIMEOUT", "LinkMail", "Spawn"]

log = logging.getLogger(__name__)

# Seconds identity waits for notify (and notify for the mail service, and that for a relay);
# the gateway gives an invitation longer than this (services/gateway/api/handlers/groups.py).
EMAIL_TIMEOUT = 20.0

Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]


class LinkMail:
    """Mails of identity's links through notify; `bus` None: this identity sends no mail."""

    def __init__(
        self,
        bus: BusClient | None,
        *,
        spawn: Spawn | None = None,
        timeout: float = EMAIL_TIMEOUT,
    ) -> None:
        self.bus = bus
        self.spawn = spawn  # the service's tracked tasks (Service.spawn)
        self.timeout = timeout

    async def send(
        self, template: str, to: str, token: str, expires_at: str, *, name: str | None = None
    ) -> str | None:
        """Mail the link of `token` to `to`: None once notify has sent it, else why not (for
        an administrator to read; the address is not in it)."""
        if self.bus is None:
            return "this platform sends no mail from identity"
        payload = {
            "template": template,
            "to": to,
            "token": token,
            "expires_at": expires_at,
            "name": name,
        }
        try:
            await self.bus.command("notify", "email", payload, timeout=self.timeout)
        except DeadlineExceeded:
            return (
                f"the mail was not confirmed within {self.timeout:g} s (a slow relay?): it may"
                " still arrive"
            )
        except BusError as e:
            return _without(e.message, to)
        return None

    def send_later(
        self, template: str, to: str, token: str, expires_at: str, *, name: str | None = None
    ) -> None:
        """`send` in a task the service tracks, not awaited; a failure is logged."""
        if self.bus is None or self.spawn is None:
            log.info("a %s mail was not sent: this identity sends no mail", template)
            return
        work = self._logged(template, to, token, expires_at, name)
        try:
            self.spawn(work, f"identity.{template}_mail")
        except ServiceStopping:
            log.warning("a %s mail was not sent: the service is stopping", template)

    async def _logged(
        self, template: str, to: str, token: str, expires_at: str, name: str | None
    ) -> None:
        why = await self.send(template, to, token, expires_at, name=name)
        if why is None:
            log.info("a %s mail was sent", template)
        else:
            log.warning("a %s mail was not sent: %s", template, why)


def _without(message: str, address: str) -> str:
    """`message` with `address` (any case) taken out: errors from further down may name it."""
    return re.sub(re.escape(address), "the address", message, flags=re.IGNORECASE)
