"""Sessions end everywhere at once (issue 13, item 6), through the real gateway and identity:
open event streams end when their session or token ends, the user is disabled or loses the
role the stream needed, or the session expires; a change signed in by the session cookie alone
(no Origin, no Sec-Fetch-Site) is refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest

from libs.events.store import PostgresEventStore
from libs.events.tasks import Task
from tests.gateway.apikit import Cast, Client, events_in, make_cast, running_gateway
from tests.identity.kit import running_identity
from tests.support.bus import relaying
from tests.support.waits import wait_until

pytestmark = pytest.mark.slow

EVIL = "https://evil.example"


@asynccontextmanager
async def platform(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> AsyncIterator[tuple[Client, Cast]]:
    """The real identity (root, alice, bob), the relay and the real gateway."""
    async with running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as i:
        cast = await make_cast(i, bob=True)
        async with (
            relaying(dsn, nats_url, uniq),
            running_gateway(
                monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
            ) as gw,
        ):
            yield gw.client, cast


def cookie(session: str) -> dict[str, str]:
    return {"Cookie": f"__Host-hp_session={session}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def ended_within(r: aiohttp.ClientResponse, seconds: float) -> bool:
    """Whether the server ends the stream within `seconds` (what it sends is read and dropped)."""
    try:
        async with asyncio.timeout(seconds):
            while await r.content.readline():
                pass
    except TimeoutError:
        return False
    return True


@asynccontextmanager
async def stream(
    client: Client, task_id: str, headers: dict[str, str]
) -> AsyncIterator[aiohttp.ClientResponse]:
    url = f"{client.base}/api/v1/tasks/{task_id}/events"
    async with client.http.get(url, headers=headers) as r:
        assert r.status == 200, await r.text()
        assert (await r.content.readline()).startswith(b"retry:")
        yield r


async def test_open_streams_end_when_the_caller_no_longer_may(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    store: PostgresEventStore,
) -> None:
    async with platform(monkeypatch, dsn, nats_url, uniq, tmp_path) as (client, cast):
        ident = cast.identity
        t = await Task.start(
            store, kind="app.install", title="Install Blog", owner=cast.alice_id, target="app-b"
        )
        await t.progress(10, "Downloading the image")

        async def visible() -> bool:
            a = await client.call("GET", f"/api/v1/tasks/{t.id}", session=cast.session_alice)
            return a.status == 200

        await wait_until(visible, 20, "the task to reach the gateway")
        await ident.cmd("set_admin", {"user_id": cast.bob_id, "is_admin": True}, actor=cast.root_id)
        alice_2 = str((await ident.login("alice", "alice's long phrase"))["session"])

        async with (
            stream(client, t.id, cookie(cast.session_alice)) as by_session,
            stream(client, t.id, bearer(cast.token_alice)) as by_token,
            stream(client, t.id, cookie(cast.session_bob)) as by_admin,  # not his task
            stream(client, t.id, cookie(alice_2)) as by_other_session,
            stream(client, t.id, cookie(cast.session_root)) as by_root,
        ):
            assert not await ended_within(by_session, 1.0)  # a stream runs while it may

            # the session signs out: its stream ends, the others go on
            await ident.cmd("logout", {"session": cast.session_alice})
            assert await ended_within(by_session, 5)
            assert not await ended_within(by_token, 0.2)

            # bob is no longer an administrator: he may not see alice's task any more
            await ident.cmd(
                "set_admin", {"user_id": cast.bob_id, "is_admin": False}, actor=cast.root_id
            )
            assert await ended_within(by_admin, 5)
            assert not await ended_within(by_root, 0.2)

            # alice's token is revoked: its stream ends
            tokens = (await ident.ask("tokens", {"user_id": cast.alice_id}))["items"]
            for token in tokens:
                revoke = {"user_id": cast.alice_id, "token_id": token["token_id"]}
                await ident.cmd("revoke_token", revoke, actor=cast.alice_id)
            assert await ended_within(by_token, 5)

            # alice's other session expires (identity's clock): it ends within a few seconds,
            # though nothing is announced
            assert not await ended_within(by_other_session, 0.2)
            ident.clock.advance(13 * 3600)
            assert await ended_within(by_other_session, 8)


async def test_disabling_a_user_ends_their_streams(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    store: PostgresEventStore,
) -> None:
    async with platform(monkeypatch, dsn, nats_url, uniq, tmp_path) as (client, cast):
        t = await Task.start(store, kind="app.install", title="Install", owner=cast.alice_id)

        async def visible() -> bool:
            a = await client.call("GET", f"/api/v1/tasks/{t.id}", session=cast.session_alice)
            return a.status == 200

        await wait_until(visible, 20, "the task to reach the gateway")
        async with (
            stream(client, t.id, cookie(cast.session_alice)) as by_session,
            stream(client, t.id, bearer(cast.token_alice_read)) as by_token,
        ):
            assert not await ended_within(by_session, 0.5)
            await cast.identity.cmd("disable_user", {"user_id": cast.alice_id}, actor=cast.root_id)
            assert await ended_within(by_session, 5)
            assert await ended_within(by_token, 5)


async def test_a_cookie_signed_change_without_origin_is_refused(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
) -> None:
    async with platform(monkeypatch, dsn, nats_url, uniq, tmp_path) as (client, cast):
        url = f"{client.base}/api/v1/profile"
        change = {"display_name": "Changed"}
        before = await events_in(dsn)
        for extra in ({}, {"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"}):
            headers = {**cookie(cast.session_alice), **extra}
            async with client.http.patch(url, json=change, headers=headers) as r:
                body = await r.json(content_type=None)
                assert r.status == 403, (extra, body)
                assert body["code"] == "forbidden"
            async with client.http.delete(f"{client.base}/api/v1/session", headers=headers) as r:
                assert r.status == 403, extra
        assert await events_in(dsn) == before  # nothing changed, alice still signed in
        profile = await client.call("GET", "/api/v1/profile", session=cast.session_alice)
        assert profile.status == 200 and profile.body["display_name"] is None

        # reads are not concerned; a browser's same-origin change, or a token, goes through
        async with client.http.get(url, headers=cookie(cast.session_alice)) as r:
            assert r.status == 200
        origin = {"Origin": client.base}
        for headers in (
            {**cookie(cast.session_alice), **origin},
            {**cookie(cast.session_alice), "Sec-Fetch-Site": "same-origin"},
            bearer(cast.token_alice),
            {**bearer(cast.token_alice), **cookie(cast.session_bob)},
        ):
            async with client.http.patch(url, json=change, headers=headers) as r:
                assert r.status == 200, (headers.keys(), await r.text())
