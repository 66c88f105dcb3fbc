"""The mail service's check of a user's platform password (`mail_login`), when a mail client
signs in over IMAP, SMTP or ManageSieve.

Only the platform's services may ask (actor "system"): the mail service, which passes the
client's address in the payload. The sign-in is recorded as coming from that address, so the
dashboard's per-address and per-account limits (signin.py `Limits`) count it, and every
refusal is a `LoginFailed` with the address sealed like the dashboard's (reason `mail_*`),
from which the firewall bans. The password is checked as for an LDAP bind (password_check.py).
A user with TOTP is refused with their platform password: a mail client cannot give a code,
so such a user signs in with an app password, which the mail service checks itself.

Every refusal but the per-address limit answers as a refused dashboard login (no oracle).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from libs.events.handlers import command
from services.identity import validators as check
from services.identity.clock import Clock, utcnow
from services.identity.config import IdentityConfig
from services.identity.errors import LoginRefused
from services.identity.password_check import PasswordCheck, Verdict
from services.identity.signin import Limits, record_failure
from services.identity.store import IdentityStore, from_address

__all__ = ["REASON_PREFIX", "MailSignIn"]

REASON_PREFIX = "mail_"


class MailSignIn(Limits):
    """The `mail_login` command and the limits it applies."""

    def __init__(
        self,
        store: IdentityStore,
        cfg: IdentityConfig,
        passwords: PasswordCheck,
        *,
        clock: Clock = utcnow,
    ) -> None:
        super().__init__(store, cfg, clock=clock)
        self.passwords = passwords

    async def _refuse(self, user_id: str | None, reason: str) -> LoginRefused:
        await record_failure(self.store, user_id, REASON_PREFIX + reason)
        return LoginRefused()

    async def _totp_enabled(self, user_id: str) -> bool:
        return bool(
            await self.pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM identity.totp WHERE user_id = $1 AND enabled)",
                user_id,
            )
        )

    @command("mail_login")
    async def mail_login(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        self.store.require_platform()
        raw_ip: str | None = payload.get("ip")
        ip = check.address(raw_ip) if raw_ip is not None else None
        password: str = payload["password"]
        with from_address(ip):
            await self._check_address(ip, reason=f"{REASON_PREFIX}limited")
            row = await self.store.user_by_name(payload["username"])
            if row is not None and await self._account_limited(row["user_id"], ip):
                await self.passwords.dummy(password)
                raise await self._refuse(str(row["user_id"]), "limited")
            verdict = await self.passwords.check(row, password)
            if row is None:
                raise await self._refuse(None, verdict)
            user_id = str(row["user_id"])
            if verdict is not Verdict.RIGHT:
                raise await self._refuse(user_id, verdict)
            if await self._totp_enabled(user_id):
                raise await self._refuse(user_id, "totp")
            return {"user_id": user_id, "username": self.store.plain(row["username"])}
