"""A user's platform password checked for another service's sign-in (an app's LDAP bind, a mail
client's IMAP/SMTP/ManageSieve login), the same way for each.

Argon2 runs in a thread, at most `max_hashing` at once for the whole service (each costs about
100 ms of CPU and 64 MiB: passwords.py); a name with no account costs the same work
(`verify_dummy`); the user's row is read again after the hash, so a user disabled (or deleted)
while their password was being checked is refused. What to record, and which limits come
first, is the caller's: the verdict's value is the reason a refusal is recorded with, after the
caller's prefix (`ldap_password`, `mail_disabled`, ...).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import StrEnum
from typing import TypeVar

import asyncpg

from services.identity.passwords import MAX_LENGTH
from services.identity.store import IdentityStore

__all__ = ["PasswordCheck", "Verdict"]

T = TypeVar("T")


class Verdict(StrEnum):
    """What a check found; a refusal's value is the reason it is recorded with."""

    RIGHT = "right"
    UNKNOWN = "unknown_user"
    WRONG = "password"
    DISABLED = "disabled"


class PasswordCheck:
    """Checks passwords of users' rows, under one bound on the hashes running at once."""

    def __init__(self, store: IdentityStore, *, max_hashing: int = 4) -> None:
        self.store = store
        self._hashing = asyncio.Semaphore(max_hashing)

    async def _hash(self, fn: Callable[..., T], *args: str) -> T:
        async with self._hashing:
            return await asyncio.to_thread(fn, *args)

    async def dummy(self, password: str) -> None:
        """The work of a check, spent where none is made (a name with no account, an account
        past its limit), so the answer takes as long."""
        await self._hash(self.store.hasher.verify_dummy, password[: MAX_LENGTH + 1])

    async def check(self, row: asyncpg.Record | None, password: str) -> Verdict:
        """`password` against the user `row` (None: no such user)."""
        password = password[: MAX_LENGTH + 1]  # a longer one cannot match; bound the work
        if row is None:
            await self._hash(self.store.hasher.verify_dummy, password)
            return Verdict.UNKNOWN
        stored = self.store.plain(row["password_hash"])
        assert stored is not None
        right = await self._hash(self.store.hasher.verify, stored, password)
        # read again: a disable that answered while the hash ran must refuse this sign-in
        disabled = await self.store.pool.fetchval(
            "SELECT disabled FROM identity.users WHERE user_id = $1", row["user_id"]
        )
        if not right:
            return Verdict.WRONG
        if disabled is not False:  # None: deleted meanwhile
            return Verdict.DISABLED
        return Verdict.RIGHT
