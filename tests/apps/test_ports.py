"""App host ports (manifest tcpPorts / udpPorts) on the real dockerd, through the apps service's
bus, as an admin would: the admin picks the server's port at install and configure, the
container's port answers there (and only there, only while the app runs), and a port that is
the platform's, another app's, or asked for twice is refused naming its field, with nothing
recorded. Two installs racing for one port: exactly one gets it.

The test app is the static website with two more busy-box web servers (container ports 2200
and 2300, each answering "port <n>") declared as tcpPorts, and a udpPorts entry.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import nats
import pytest

from deploy import embedded
from libs.events.bus import BusClient, BusError, Conflict, Invalid
from libs.events.envelope import RecordedEvent
from libs.events.nats_access import HARNESS
from libs.events.registry import REGISTRY
from services.apps.config import BUNDLED_CATALOG
from services.apps.events import AppConfigureRequested, AppInstallRequested
from services.apps.state import State, fold
from tests.apps.appskit import (
    ADMIN_CTX,
    STATIC,
    Apps,
    EnvFor,
    assert_read_model_replays,
    running_apps,
)
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(240)

PORTS_APP = "org.example.ports"
EVERYONE = {"all_users": True}
# started before the app's own server (busybox httpd without -f goes to the background)
_SERVERS = """
for port in 2200 2300; do
    mkdir -p "/tmp/p$port"
    echo "port $port" > "/tmp/p$port/index.html"
    httpd -p "$port" -h "/tmp/p$port"
done
exec httpd"""


def free_ports(n: int, kind: socket.SocketKind = socket.SOCK_STREAM) -> list[int]:
    """`n` different ports nothing listens on now, on all addresses (the test app publishes
    there), from this worker's range (deploy.embedded.free_ports)."""
    return embedded.free_ports(n, host="0.0.0.0", kind=kind)


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port nothing listens on now, on all addresses."""
    return free_ports(1, kind)[0]


@dataclass(frozen=True)
class Defaults:
    """The manifest's defaultHostPort of SSH_PORT (tcp) and DISCOVERY (udp); ADMIN_PORT has
    none."""

    ssh: int
    discovery: int


def ports_catalog(dest: Path, defaults: Defaults) -> Path:
    """The static app as PORTS_APP 1.0.0, with its two extra TCP servers and a UDP port."""
    d = dest / PORTS_APP / "1.0.0"
    shutil.copytree(BUNDLED_CATALOG / STATIC / "1.0.0", d)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest.update(
        {
            "id": PORTS_APP,
            "title": "Ports test",
            "tcpPorts": {
                "SSH_PORT": {
                    "containerPort": 2200,
                    "title": "Git over SSH",
                    "defaultHostPort": defaults.ssh,
                },
                "ADMIN_PORT": {"containerPort": 2300, "title": "Admin console"},
            },
            "udpPorts": {
                "DISCOVERY": {
                    "containerPort": 3000,
                    "title": "Discovery",
                    "defaultHostPort": defaults.discovery,
                }
            },
        }
    )
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2))
    start = d / "start.sh"
    start.write_text(start.read_text().replace("\nexec httpd", _SERVERS, 1))
    return dest


@dataclass
class Env:
    apps: Apps
    defaults: Defaults
    nats_url: str


@pytest.fixture
async def env(
    monkeypatch: pytest.MonkeyPatch, apps_env_for: EnvFor, tmp_path: Path
) -> AsyncIterator[Env]:
    defaults = Defaults(ssh=free_port(), discovery=free_port(socket.SOCK_DGRAM))
    catalog = ports_catalog(tmp_path / "catalog", defaults)
    service_env = apps_env_for(catalog, letter="p", extra={"HP_READY_TIMEOUT": "15"})
    async with running_apps(monkeypatch, service_env, mail=False) as running:
        yield Env(running, defaults, service_env["HP_NATS_URL"])


async def answer(port: int) -> str | None:
    """What the server at 127.0.0.1:<port> answers to GET /, None when nothing does."""
    timeout = aiohttp.ClientTimeout(total=3)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(f"http://127.0.0.1:{port}/") as r,
        ):
            return (await r.text()).strip()
    except (aiohttp.ClientError, TimeoutError):
        return None


async def refuses(port: int) -> bool:
    """True when a TCP connection to 127.0.0.1:<port> is refused."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 3)
    except ConnectionRefusedError:
        return True
    except (OSError, TimeoutError):
        return False
    writer.close()
    await writer.wait_closed()
    return False


async def answers_with(port: int, text: str | None, what: str) -> None:
    async def seen() -> bool:
        return await answer(port) == text

    await wait_until(seen, 20, f"127.0.0.1:{port} to answer {text!r} ({what})", step=0.2)


async def refused_within(port: int, what: str) -> None:
    async def closed() -> bool:
        return await refuses(port)

    await wait_until(closed, 20, f"127.0.0.1:{port} to refuse connections ({what})", step=0.2)


async def start_install(
    apps: Apps, location: str, tcp: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    payload: dict[str, Any] = {"manifest_id": PORTS_APP, "location": location, "access": EVERYONE}
    if tcp is not None:
        payload["tcp_ports"] = tcp
    return dict(await apps.cmd("install", payload | extra))


async def install(
    apps: Apps, location: str, tcp: dict[str, Any] | None = None, **extra: Any
) -> str:
    reply = await start_install(apps, location, tcp, **extra)
    end = await apps.wait_task(reply["task_id"])
    assert end["type"] == "TaskSucceeded", end
    return str(reply["app_id"])


async def configure(apps: Apps, app_id: str, **changes: Any) -> None:
    reply = await apps.cmd("configure", {"app_id": app_id, **changes})
    end = await apps.wait_task(reply["task_id"])
    assert end["type"] == "TaskSucceeded", end


async def recorded(apps: Apps) -> tuple[int, int]:
    """How many install/configure requests and tasks the store holds."""
    row = await apps.store.pool.fetchrow(
        "SELECT count(*) FILTER (WHERE type IN ('AppInstallRequested', 'AppConfigureRequested'))"
        " AS requests, count(*) FILTER (WHERE type = 'TaskStarted') AS tasks FROM events.events"
    )
    assert row is not None
    return int(row["requests"]), int(row["tasks"])


def ports_of(view: dict[str, Any]) -> dict[str, int]:
    return {f"{p['protocol']}:{p['name']}": p["host_port"] for p in view["ports"]}


async def test_the_chosen_port_answers_while_the_app_runs_there_only(env: Env) -> None:
    apps, defaults = env.apps, env.defaults
    ssh, admin, moved = free_ports(3)
    app_id = await install(apps, "git", {"SSH_PORT": ssh, "ADMIN_PORT": admin})

    # each container port answers at the port chosen for it; DISCOVERY took its default
    assert await answer(ssh) == "port 2200"
    assert await answer(admin) == "port 2300"
    view = await apps.app(app_id)
    assert view["ports"] == [
        {
            "name": "ADMIN_PORT",
            "protocol": "tcp",
            "container_port": 2300,
            "host_port": admin,
            "title": "Admin console",
        },
        {
            "name": "SSH_PORT",
            "protocol": "tcp",
            "container_port": 2200,
            "host_port": ssh,
            "title": "Git over SSH",
        },
        {
            "name": "DISCOVERY",
            "protocol": "udp",
            "container_port": 3000,
            "host_port": defaults.discovery,
            "title": "Discovery",
        },
    ]
    listed = (await apps.ask("apps", {}))["items"]
    assert [ports_of(a) for a in listed] == [ports_of(view)]
    requested = (await apps.store.read_stream(f"app-{app_id}"))[0]
    assert requested.type == "AppInstallRequested"
    assert requested.data["tcp_ports"] == {"SSH_PORT": ssh, "ADMIN_PORT": admin}
    assert requested.data["udp_ports"] == {"DISCOVERY": defaults.discovery}
    # published on all IPv4 addresses; the web port stays on loopback
    bindings = apps.container(app_id).attrs["HostConfig"]["PortBindings"]
    assert bindings["2200/tcp"] == [{"HostIp": "0.0.0.0", "HostPort": str(ssh)}]
    assert bindings["3000/udp"] == [{"HostIp": "0.0.0.0", "HostPort": str(defaults.discovery)}]
    assert {b["HostIp"] for b in bindings["8080/tcp"]} == {"127.0.0.1"}

    # a new port: the container is made again, the new port answers, the old one is closed;
    # the port not named keeps its own
    old_container = apps.container(app_id).id
    await configure(apps, app_id, tcp_ports={"SSH_PORT": moved})
    assert apps.container(app_id).id != old_container
    await answers_with(moved, "port 2200", "after configure")
    await refused_within(ssh, "the old port after configure")
    assert await answer(admin) == "port 2300"
    assert ports_of(await apps.app(app_id)) == {
        "tcp:ADMIN_PORT": admin,
        "tcp:SSH_PORT": moved,
        "udp:DISCOVERY": defaults.discovery,
    }
    configured = [
        e
        for e in await apps.store.read_stream(f"app-{app_id}")
        if e.type == "AppConfigureRequested"
    ]
    assert configured[0].data["tcp_ports"] == {"SSH_PORT": moved, "ADMIN_PORT": admin}
    assert configured[0].data["udp_ports"] is None  # unchanged

    # the old port is free for another app at once
    other = await start_install(
        apps,
        "other",
        {"SSH_PORT": ssh, "ADMIN_PORT": free_port()},
        udp_ports={"DISCOVERY": free_port(socket.SOCK_DGRAM)},
    )
    assert (await apps.wait_task(other["task_id"]))["type"] == "TaskSucceeded"
    await answers_with(ssh, "port 2200", "the other app on the old port")

    await apps.cmd("stop", {"app_id": app_id})
    await refused_within(moved, "the app stopped")
    await apps.cmd("start", {"app_id": app_id})
    await answers_with(moved, "port 2200", "the app started again")

    reply = await apps.cmd("uninstall", {"app_id": app_id})
    assert (await apps.wait_task(reply["task_id"]))["type"] == "TaskSucceeded"
    await refused_within(moved, "the app uninstalled")
    await refused_within(admin, "the app uninstalled")
    # its ports are free again: a new app takes them
    again = await install(apps, "again", {"SSH_PORT": moved, "ADMIN_PORT": admin})
    assert ports_of(await apps.app(again))["tcp:SSH_PORT"] == moved
    await answers_with(moved, "port 2200", "a new app on the freed port")
    # what each append wrote from the state it held is what a replay of the log writes
    await assert_read_model_replays(apps.store)


async def test_a_port_taken_twice_or_the_platforms_is_refused_naming_it(env: Env) -> None:
    apps, defaults = env.apps, env.defaults
    ssh, admin = free_ports(2)
    first = await install(apps, "first", {"SSH_PORT": ssh, "ADMIN_PORT": admin})
    before = await apps.app(first)
    counted = await recorded(apps)

    fresh = free_port()
    edge = before["http_port"]
    cases: list[tuple[dict[str, Any], type[BusError], str, tuple[str, ...]]] = [
        # another app's port, its UDP port (the manifest's default, which `first` took), and
        # the port the edge reaches it on
        ({"tcp_ports": {"SSH_PORT": ssh, "ADMIN_PORT": fresh}}, Conflict, "tcp_ports.SSH_PORT",
         (str(ssh), "first.localhost")),
        ({"tcp_ports": {"ADMIN_PORT": fresh}, "udp_ports": None}, Conflict, "udp_ports.DISCOVERY",
         (str(defaults.discovery), "first.localhost")),
        ({"tcp_ports": {"ADMIN_PORT": edge}}, Conflict, "tcp_ports.ADMIN_PORT",
         (str(edge), "first.localhost")),
        # the platform's own ports
        ({"tcp_ports": {"SSH_PORT": 25, "ADMIN_PORT": fresh}}, Invalid, "tcp_ports.SSH_PORT",
         ("25", "mail")),
        ({"tcp_ports": {"ADMIN_PORT": 443}}, Invalid, "tcp_ports.ADMIN_PORT", ("443",)),
        ({"tcp_ports": {"ADMIN_PORT": 22}}, Invalid, "tcp_ports.ADMIN_PORT", ("22", "SSH")),
        # one port twice in one request
        ({"tcp_ports": {"SSH_PORT": fresh, "ADMIN_PORT": fresh}}, Invalid, "tcp_ports.SSH_PORT",
         (str(fresh), "ADMIN_PORT")),
    ]  # fmt: skip
    udp = {"udp_ports": {"DISCOVERY": free_port(socket.SOCK_DGRAM)}}
    # a port another program on this server listens on (Docker could not publish it)
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("0.0.0.0", 0))
    squatter.listen(1)
    held = squatter.getsockname()[1]
    cases.append(
        ({"tcp_ports": {"SSH_PORT": held, "ADMIN_PORT": fresh}}, Conflict, "tcp_ports.SSH_PORT",
         (str(held), "another program on this server"))
    )  # fmt: skip
    with squatter:
        for change, error, field, said in cases:
            payload = {**udp, **change}
            with pytest.raises(error) as caught:
                await start_install(apps, "second", **payload)
            assert caught.value.field == field, (change, caught.value)
            assert all(s in str(caught.value) for s in said), (change, caught.value)
    # the same number for TCP and for UDP is two ports
    shared = free_port()
    both = await start_install(
        apps, "both", {"SSH_PORT": shared, "ADMIN_PORT": free_port()},
        udp_ports={"DISCOVERY": shared},
    )  # fmt: skip
    # an install still running holds its ports already
    with pytest.raises(Conflict) as pending:
        await start_install(apps, "third", {"SSH_PORT": shared, "ADMIN_PORT": fresh})
    assert pending.value.field == "tcp_ports.SSH_PORT"
    assert "both.localhost" in str(pending.value)
    assert (await apps.wait_task(both["task_id"]))["type"] == "TaskSucceeded"
    assert await recorded(apps) == (counted[0] + 1, counted[1] + 1)

    # configure: the same rules; the app's own ports are its own
    counted = await recorded(apps)
    for tcp, error, field in (
        ({"SSH_PORT": shared}, Conflict, "tcp_ports.SSH_PORT"),  # the other app's
        ({"SSH_PORT": admin}, Invalid, "tcp_ports.SSH_PORT"),  # its own other port
        ({"ADMIN_PORT": 443}, Invalid, "tcp_ports.ADMIN_PORT"),
        ({"ADMIN_PORT": 587}, Invalid, "tcp_ports.ADMIN_PORT"),
        ({"NOPE": fresh}, Invalid, "tcp_ports.NOPE"),
        ({"SSH_PORT": 0}, Invalid, "tcp_ports.SSH_PORT"),
    ):
        with pytest.raises(error) as caught:
            await apps.cmd("configure", {"app_id": first, "tcp_ports": tcp})
        assert caught.value.field == field, (tcp, caught.value)
    with pytest.raises(Conflict) as udp_taken:
        await apps.cmd("configure", {"app_id": first, "udp_ports": {"DISCOVERY": shared}})
    assert udp_taken.value.field == "udp_ports.DISCOVERY"
    with pytest.raises(Invalid):  # its own ports again: nothing to change
        await apps.cmd("configure", {"app_id": first, "tcp_ports": {"SSH_PORT": ssh}})

    # nothing recorded; the app as before, its ports still answering
    assert await recorded(apps) == counted
    after = await apps.app(first)
    assert after["ports"] == before["ports"] and after["state"] == "installed"
    assert await answer(ssh) == "port 2200" and await answer(admin) == "port 2300"
    # swapping its own two ports is fine
    await configure(apps, first, tcp_ports={"SSH_PORT": admin, "ADMIN_PORT": ssh})
    await answers_with(ssh, "port 2300", "the swapped ports")
    await answers_with(admin, "port 2200", "the swapped ports")


async def test_a_clone_needs_ports_of_its_own(env: Env) -> None:
    apps, defaults = env.apps, env.defaults
    source = await install(apps, "source", {"ADMIN_PORT": free_port()})  # SSH at its default
    counted = await recorded(apps)
    for change, error, field in (
        ({}, Invalid, "tcp_ports.ADMIN_PORT"),  # no default to take
        ({"tcp_ports": {"ADMIN_PORT": free_port()}}, Conflict, "tcp_ports.SSH_PORT"),
        (
            {
                "tcp_ports": {"SSH_PORT": free_port(), "ADMIN_PORT": free_port()},
                "udp_ports": {"DISCOVERY": 70000},
            },
            Invalid,
            "udp_ports.DISCOVERY",
        ),
    ):
        with pytest.raises(error) as caught:
            await apps.cmd("clone", {"app_id": source, "location": "copy", **change})
        assert caught.value.field == field, (change, caught.value)
    assert await recorded(apps) == counted

    ssh, admin = free_ports(2)
    reply = await apps.cmd(
        "clone",
        {
            "app_id": source,
            "location": "copy",
            "tcp_ports": {"SSH_PORT": ssh, "ADMIN_PORT": admin},
            "udp_ports": {"DISCOVERY": free_port(socket.SOCK_DGRAM)},
        },
    )
    assert (await apps.wait_task(reply["task_id"]))["type"] == "TaskSucceeded"
    assert await answer(ssh) == "port 2200" and await answer(admin) == "port 2300"
    assert await answer(defaults.ssh) == "port 2200"  # the source's, still there


async def test_bad_ports_are_400s_naming_the_field_and_record_nothing(env: Env) -> None:
    apps = env.apps
    nc = await nats.connect(env.nats_url)
    try:
        # the service's own checks, not only the caller's: no contract on this side
        bare = BusClient(nc, sender=HARNESS, contracts={}, default_timeout=30)
        cases: list[tuple[Any, str]] = [
            ({"SSH_PORT": 0}, "tcp_ports.SSH_PORT"),
            ({"SSH_PORT": 70000}, "tcp_ports.SSH_PORT"),
            ({"SSH_PORT": -22}, "tcp_ports.SSH_PORT"),
            ({"SSH_PORT": "22x"}, "tcp_ports.SSH_PORT"),
            ({"SSH_PORT": "2222"}, "tcp_ports.SSH_PORT"),
            ({"SSH_PORT": 22.5}, "tcp_ports.SSH_PORT"),
            ({"SSH_PORT": True}, "tcp_ports.SSH_PORT"),
            ({"SSH_PORT": int("9" * 4000)}, "tcp_ports.SSH_PORT"),
            ({"NOPE": 2222, "ADMIN_PORT": free_port()}, "tcp_ports.NOPE"),
            ({"ssh_port": 2222, "ADMIN_PORT": free_port()}, "tcp_ports.ssh_port"),
            ({"X" * 5000: 2222}, "tcp_ports." + "X" * 64),
            ({}, "tcp_ports.ADMIN_PORT"),  # no default: it must be given
            (None, "tcp_ports.ADMIN_PORT"),
            ([2222], "tcp_ports"),
            ("2222", "tcp_ports"),
        ]
        for tcp, field in cases:
            payload = {"manifest_id": PORTS_APP, "location": "bad", "tcp_ports": tcp}
            with pytest.raises(Invalid) as caught:
                await bare.command("apps", "install", payload, ctx=ADMIN_CTX)
            assert caught.value.field == field, (str(tcp)[:80], caught.value)
        for udp, field in (
            ({"DISCOVERY": 65536}, "udp_ports.DISCOVERY"),
            ({"SSH_PORT": 2222}, "udp_ports.SSH_PORT"),  # a TCP port's name
        ):
            payload = {
                "manifest_id": PORTS_APP,
                "location": "bad",
                "tcp_ports": {"ADMIN_PORT": free_port()},
                "udp_ports": udp,
            }
            with pytest.raises(Invalid) as caught:
                await bare.command("apps", "install", payload, ctx=ADMIN_CTX)
            assert caught.value.field == field, (udp, caught.value)

        # a number past Python's 4,300-digit limit is refused before any field is looked at
        request = {
            "actor": "system",
            "admin": False,
            "correlation_id": "apps-test",
            "payload": {
                "manifest_id": PORTS_APP,
                "location": "bad",
                "tcp_ports": {"SSH_PORT": "HUGE", "ADMIN_PORT": free_port()},
            },
            "deadline": time.time() + 30,
        }
        raw = json.dumps(request).replace('"HUGE"', "9" * 5000).encode()
        reply = json.loads((await nc.request(f"hp.cmd.apps.install.{HARNESS}", raw, 30)).data)
        assert reply["ok"] is False and reply["error"]["code"] == "invalid", reply
        assert "digits" in reply["error"]["message"], reply
    finally:
        await nc.close()
    assert await recorded(apps) == (0, 0)
    assert (await apps.ask("apps", {}))["items"] == []


async def test_two_installs_racing_for_one_port_one_gets_it(env: Env, dsn: str) -> None:
    """Both requests pass the service's look at apps.ports (the test holds the table so
    neither can write it yet); the primary key decides when they record."""
    apps = env.apps
    port = free_port()
    conn = await asyncpg.connect(dsn)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("LOCK TABLE apps.ports IN EXCLUSIVE MODE")  # reads still go
        racing = [
            asyncio.ensure_future(
                start_install(
                    apps,
                    location,
                    {"SSH_PORT": port, "ADMIN_PORT": free_port()},
                    udp_ports={"DISCOVERY": free_port(socket.SOCK_DGRAM)},
                )
            )
            for location in ("left", "right")
        ]

        async def both_past_their_checks() -> bool:
            # one waits on apps.ports (recording its request), the other on the event store
            # behind it (starting its task, or recording)
            ended = [f.exception() or f.result() for f in racing if f.done()]
            assert not ended, f"an install ended while apps.ports was held: {ended}"
            # inside a transaction pg_stat_activity's rows are those of its first read (only
            # the wait columns are live): a backend the service's pool opened since is missing
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
            )
            return bool(waiting >= 2)

        try:
            await wait_until(both_past_their_checks, 30, "both installs to wait on the database")
        except AssertionError as e:
            locks = await conn.fetch(
                "SELECT pid, relation::regclass::text AS relation, locktype, mode, granted"
                " FROM pg_locks WHERE pid <> pg_backend_pid() ORDER BY granted, pid"
            )
            raise AssertionError(f"{e}; the locks: {[dict(r) for r in locks]}") from None
        await tx.commit()
        outcomes = await asyncio.gather(*racing, return_exceptions=True)
    finally:
        await conn.close()
    won = [o for o in outcomes if isinstance(o, dict)]
    lost = [o for o in outcomes if isinstance(o, Conflict)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    assert lost[0].field == "tcp_ports.SSH_PORT"
    assert str(port) in str(lost[0])
    assert (await apps.wait_task(won[0]["task_id"]))["type"] == "TaskSucceeded"
    await answers_with(port, "port 2200", "the winner")
    listed = (await apps.ask("apps", {}))["items"]
    assert len(listed) == 1 and ports_of(listed[0])["tcp:SSH_PORT"] == port
    # the loser's task says so; its app has no event
    assert (
        await apps.store.pool.fetchval(
            "SELECT count(*) FROM events.events WHERE type = 'AppInstallRequested'"
        )
        == 1
    )
    failed = await apps.store.pool.fetchval(
        "SELECT count(*) FROM events.events WHERE type = 'TaskFailed'"
        " AND data->>'code' = 'port_taken'"
    )
    assert failed == 1


def test_events_recorded_before_ports_still_load() -> None:
    """An install and a configuration recorded without the port fields: no ports, none held."""
    app_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
    old: list[tuple[str, dict[str, Any]]] = [
        (
            "AppInstallRequested",
            {
                "app_id": app_id,
                "manifest_id": PORTS_APP,
                "version": "1.0.0",
                "location": "old",
                "domain": "localhost",
                "access": EVERYONE,
                "memory_bytes": 33554432,
                "env": {},
                "task_id": task_id,
                "clone_of": None,
                "snapshot_id": None,
                "from_snapshot": None,
            },
        ),
        ("AppInstalled", {"app_id": app_id, "task_id": task_id, "version": "1.0.0"}),
        (
            "AppConfigureRequested",
            {
                "app_id": app_id,
                "task_id": task_id,
                "location": None,
                "access": None,
                "memory_bytes": 67108864,
                "env": None,
            },
        ),
    ]
    recorded = [
        RecordedEvent(
            position=i + 1,
            id=uuid.uuid4(),
            stream=f"app-{app_id}",
            version=i + 1,
            type=type_,
            schema=1,
            data=data,
            meta={},
            recorded_at=datetime.now(UTC),
            hash=b"",
        )
        for i, (type_, data) in enumerate(old)
    ]
    install_event = REGISTRY.decode(recorded[0])
    assert isinstance(install_event, AppInstallRequested)
    assert install_event.tcp_ports == {} and install_event.udp_ports == {}
    configure_event = REGISTRY.decode(recorded[2])
    assert isinstance(configure_event, AppConfigureRequested)
    assert configure_event.tcp_ports is None and configure_event.udp_ports is None
    s = fold(app_id, recorded)
    assert s.state is State.pending_configure and s.memory_bytes == 33554432
    assert s.tcp_ports == {} and s.udp_ports == {} and s.held_ports == frozenset()
