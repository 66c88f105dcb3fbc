"""The gateway's principal cache (services/gateway/api/principals.py) with the real identity and
the real gateway: hits ask identity nothing, and every change that ends or alters a credential
takes effect on the next request, whether it came through this gateway or straight over the bus;
even with its announcements lost, a disabled user is refused within a second."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.aio.msg import Msg
from prometheus_client.parser import text_string_to_metric_families

from libs.events.bus import Unauthorized, Unavailable
from libs.events.context import Context
from libs.service.config import ConfigError, load_config
from services.gateway.api import API_STATE, ApiConfig, Credentials, Principal, Scope, Via
from services.gateway.api.principals import (
    IDENTITY_CHANGED,
    MAX_TTL,
    CachingAuthenticator,
    PrincipalCache,
    credential_key,
)
from tests.gateway.apikit import Answer, Client, api_app_of, running_gateway
from tests.identity.kit import Identity, running_identity
from tests.support.waits import wait_until

ADMIN = {"username": "root", "email": "root@example.test", "password": "correct horse battery"}
ALICE = {"username": "alice", "email": "alice@example.test", "password": "alice's long phrase"}
API = "/api/v1"
AT_ONCE = 0.3  # seconds: far below the cache's lifetime (1 s), so only an announcement explains it


# -- the cache on its own ----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def principal(user_id: str = "u-1", via: Via = Via.session) -> Principal:
    return Principal(user_id, user_id, False, Scope.full, via)


def live_cache(clock: Clock, **kw: Any) -> PrincipalCache:
    cache = PrincipalCache(clock=clock, **kw)
    cache.attach(lambda: 0)
    return cache


def test_entries_live_at_most_their_ttl_and_the_least_recently_used_go_first() -> None:
    clock = Clock()
    cache = live_cache(clock, ttl=1.0, max_size=2)
    a, b, c = (credential_key(Credentials(Via.session, s)) for s in ("a", "b", "c"))
    cache.put(a, principal("u-a"), cache.generation, clock())
    clock.now += 0.5
    cache.put(b, principal("u-b"), cache.generation, clock())
    assert cache.get(a) is not None  # a is now the most recently used
    cache.put(c, principal("u-c"), cache.generation, clock())
    assert cache.get(b) is None and len(cache) == 2  # b went
    clock.now += 0.5  # a was asked 1.0 s ago: gone
    assert cache.get(a) is None
    assert cache.get(c) is not None
    clock.now += 0.49
    assert cache.get(c) is not None
    clock.now += 0.01
    assert cache.get(c) is None and len(cache) == 0


def test_drops_per_user_and_all() -> None:
    clock = Clock()
    cache = live_cache(clock)
    keys = {
        (user, via): credential_key(Credentials(via, f"{user}-{via.value}"))
        for user in ("u-a", "u-b")
        for via in Via
    }
    for (user, via), key in keys.items():
        cache.put(key, principal(user, via), cache.generation, clock())
    cache.drop_user("u-a")
    assert [cache.get(k) is not None for k in keys.values()] == [False, False, True, True]
    cache.drop_user("u-nobody")
    cache.clear()
    assert len(cache) == 0


def test_after_a_relayed_command_only_what_it_may_change_is_dropped() -> None:
    clock = Clock()
    cache = live_cache(clock)
    keys = {u: credential_key(Credentials(Via.session, u)) for u in ("u-a", "u-b", "u-c")}

    def fill() -> None:
        for user, key in keys.items():
            cache.put(key, principal(user), cache.generation, clock())

    def held() -> list[str]:
        return [u for u, k in keys.items() if cache.get(k) is not None]

    fill()
    cache.after_command("disable_user", {"user_id": "u-b"}, "u-a")  # the target, not the admin
    assert held() == ["u-a", "u-c"]
    fill()
    cache.after_command("logout", {"session": "s"}, "u-c")  # no user in the payload: the caller
    assert held() == ["u-a", "u-b"]
    for verb in ("reset_password", "set_mfa_policy", "some_verb_added_later"):
        fill()
        cache.after_command(verb, {}, "u-a")  # not known to be limited: everything goes
        assert held() == [], verb


def test_a_lifetime_over_a_second_is_refused() -> None:
    assert MAX_TTL == 1.0
    with pytest.raises(ValueError, match="ttl"):
        PrincipalCache(ttl=1.5)
    with pytest.raises(ConfigError, match="HP_PRINCIPAL_CACHE_SECONDS"):
        load_config(ApiConfig, {"HP_PRINCIPAL_CACHE_SECONDS": "1.5"})
    assert load_config(ApiConfig, {}).principal_cache_seconds == 1.0
    assert load_config(ApiConfig, {"HP_PRINCIPAL_CACHE_SECONDS": "0"}).principal_cache_seconds == 0


@dataclass
class Inner:
    """An Authenticator that counts its calls and may wait before answering."""

    answer: Principal | None
    calls: int = 0
    gate: asyncio.Event | None = None
    error: Exception | None = None

    async def authenticate(self, credentials: Credentials, ctx: Context) -> Principal | None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.answer


def gated(
    clock: Clock | None = None, *, gate: bool = True
) -> tuple[Inner, PrincipalCache, CachingAuthenticator, Credentials]:
    """A caching authenticator whose identity answers (once its gate is set), and a credential."""
    inner = Inner(principal(), gate=asyncio.Event() if gate else None)
    cache = live_cache(clock or Clock())
    return inner, cache, CachingAuthenticator(inner, cache), Credentials(Via.session, "s")


async def test_refusals_are_not_cached_and_answers_are() -> None:
    ctx = Context()
    creds = Credentials(Via.token, "hp_secret")
    refusing = Inner(None)
    auth = CachingAuthenticator(refusing, live_cache(Clock()))
    assert await auth.authenticate(creds, ctx) is None
    assert await auth.authenticate(creds, ctx) is None
    assert refusing.calls == 2
    accepting = Inner(principal(via=Via.token))
    auth = CachingAuthenticator(accepting, live_cache(Clock()))
    assert await auth.authenticate(creds, ctx) == principal(via=Via.token)
    assert await auth.authenticate(creds, ctx) == principal(via=Via.token)
    assert accepting.calls == 1
    # malformed credentials never reach identity
    assert await auth.authenticate(Credentials(Via.token, malformed=True), ctx) is None
    assert accepting.calls == 1


async def test_an_answer_under_way_while_something_is_dropped_is_not_kept() -> None:
    inner, cache, auth, creds = gated()
    pending = asyncio.create_task(auth.authenticate(creds, Context()))
    await asyncio.sleep(0)
    cache.drop_user("u-other")  # an announcement arrives while whoami is under way
    inner.gate.set()  # type: ignore[union-attr]
    assert await pending == principal()  # this request is answered...
    assert len(cache) == 0  # ...but the answer, which may predate the change, is not kept
    assert await auth.authenticate(creds, Context()) == principal()
    assert len(cache) == 1 and inner.calls == 2


async def test_nothing_is_served_without_the_announcements_and_a_reconnect_drops_all() -> None:
    clock = Clock()
    cache = PrincipalCache(clock=clock)
    inner = Inner(principal())
    auth = CachingAuthenticator(inner, cache)
    creds = Credentials(Via.session, "s")
    await auth.authenticate(creds, Context())
    await auth.authenticate(creds, Context())
    assert inner.calls == 2 and len(cache) == 0  # not attached: not used
    epoch: list[int | None] = [0]
    cache.attach(lambda: epoch[0])
    await auth.authenticate(creds, Context())
    await auth.authenticate(creds, Context())
    assert inner.calls == 3
    epoch[0] = None  # NATS disconnected
    await auth.authenticate(creds, Context())
    assert inner.calls == 4
    epoch[0] = 1  # reconnected: what was kept before may have missed an announcement
    assert cache.get(credential_key(creds)) is None and len(cache) == 0


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the loop turn (the fake identity answers at once) until `condition` holds."""
    for _ in range(100):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never: {what}")


async def test_requests_that_miss_together_ask_once_and_one_leaving_ends_nothing() -> None:
    inner, cache, auth, creds = gated()
    waiting = [asyncio.create_task(auth.authenticate(creds, Context())) for _ in range(10)]
    await asyncio.sleep(0)
    waiting[0].cancel()  # its client went away
    await asyncio.sleep(0)
    inner.gate.set()  # type: ignore[union-attr]
    answers = await asyncio.gather(*waiting, return_exceptions=True)
    assert isinstance(answers[0], asyncio.CancelledError)
    assert answers[1:] == [principal()] * 9
    assert inner.calls == 1 and cache.get(credential_key(creds)) == principal()
    # a refusal is shared the same way, and not kept
    other = Credentials(Via.session, "t")
    inner.answer, inner.gate = None, asyncio.Event()
    waiting = [asyncio.create_task(auth.authenticate(other, Context())) for _ in range(3)]
    await asyncio.sleep(0)
    inner.gate.set()
    assert await asyncio.gather(*waiting) == [None] * 3
    assert inner.calls == 2 and cache.get(credential_key(other)) is None


async def test_a_miss_after_a_drop_asks_anew_rather_than_wait_for_an_older_question() -> None:
    inner, cache, auth, creds = gated()
    before = asyncio.create_task(auth.authenticate(creds, Context()))
    await asyncio.sleep(0)
    cache.drop_user("u-1")  # the user changed: the question under way may predate it
    after = asyncio.create_task(auth.authenticate(creds, Context()))
    await until(lambda: inner.calls == 2, "a second question")
    inner.gate.set()  # type: ignore[union-attr]
    assert await before == await after == principal()
    assert cache.get(credential_key(creds)) == principal()  # the later answer is kept


async def test_an_entry_in_use_is_asked_again_before_its_end_once() -> None:
    clock = Clock()
    inner, _, auth, creds = gated(clock, gate=False)
    assert await auth.authenticate(creds, Context()) == principal()
    clock.now += 0.79
    assert auth.known(creds) == principal()
    await until(lambda: not auth._flights, "nothing asked")
    assert inner.calls == 1  # not yet due
    inner.gate = asyncio.Event()
    clock.now += 0.01  # REFRESH_AHEAD of the lifetime left: due
    for _ in range(5):  # served meanwhile, asked once
        assert auth.known(creds) == principal()
        await asyncio.sleep(0)
    assert inner.calls == 2
    inner.gate.set()
    await until(lambda: not auth._flights, "the refresh answered")
    clock.now += 0.5  # past the first answer's end (1.0 s): the refreshed one serves
    assert auth.known(creds) == principal() and inner.calls == 2
    clock.now += 0.5  # 1.0 s after the refresh was asked: gone, whatever happened
    assert auth.known(creds) is None


async def test_a_refresh_under_way_when_the_user_changes_is_not_kept() -> None:
    """The user is disabled while the refresh asks: its answer may predate that, so it is not
    kept, and the next request asks anew."""
    clock = Clock()
    inner, cache, auth, creds = gated(clock, gate=False)
    await auth.authenticate(creds, Context())
    clock.now += 0.9
    inner.gate = asyncio.Event()
    assert auth.known(creds) == principal()  # due: the refresh asks
    await until(lambda: inner.calls == 2, "the refresh asked")
    cache.drop_user("u-1")  # identity announces the change meanwhile
    inner.gate.set()
    await until(lambda: not auth._flights, "the refresh answered")
    assert auth.known(creds) is None and len(cache) == 0


async def test_a_refresh_refused_drops_the_entry_and_one_failed_leaves_it_to_its_end() -> None:
    clock = Clock()
    inner, cache, auth, creds = gated(clock, gate=False)
    await auth.authenticate(creds, Context())
    clock.now += 0.9
    inner.answer = None  # the session ended without an announcement (idle, expired)
    assert auth.known(creds) == principal()
    await until(lambda: not auth._flights, "the refresh answered")
    assert auth.known(creds) is None and len(cache) == 0
    inner.answer = principal()
    await auth.authenticate(creds, Context())
    clock.now += 0.9
    inner.error = Unavailable("identity is away")
    assert auth.known(creds) == principal()
    await until(lambda: not auth._flights, "the refresh answered")
    assert auth.known(creds) == principal()  # kept to its end...
    clock.now += 0.1
    assert auth.known(creds) is None  # ...and no longer
    with pytest.raises(Unavailable):  # a request then gets the failure itself
        await auth.authenticate(creds, Context())


async def test_questions_under_way_end_with_the_authenticator() -> None:
    _, _, auth, creds = gated()
    waiting = asyncio.create_task(auth.authenticate(creds, Context()))
    await asyncio.sleep(0)
    await auth.close()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not auth._flights


def test_keys_are_digests_of_the_credential() -> None:
    secret = "hp_" + "x" * 43
    key = credential_key(Credentials(Via.token, secret))
    assert len(key) == 32 and secret.encode() not in key
    assert key != credential_key(Credentials(Via.session, secret))  # the kind is in the key


# -- with the real identity and gateway ----------------------------------------------------------


@dataclass
class Platform:
    identity: Identity
    client: Client
    cache: PrincipalCache
    http: aiohttp.ClientSession

    async def call(self, method: str, path: str, **kw: Any) -> Answer:
        return await self.client.call(method, API + path, **kw)

    async def login(self, who: dict[str, str]) -> str:
        body = {"username": who["username"], "password": who["password"]}
        a = await self.call("POST", "/session", body=body)
        assert a.status == 200, a.body
        return a.headers["Set-Cookie"].split(";", 1)[0].split("=", 1)[1]

    async def handled(self, name: str) -> int:
        """How many `hp.qry.identity.<name>` identity has served (its /metrics)."""
        url = f"http://127.0.0.1:{self.identity.svc.port}/metrics"
        async with self.http.get(url) as r:
            text = await r.text()
        for family in text_string_to_metric_families(text):
            if family.name == "homeport_handler_latency_seconds":
                for s in family.samples:
                    if s.name.endswith("_count") and s.labels["subject"] == (
                        f"hp.qry.identity.{name}"
                    ):
                        return int(s.value)
        return 0


@asynccontextmanager
async def platform(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> AsyncIterator[Platform]:
    async with (
        running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as ident,
        running_gateway(
            monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
        ) as gw,
        aiohttp.ClientSession() as http,
    ):
        cache = api_app_of(gw.svc.http_app)[API_STATE].principals
        assert cache is not None and cache.ttl == 1.0
        yield Platform(ident, gw.client, cache, http)


async def set_up(p: Platform) -> tuple[str, str, str]:
    """The admin (signed in) and alice; (admin id, admin cookie, alice id)."""
    a = await p.call("POST", "/setup", body=p.identity.setup_body(ADMIN))
    assert a.status == 201, a.body
    admin_id = a.body["user_id"]
    admin = await p.login(ADMIN)
    a = await p.call("POST", "/users", session=admin, body=ALICE)
    assert a.status == 201, a.body
    return admin_id, admin, a.body["user_id"]


async def refused_within(
    seconds: float, request: Callable[[], Awaitable[Answer]], status: int = 401
) -> float:
    """Seconds until `request` answers `status`; fails if that takes longer than `seconds`."""
    t0 = time.monotonic()
    while True:
        a = await request()
        waited = time.monotonic() - t0
        if a.status == status:
            return waited
        assert a.status == 200, a.body
        assert waited < seconds, f"still answered 200 after {waited:.2f} s"
        await asyncio.sleep(0.01)


async def test_a_cache_hit_asks_identity_nothing_and_keeps_no_credential(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> None:
    async with platform(monkeypatch, dsn, nats_url, uniq, tmp_path) as p:
        # the cache's clock stands still: on a slow machine no entry ends or is refreshed
        # between these requests, so every whoami counted is a miss
        monkeypatch.setattr(p.cache, "clock", lambda: 1000.0)
        _, _, alice_id = await set_up(p)
        session = await p.login(ALICE)
        whoami, profiles = await p.handled("whoami"), await p.handled("profile")
        a = await p.call("GET", "/profile", session=session)
        assert a.status == 200 and a.body["user_id"] == alice_id
        assert a.body == {
            "user_id": alice_id,
            "username": "alice",
            "email": ALICE["email"],
            "display_name": None,
            "is_admin": False,
            "disabled": False,
        }
        assert await p.handled("whoami") == whoami + 1
        for _ in range(5):
            assert (await p.call("GET", "/profile", session=session)).body == a.body
        assert await p.handled("whoami") == whoami + 1  # hits: no bus call
        assert await p.handled("profile") == profiles  # the profile came with whoami

        a = await p.call(
            "POST", "/profile/tokens", session=session, body={"name": "ci", "scope": "read"}
        )
        assert a.status == 201, a.body
        token = a.body["token"]
        whoami = await p.handled("whoami")
        for _ in range(3):
            assert (await p.call("GET", "/profile", token=token)).status == 200
        assert await p.handled("whoami") == whoami + 1

        # what the cache holds: digests and principals, never a credential
        assert (await p.call("GET", "/profile", session=session)).status == 200
        assert len(p.cache) == 2  # (creating the token, a command, emptied it)
        held = repr(list(p.cache._entries.items()))
        for secret in (session, token):
            assert secret not in held
            assert secret.encode() not in b"".join(p.cache._entries)
        assert all(len(key) == 32 for key in p.cache._entries)


async def test_a_busy_session_asks_identity_once_a_lifetime_and_never_waits_for_it(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> None:
    """Many requests of one session finding its entry gone ask whoami once between them; an
    entry in use is asked again before its end, so the next requests are still hits."""
    async with platform(monkeypatch, dsn, nats_url, uniq, tmp_path) as p:
        await set_up(p)
        session = await p.login(ALICE)
        later = [0.0]  # seconds added to the cache's clock: its lifetime passes without a wait
        monkeypatch.setattr(p.cache, "clock", lambda: time.monotonic() + later[0])

        async def profiles(n: int) -> None:
            answers = await asyncio.gather(
                *(p.call("GET", "/profile", session=session) for _ in range(n))
            )
            assert [a.status for a in answers] == [200] * n

        await profiles(1)
        whoami = await p.handled("whoami")
        later[0] += 1.0  # the entry ended
        await profiles(20)
        assert await p.handled("whoami") == whoami + 1  # one question for the twenty

        later[0] += 0.85  # in use with REFRESH_AHEAD of its lifetime left
        await profiles(5)
        await wait_until(
            lambda: _equal(p.handled("whoami"), whoami + 2), 5, "the refresh in the background"
        )
        later[0] += 0.5  # past the end of the answer before the refresh
        await profiles(5)
        assert await p.handled("whoami") == whoami + 2  # still hits: the refreshed entry


async def _equal(value: Awaitable[int], want: int) -> bool:
    return await value == want


async def test_changes_through_this_gateway_take_effect_on_the_next_request(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> None:
    async with platform(monkeypatch, dsn, nats_url, uniq, tmp_path) as p:
        _, admin, alice_id = await set_up(p)
        # Identity's announcements may be handled after its reply: lose them all, the
        # gateway's own drop after each identity command must do without.
        monkeypatch.setattr(p.cache, "drop_user", lambda user_id: None)
        session = await p.login(ALICE)
        a = await p.call(
            "POST", "/profile/tokens", session=session, body={"name": "ci", "scope": "full"}
        )
        token, token_id = a.body["token"], a.body["token_id"]
        for _ in range(2):  # cached
            assert (await p.call("GET", "/profile", token=token)).status == 200
            assert (await p.call("GET", "/profile", session=session)).status == 200

        a = await p.call("DELETE", f"/profile/tokens/{token_id}", session=session)
        assert a.status == 204
        assert (await p.call("GET", "/profile", token=token)).status == 401  # the very next one

        a = await p.call("PATCH", "/profile", session=session, body={"display_name": "Alice A."})
        assert a.status == 200
        assert (await p.call("GET", "/profile", session=session)).body["display_name"] == "Alice A."

        a = await p.call("POST", f"/users/{alice_id}/disable", session=admin)
        assert a.status == 204
        assert (await p.call("GET", "/profile", session=session)).status == 401


async def test_changes_on_another_path_take_effect_at_once(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> None:
    """Commands sent to identity on the bus, not through this gateway: its announcement alone
    makes the gateway drop what it cached, long before the entry would have expired."""
    async with platform(monkeypatch, dsn, nats_url, uniq, tmp_path) as p:
        admin_id, admin, alice_id = await set_up(p)
        ident = p.identity

        async def cached(**creds: str) -> Answer:
            """Two requests, the second a hit; the last answer."""
            whoami = await p.handled("whoami")
            await p.call("GET", "/profile", **creds)
            a = await p.call("GET", "/profile", **creds)
            assert a.status == 200 and await p.handled("whoami") <= whoami + 1, a.body
            return a

        # an ended session
        s = await ident.login("alice", ALICE["password"])
        await cached(session=s["session"])
        await ident.cmd(
            "revoke_session", {"user_id": alice_id, "session_id": s["session_id"]}, actor=alice_id
        )
        await refused_within(AT_ONCE, lambda: p.call("GET", "/profile", session=s["session"]))

        # a revoked token (made in a session just started: a token needs a recent sign-in)
        fresh = (await ident.login("alice", ALICE["password"]))["session"]
        new = {"user_id": alice_id, "name": "ci", "scope": "read", "session": fresh}
        t = await ident.cmd("create_token", new, actor=alice_id)
        await cached(token=t["token"])
        await ident.cmd(
            "revoke_token", {"user_id": alice_id, "token_id": t["token_id"]}, actor=alice_id
        )
        await refused_within(AT_ONCE, lambda: p.call("GET", "/profile", token=t["token"]))

        # a changed password ends the other sessions
        other = (await ident.login("alice", ALICE["password"]))["session"]
        await cached(session=other)
        new = "alice's newer phrase"
        await ident.cmd(
            "change_password",
            {"user_id": alice_id, "current_password": ALICE["password"], "new_password": new},
            actor=alice_id,
        )
        await refused_within(AT_ONCE, lambda: p.call("GET", "/profile", session=other))

        # a changed profile and role show at once
        session = (await ident.login("alice", new))["session"]
        await cached(session=session)
        await ident.cmd(
            "update_profile", {"user_id": alice_id, "display_name": "Al"}, actor=alice_id
        )
        await ident.cmd("set_admin", {"user_id": alice_id, "is_admin": True}, actor=admin_id)
        t0 = time.monotonic()
        while (a := await p.call("GET", "/profile", session=session)).body["is_admin"] is not True:
            assert time.monotonic() - t0 < AT_ONCE, a.body
            await asyncio.sleep(0.01)
        assert a.body["display_name"] == "Al"

        # the admin TOTP policy concerns every admin ({"all": true})
        assert (await p.call("GET", "/users", session=admin)).status == 200
        assert (await p.call("GET", "/users", session=admin)).status == 200
        await ident.cmd("set_mfa_policy", {"require_admin_totp": True}, actor=admin_id)
        await refused_within(AT_ONCE, lambda: p.call("GET", "/users", session=admin), status=403)
        await ident.cmd("set_mfa_policy", {"require_admin_totp": False}, actor=admin_id)

        # a disabled user, then a deleted one
        await cached(session=session)
        await ident.cmd("disable_user", {"user_id": alice_id}, actor=admin_id)
        await refused_within(AT_ONCE, lambda: p.call("GET", "/profile", session=session))
        await ident.cmd("enable_user", {"user_id": alice_id}, actor=admin_id)
        session = (await ident.login("alice", new))["session"]
        await cached(session=session)
        await ident.cmd("delete_user", {"user_id": alice_id}, actor=admin_id)
        await refused_within(AT_ONCE, lambda: p.call("GET", "/profile", session=session))


async def test_with_announcements_lost_a_disabled_user_still_ends_within_a_second(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> None:
    async with platform(monkeypatch, dsn, nats_url, uniq, tmp_path) as p:
        admin_id, _, alice_id = await set_up(p)
        monkeypatch.setattr(p.cache, "drop_user", lambda user_id: None)  # every one is lost
        session = (await p.identity.login("alice", ALICE["password"]))["session"]
        asked = time.monotonic()
        assert (await p.call("GET", "/profile", session=session)).status == 200
        await p.identity.cmd("disable_user", {"user_id": alice_id}, actor=admin_id)
        # without an announcement the cached answer still serves (so the test above shows
        # the announcements at work)...
        assert (await p.call("GET", "/profile", session=session)).status == 200
        # ...for at most the cache's lifetime, counted from when whoami was asked
        await refused_within(2.0, lambda: p.call("GET", "/profile", session=session))
        assert time.monotonic() - asked < 1.0 + AT_ONCE


async def test_identity_announces_after_commit_whose_principals_changed(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path
) -> None:
    nc = await nats.connect(nats_url)
    heard: list[Any] = []

    async def hear(msg: Msg) -> None:
        heard.append(json.loads(msg.data))

    try:
        await nc.subscribe(IDENTITY_CHANGED, cb=hear)
        await nc.flush()
        async with running_identity(
            monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path
        ) as ident:
            admin = await ident.set_up()
            alice = (await ident.cmd("create_user", dict(ALICE), actor=admin))["user_id"]
            # none of these changes an existing principal: nothing is announced
            s = await ident.login("alice", ALICE["password"])
            with pytest.raises(Unauthorized):
                await ident.login("alice", "not alice's phrase")
            new = {"user_id": alice, "name": "ci", "scope": "read", "session": s["session"]}
            t = await ident.cmd("create_token", new, actor=alice)
            # these do
            await ident.cmd(
                "revoke_token", {"user_id": alice, "token_id": t["token_id"]}, actor=alice
            )
            await ident.cmd("logout", {"session": s["session"]}, actor=alice)
            await ident.cmd("set_mfa_policy", {"require_admin_totp": True}, actor=admin)
            await ident.cmd("disable_user", {"user_id": alice}, actor=admin)

            async def four() -> bool:
                return len(heard) >= 4

            await wait_until(four, 5, "four announcements", step=0.01)
            await asyncio.sleep(0.1)
        assert heard == [{"user_id": alice}, {"user_id": alice}, {"all": True}, {"user_id": alice}]
    finally:
        await nc.close()
