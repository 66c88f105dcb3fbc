"""Who a credential is, remembered for at most a second and forgotten as soon as identity says
it changed, so most requests need no `whoami` round trip to identity.

- Keys are 256-bit BLAKE2b digests of the credential (kind and secret); the secret itself is never
  kept. Values are the Principals identity answered; a refusal is never cached.
- An entry lives `ttl` seconds (at most 1, counted from when whoami was asked), so a disabled
  user's sessions end within a second even if an announcement is lost (SECURITY.md "Accounts").
  At most `max_size` entries are kept; the least recently used go first.
- Identity announces on core NATS `hp.identity.changed` (services/identity/changes.py), after
  each commit and before it replies to the command, `{"user_id": ...}` for every user whose
  whoami answer changed (session ended, token revoked, user disabled or deleted, password,
  role, profile or second factor changed) or `{"all": true}`. `IdentityChanges` drops those.
- The gateway also drops, after every identity command it relays itself (routes.py
  `Call.command`), what that command may have changed (`after_command`): the announcement may
  be handled after the reply, and its own next request must not race it.
- A whoami answer under way while anything was dropped is not stored (it may predate the
  change): every drop bumps `generation`.
- One whoami at a time per credential: requests that miss while one is under way wait for its
  answer instead of asking again, unless something was dropped since it was asked (then they
  ask anew). An entry in use is asked again in the background once `REFRESH_AHEAD` of its
  lifetime is left, so a busy session is never stalled on its entry's end (every request
  that found it gone asked at once: 16 ms at p99 under load, once a second); a refresh
  answering "nobody" drops the entry. Every answer served was still asked less than `ttl` ago.
- Nothing is served from the cache until the announcements are subscribed, nor while NATS is
  disconnected; after a reconnect everything is dropped (announcements may have been missed).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from libs.events.context import Context
from libs.events.envelope import uuid7_str
from services.gateway.api.auth import Authenticator, Credentials, Principal, Via

__all__ = [
    "IDENTITY_CHANGED",
    "MAX_TTL",
    "CachingAuthenticator",
    "IdentityChanges",
    "PrincipalCache",
    "credential_key",
]

log = logging.getLogger("homeport.gateway.api")

IDENTITY_CHANGED = "hp.identity.changed"
MAX_TTL = 1.0  # seconds: SECURITY.md, a disabled user's sessions end within 1 s
REFRESH_AHEAD = 0.2  # of the ttl: an entry in use is asked again when this much is left
_SUBSCRIBE_TIMEOUT = 5  # seconds


# Identity commands whose effect on whoami answers is limited to the acting user and the
# payload's `user_id` (services/identity: accounts.py, mfa.py, groups.py, ldap_apps.py).
# Not here, so they clear everything: reset_password (its user is known only by the token),
# set_mfa_policy (every admin), and any verb added later until someone checks it.
TARGETED = frozenset(
    {
        "login", "login_totp", "logout", "setup", "create_user", "disable_user",
        "enable_user", "delete_user", "set_admin", "update_user", "update_profile",
        "change_password",
        "revoke_session", "create_token", "revoke_token", "totp_enrol", "totp_confirm",
        "totp_disable", "create_group", "rename_group", "delete_group", "add_group_member",
        "remove_group_member", "invite", "revoke_invitation", "accept_invitation",
        "request_password_reset", "create_password_reset", "ldap_register_app",
        "ldap_set_app_access", "ldap_remove_app",
    }
)  # fmt: skip


_SESSION_KEY = f"{Via.session.value}:".encode()
_TOKEN_KEY = f"{Via.token.value}:".encode()


def credential_key(credentials: Credentials) -> bytes:
    """The cache key of a credential: a 256-bit BLAKE2b digest of its kind and secret, never
    the secret (BLAKE2b: Python's own, twice as quick on a short secret as OpenSSL's SHA-256
    through hashlib; the kind by identity, as an enum's hash is a Python call)."""
    kind = _SESSION_KEY if credentials.via is Via.session else _TOKEN_KEY
    return hashlib.blake2b(kind + credentials.secret.encode(), digest_size=32).digest()


@dataclass(slots=True)
class _Entry:
    principal: Principal
    expires: float
    refresh_at: float  # from then on a use asks identity again (CachingAuthenticator.known)


class PrincipalCache:
    """Principals by credential digest: bounded, short-lived, dropped per user or all at once."""

    def __init__(
        self,
        ttl: float = MAX_TTL,
        max_size: int = 10_000,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= ttl <= MAX_TTL:
            raise ValueError(f"ttl must be 0 to {MAX_TTL} seconds, got {ttl!r}")
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size!r}")
        self.ttl = ttl
        self.max_size = max_size
        self.clock = clock
        self.generation = 0  # bumped by every drop
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._by_user: dict[str, set[bytes]] = {}
        self._feed: Callable[[], int | None] = lambda: None
        self._epoch: int | None = None
        self._listeners: set[Callable[[str | None], None]] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def attach(self, feed: Callable[[], int | None]) -> None:
        """Serve entries while `feed()` (the announcements' connection epoch) is not None."""
        self.clear()
        self._feed = feed
        self._epoch = feed()

    @property
    def usable(self) -> bool:
        """Whether entries are kept and served now (see `attach`); a reconnect since the last
        look drops everything first."""
        if self.ttl <= 0:
            return False
        epoch = self._feed()
        if epoch is None:
            return False
        if epoch != self._epoch:  # (re)connected: announcements may have been missed
            self.clear()
            self._epoch = epoch
        return True

    def get(self, key: bytes) -> Principal | None:
        """The live entry of `key`'s principal, if any."""
        entry = self.entry(key)
        return entry.principal if entry is not None else None

    def entry(self, key: bytes) -> _Entry | None:
        """The live entry of `key`, if any."""
        if not self.usable:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self.clock():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: bytes, principal: Principal, generation: int, asked_at: float) -> None:
        """Keep `principal`, asked of identity at `asked_at` (clock) when the generation was
        `generation`; ignored if anything was dropped since."""
        if not self.usable or generation != self.generation:
            return
        self._remove(key)
        refresh_at = asked_at + self.ttl * (1 - REFRESH_AHEAD)
        self._entries[key] = _Entry(principal, asked_at + self.ttl, refresh_at)
        self._by_user.setdefault(principal.user_id, set()).add(key)
        while len(self._entries) > self.max_size:
            self._remove(next(iter(self._entries)))

    def drop_user(self, user_id: str) -> None:
        """Forget every entry of `user_id` (identity announced a change)."""
        self._drop(user_id)

    def _drop(self, user_id: str) -> None:
        self.generation += 1
        for key in self._by_user.pop(user_id, ()):
            self._entries.pop(key, None)
        self._tell(user_id)

    def listen(self, fn: Callable[[str | None], None]) -> Callable[[], None]:
        """Call `fn(user_id)` whenever what is known of that user is dropped (`fn(None)`:
        everyone's); open streams re-check their caller then (handlers/tasks.py). Returns
        the function that stops it."""
        self._listeners.add(fn)
        return lambda: self._listeners.discard(fn)

    def _tell(self, user_id: str | None) -> None:
        for fn in tuple(self._listeners):
            fn(user_id)

    def after_command(self, verb: str, payload: Mapping[str, object], actor: str | None) -> None:
        """What to forget once this gateway relayed identity command `verb`, before it answers.

        The verbs of `TARGETED` change at most the whoami answer of the payload's `user_id`
        or, when the payload names none, the caller's (signing out), so only that user's
        entries are dropped and most requests after a command stay cache hits; any other
        verb, known or not, drops everything (fail closed).
        """
        if verb not in TARGETED:
            self.clear()
            return
        target = payload.get("user_id", actor)
        if isinstance(target, str):
            self._drop(target)

    def clear(self) -> None:
        """Forget everything."""
        self.generation += 1
        self._entries.clear()
        self._by_user.clear()
        self._tell(None)

    def forget(self, key: bytes) -> None:
        """Drop the entry of `key` (identity no longer knows its credential)."""
        self._remove(key)

    def _remove(self, key: bytes) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        keys = self._by_user.get(entry.principal.user_id)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_user[entry.principal.user_id]


@dataclass(slots=True)
class _Flight:
    """A whoami under way for one credential, asked when the cache's generation was this."""

    generation: int
    task: asyncio.Task[Principal | None]


class CachingAuthenticator:
    """An Authenticator that asks `inner` only when `cache` has no live answer, one question at
    a time per credential, and asks again ahead of an entry's end while it is in use."""

    def __init__(self, inner: Authenticator, cache: PrincipalCache) -> None:
        self.inner = inner
        self.cache = cache
        self._flights: dict[bytes, _Flight] = {}

    def known(self, credentials: Credentials) -> Principal | None:
        """The cache's live answer for `credentials`, if any (no call, no coroutine); one due
        for its refresh starts it in the background."""
        if credentials.malformed:
            return None
        key = credential_key(credentials)
        entry = self.cache.entry(key)
        if entry is None:
            return None
        if entry.refresh_at <= self.cache.clock() and key not in self._flights:
            ctx = Context(actor="anonymous", correlation_id=uuid7_str())
            self._ask(key, credentials, ctx)
        return entry.principal

    async def authenticate(self, credentials: Credentials, ctx: Context) -> Principal | None:
        if credentials.malformed:
            return None
        if not self.cache.usable:  # nothing kept: every request asks for itself
            return await self.inner.authenticate(credentials, ctx)
        key = credential_key(credentials)
        principal = self.cache.get(key)
        if principal is not None:
            return principal
        flight = self._flights.get(key)
        if flight is not None and flight.generation == self.cache.generation:
            task = flight.task  # asked since the last drop: its answer is as good as ours
        else:
            task = self._ask(key, credentials, ctx)
        # one waiter leaving (its client gone) does not end the question for the others
        return await asyncio.shield(task)

    def _ask(
        self, key: bytes, credentials: Credentials, ctx: Context
    ) -> asyncio.Task[Principal | None]:
        generation, asked_at = self.cache.generation, self.cache.clock()
        task = asyncio.get_running_loop().create_task(
            self._answer(key, credentials, ctx, generation, asked_at)
        )
        self._flights[key] = _Flight(generation, task)
        task.add_done_callback(lambda t: self._landed(key, t))
        return task

    async def _answer(
        self, key: bytes, credentials: Credentials, ctx: Context, generation: int, asked_at: float
    ) -> Principal | None:
        principal = await self.inner.authenticate(credentials, ctx)
        if principal is None:
            self.cache.forget(key)  # ended meanwhile (expired, idle, revoked unannounced)
        else:
            self.cache.put(key, principal, generation, asked_at)
        return principal

    def _landed(self, key: bytes, task: asyncio.Task[Principal | None]) -> None:
        flight = self._flights.get(key)
        if flight is not None and flight.task is task:
            del self._flights[key]
        if not task.cancelled() and task.exception() is not None:
            # its waiters got it; a refresh nobody waits for leaves the entry to its end
            log.debug("whoami for a cached credential failed: %r", task.exception())

    async def close(self) -> None:
        """Cancel the questions under way (the gateway stops)."""
        tasks = [f.task for f in self._flights.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class IdentityChanges:
    """Follows identity's announcements (`hp.identity.changed`) and drops what they name."""

    def __init__(self, cache: PrincipalCache, nc: NATS) -> None:
        self.cache = cache
        self._nc = nc
        self._sub: Subscription | None = None  # while following

    @contextlib.asynccontextmanager
    async def following(self) -> AsyncIterator[None]:
        """Subscribe (every gateway hears every announcement), then let the cache serve; on
        exit stop following, and the cache serves nothing from then on."""
        sub = await self._nc.subscribe(IDENTITY_CHANGED, cb=self._received)
        try:
            await self._nc.flush(timeout=_SUBSCRIBE_TIMEOUT)
            self._sub = sub
            self.cache.attach(self._epoch)
            yield
        finally:
            self._sub = None
            self.cache.clear()
            with contextlib.suppress(nats.errors.Error):  # the connection is gone already
                await sub.unsubscribe()

    def _epoch(self) -> int | None:
        if self._sub is None or not self._nc.is_connected:
            return None
        return int(self._nc.stats["reconnects"])

    async def _received(self, msg: Msg) -> None:
        try:
            body = json.loads(msg.data)
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("all") is True:
            self.cache.clear()
        elif isinstance(body, dict) and isinstance(body.get("user_id"), str):
            self.cache.drop_user(body["user_id"])
        else:
            log.warning("%s: a message this gateway cannot read; dropped them all", msg.subject)
            self.cache.clear()
