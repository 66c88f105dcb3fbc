"""NATS with a user per service (libs/events/nats_access.py) and the bus's sender rule
(libs/events/bus.py), against a real nats-server started with the configuration a stack gets."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from deploy.embedded import EmbeddedError, NatsServer
from libs.events.bus import Bus, BusClient, Forbidden
from libs.events.context import Context
from libs.events.nats_access import CALLS, GATEWAY, SERVICE_USERS, inbox_prefix, read_credentials
from libs.events.relay import ensure_stream
from libs.events.wiring import connect_nats
from tests.support.bus import refused_connect
from tests.support.servers import need_server

ROOT = Path(__file__).resolve().parents[2]


class Users:
    """A nats-server as a stack runs it (no harness user) and connections as its users."""

    def __init__(self, server: NatsServer) -> None:
        self.server = server
        self.conns: list[NATS] = []
        self.refusals: list[str] = []

    async def connect(self, user: str) -> NATS:
        async def seen(e: Exception) -> None:
            self.refusals.append(f"{user}: {e}")

        name, password = read_credentials(self.server.credentials(user))
        nc = await nats.connect(
            self.server.url,
            user=name,
            password=password,
            inbox_prefix=inbox_prefix(name),
            error_cb=seen,
            allow_reconnect=False,
            connect_timeout=2,
        )
        self.conns.append(nc)
        return nc

    async def refused(self, what: str) -> bool:
        """Whether the server reported a permissions violation naming `what` (it reports
        them asynchronously)."""
        end = time.monotonic() + 3
        while time.monotonic() < end:
            # nats-py lower-cases the server's -ERR text
            if any("violation" in r and what.lower() in r.lower() for r in self.refusals):
                return True
            await asyncio.sleep(0.02)
        return False


@pytest.fixture
async def users(tmp_path: Path) -> AsyncIterator[Users]:
    server = NatsServer(tmp_path / "nats")
    try:
        server.start()
    except EmbeddedError as e:
        need_server("nats-server", e)
    u = Users(server)
    try:
        yield u
    finally:
        for nc in u.conns:
            await nc.close()
        server.stop()


def wire(actor: str, payload: dict[str, Any] | None = None) -> bytes:
    return json.dumps(
        {
            "actor": actor,
            "correlation_id": "c-1",
            "payload": payload or {},
            "deadline": time.time() + 5,
        }
    ).encode()


async def test_no_credentials_no_entry_and_every_password_file_is_private(users: Users) -> None:
    assert "Authorization Violation" in await refused_connect(users.server.url)
    name, _ = read_credentials(users.server.credentials("apps"))
    refusal = await refused_connect(users.server.url, user=name, password="guess")
    assert "Authorization Violation" in refusal
    for user in SERVICE_USERS:
        assert users.server.credentials(user).stat().st_mode & 0o777 == 0o600
    assert (users.server.datadir / "auth.conf").stat().st_mode & 0o777 == 0o600
    # a second start keeps every password (the services hold them) and adds no harness user
    before = {u: users.server.credentials(u).read_text() for u in SERVICE_USERS}
    users.server.stop()
    users.server.start()
    assert {u: users.server.credentials(u).read_text() for u in SERVICE_USERS} == before
    assert not users.server.credentials("harness").exists()
    with pytest.raises(EmbeddedError):
        _ = users.server.harness_url


async def _first_request(nc: NATS, subject: str, data: bytes) -> Any:
    """A request to a subscription just made and flushed on another connection. nats-server
    2.9 now and then answers the first one "no responders" all the same (measured: 3 of 160
    fresh servers under load; the next request, a millisecond later, is served), so that one
    answer is asked again. No message reached a subscriber then: asking again is safe."""
    for _ in range(50):
        try:
            return await nc.request(subject, data, timeout=3)
        except nats.errors.NoRespondersError:
            await asyncio.sleep(0.01)
    return await nc.request(subject, data, timeout=3)


async def test_apps_cannot_reach_identity_admin_commands_or_read_them(users: Users) -> None:
    identity, apps = await users.connect("identity"), await users.connect("apps")
    served: list[str] = []

    async def answer(msg: Any) -> None:
        served.append(msg.subject)
        await identity.publish(msg.reply, b'{"ok": true, "result": null}')

    await identity.subscribe("hp.cmd.identity.>", cb=answer)
    await identity.subscribe("hp.qry.identity.>", cb=answer)
    await identity.flush()
    # what apps calls (its LDAP account for an app) goes through
    reply = await _first_request(apps, "hp.cmd.identity.ldap_remove_app.apps", wire("system"))
    assert json.loads(reply.data)["ok"] is True
    # an administrator made by apps: the server drops it, identity never sees it
    for subject in ("hp.cmd.identity.create_user.apps", "hp.cmd.identity.setup.apps"):
        with pytest.raises(nats.errors.TimeoutError):
            await apps.request(subject, wire("system"), timeout=0.5)
        assert await users.refused(subject)
    # nor may apps sign as another service, or send without a sender
    for subject in ("hp.qry.identity.groups.gateway", "hp.qry.identity.groups"):
        with pytest.raises(nats.errors.TimeoutError):
            await apps.request(subject, wire("system"), timeout=0.5)
        assert await users.refused(subject)
    assert served == ["hp.cmd.identity.ldap_remove_app.apps"]
    # reading identity's commands (sessions, passwords in payloads) or its replies: refused
    await apps.subscribe("hp.cmd.identity.>")
    assert await users.refused("hp.cmd.identity.>")
    await apps.subscribe(f"{inbox_prefix('identity')}.>")
    assert await users.refused(inbox_prefix("identity"))


async def test_a_user_actor_only_from_the_gateway_and_system_never_from_it(users: Users) -> None:
    """The bus reads the sender nats-server proved and applies the rule before any handler."""
    ran: list[tuple[str, str | None]] = []
    bus = Bus(await users.connect("identity"), "identity")

    @bus.query("groups")
    async def groups(payload: dict[str, Any]) -> Any:
        from libs.events import context

        ran.append((context.current().actor, context.current().sender))
        return {"items": []}

    await bus.start()
    try:
        apps, gateway = await users.connect("apps"), await users.connect("gateway")
        # raw: apps claims to act for a user -> forbidden, handler never runs
        reply = json.loads(
            (await _first_request(apps, "hp.qry.identity.groups.apps", wire("u-1"))).data
        )
        assert reply["ok"] is False and reply["error"]["code"] == "forbidden", reply
        assert "only the gateway acts for a user" in reply["error"]["message"]
        # the gateway claims to be the platform -> forbidden
        client = BusClient(gateway, sender=GATEWAY)
        with pytest.raises(Forbidden) as caught:
            await client.query("identity", "groups", {}, ctx=Context(actor="system"))
        assert caught.value.field == "actor"
        assert ran == []
        # what passes: a user through the gateway, a service as itself (its BusClient sends
        # "system" whoever the work is for, and no admin flag)
        await client.query("identity", "groups", {}, ctx=Context(actor="u-1", admin=True))
        as_apps = BusClient(apps, sender="apps")
        await as_apps.query("identity", "groups", {}, ctx=Context(actor="u-1", admin=True))
        assert ran == [("u-1", "gateway"), ("system", "apps")]
    finally:
        await bus.stop(grace=1)


async def test_only_the_relay_writes_the_event_stream(users: Users) -> None:
    relay, apps = await users.connect("relay"), await users.connect("apps")
    await ensure_stream(relay.jetstream())
    ack = await relay.jetstream().publish("hp.evt.app.AppInstalled", b"{}")
    assert ack.seq == 1
    js = apps.jetstream(timeout=0.5)
    with pytest.raises(nats.errors.TimeoutError):
        await js.publish("hp.evt.app.AppInstalled", b"forged", timeout=0.5)
    assert await users.refused("hp.evt.app.AppInstalled")
    for call in (js.purge_stream("HOMEPORT_EVENTS"), js.delete_stream("HOMEPORT_EVENTS")):
        with pytest.raises((nats.errors.TimeoutError, nats.js.errors.Error)):
            await call
    assert await users.refused("$JS.API.STREAM.PURGE.HOMEPORT_EVENTS")
    assert await users.refused("$JS.API.STREAM.DELETE.HOMEPORT_EVENTS")
    # reading and following it is everyone's
    js = apps.jetstream(timeout=3)
    info = await js.stream_info("HOMEPORT_EVENTS")
    assert info.state.messages == 1
    sub = await js.pull_subscribe(">", durable="proj_probe", stream="HOMEPORT_EVENTS")
    [msg] = await sub.fetch(1, timeout=3)
    assert msg.data == b"{}"
    await msg.ack()


async def test_a_service_connects_with_its_credentials_file(users: Users, tmp_path: Path) -> None:
    nc = await connect_nats(users.server.url, "probe", users.server.credentials("dns"))
    try:
        sub = await nc.subscribe("hp.qry.dns.domain.*")
        await nc.flush()
        assert nc.is_connected and sub is not None
        assert nc._inbox_prefix.decode() == inbox_prefix("dns")
    finally:
        await nc.close()
    link = tmp_path / "dns.link"
    link.symlink_to(users.server.credentials("dns"))
    from libs.events.nats_access import CredentialsError

    with pytest.raises(CredentialsError):
        await connect_nats(users.server.url, "probe", link)


# -- the table against the code --------------------------------------------------------------

_CALL = re.compile(r'\.(command|query|ask)\(\s*"([a-z_]+)",\s*"([a-z_]+)"')
# helpers that fix the callee: backup's _cmd (apps), certs' _send (dns), apps' _identity
_HELPERS = {
    "backup": (re.compile(r'_cmd\(\s*"([a-z_]+)"'), "cmd", "apps"),
    "certs": (re.compile(r'_send\(\s*"([a-z_]+)"'), "cmd", "dns"),
}
_IDENTITY = re.compile(r'_identity\(\s*"(command|query)",\s*"([a-z_]+)"')


def _calls_in(service: str) -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "services" / service).rglob("*.py"):
        text = path.read_text()
        for kind, callee, name in _CALL.findall(text):
            found.add(f"{'cmd' if kind == 'command' else 'qry'}.{callee}.{name}")
        if service in _HELPERS:
            pattern, kind, callee = _HELPERS[service]
            found |= {f"{kind}.{callee}.{name}" for name in pattern.findall(text)}
        for kind, name in _IDENTITY.findall(text):
            found.add(f"{'cmd' if kind == 'command' else 'qry'}.identity.{name}")
    return found


@pytest.mark.parametrize("service", [s for s in SERVICE_USERS if s != GATEWAY])
def test_every_call_a_service_makes_is_in_its_permissions(service: str) -> None:
    calls = _calls_in(service)
    missing = sorted(calls - set(CALLS[service]))
    assert not missing, f"{service} calls {missing}: add them to CALLS in nats_access.py"
    if service in ("apps", "backup", "certs", "dns"):
        assert calls, f"the scan found no call in {service}: the pattern is stale"
