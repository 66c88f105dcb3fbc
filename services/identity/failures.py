"""Failed sign-ins that identity does not check itself (`record_failure`): SSH, which the
firewall reads in sshd's log (services/firewall/sshd.py).

Only the platform's services may record one (actor "system"). Each is a `LoginFailed` with no
account (`user_id` None: the name a client tried is the attacker's text, and a real user's is
personal data, so it never enters an event) from the client's address, sealed to its week's key
and in `meta.ip` like every other failure (signin.py `record_failure`): the firewall bans from
it, and identity's per-address limit counts it as it counts the dashboard's and mail's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from libs.events.handlers import command
from services.identity import validators as check
from services.identity.signin import record_failure
from services.identity.store import IdentityStore, from_address

__all__ = ["Failures"]


class Failures:
    """The `record_failure` command."""

    def __init__(self, store: IdentityStore) -> None:
        self.store = store

    @command("record_failure")
    async def record_failure(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        self.store.require_platform()
        ip = check.address(payload["ip"])  # the reason: one of the contract's (checked)
        with from_address(ip):
            await record_failure(self.store, None, payload["reason"])
        return {}
