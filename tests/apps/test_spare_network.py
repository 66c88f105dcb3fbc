"""The network made ahead for the next install (services/apps/spare.py), on the real dockerd:
an install or clone takes the id whose network waits, another is made once nothing runs, a
restart takes a left-over one back and removes the rest, and a refused install gives its id
back."""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from libs.events.bus import Conflict
from services.apps.__main__ import build
from tests.apps.appskit import STATIC, Apps, EnvFor, connected, static_catalog
from tests.apps.test_ports import PORTS_APP, Defaults, free_port, ports_catalog
from tests.support.serving import serving
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(240)

EVERYONE = {"all_users": True}


def networks(apps: Apps) -> dict[str, str]:
    """App id -> network name of the networks this service made (by the prefix)."""
    found = apps.docker.api.networks(filters={"label": "homeport.app"})
    prefix = f"{apps.prefix}-net-"
    return {n["Labels"]["homeport.app"]: n["Name"] for n in found if n["Name"].startswith(prefix)}


async def ahead(apps: Apps) -> float:
    """What the service's /metrics says of the network made ahead (1: ready to be taken)."""
    url = f"http://127.0.0.1:{apps.port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        text = await r.text()
    m = re.search(r"^homeport_apps_networks_ahead ([0-9.]+)$", text, re.MULTILINE)
    assert m is not None, "no homeport_apps_networks_ahead in /metrics"
    return float(m.group(1))


async def spare(apps: Apps, apps_ids: set[str]) -> str:
    """The one network of an id no app has, ready to be taken (waited for): its id."""
    found: list[str] = []

    async def one() -> bool:
        found[:] = [i for i in networks(apps) if i not in apps_ids]
        return len(found) == 1 and await ahead(apps) == 1

    await wait_until(one, 30, "one network made ahead and ready, no more")
    return found[0]


def _payload(location: str, manifest: str, tcp: dict[str, int] | None) -> dict[str, object]:
    payload = {"manifest_id": manifest, "version": "1.0.0", "location": location}
    return payload | {"access": EVERYONE} | ({"tcp_ports": tcp} if tcp else {})


async def install(
    apps: Apps,
    location: str,
    manifest: str = STATIC,
    tcp: dict[str, int] | None = None,
    udp: dict[str, int] | None = None,
) -> str:
    payload = _payload(location, manifest, tcp) | ({"udp_ports": udp} if udp else {})
    reply = await apps.cmd("install", payload)
    end = await apps.wait_task(reply["task_id"])
    assert end["type"] == "TaskSucceeded", end
    return str(reply["app_id"])


@pytest.fixture
def env(apps_env_for: EnvFor, tmp_path: Path) -> dict[str, str]:
    return apps_env_for(static_catalog(tmp_path / "catalog"), extra={"HP_READY_TIMEOUT": "3"})


@pytest.fixture
async def apps(env: dict[str, str]) -> AsyncIterator[Apps]:
    async with connected(env, mail=False) as client:
        yield client


async def test_an_install_takes_the_network_made_ahead_and_another_is_made_after(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], apps: Apps
) -> None:
    async with serving(monkeypatch, build, env, "apps") as svc:
        apps.port = svc.port
        made = await spare(apps, set())
        first = await install(apps, "first")
        assert first == made  # its network was there before the install asked
        after = await spare(apps, {first})  # made once the install ended
        assert after != first
        reply = await apps.cmd("clone", {"app_id": first, "location": "copy"})
        assert (await apps.wait_task(reply["task_id"]))["type"] == "TaskSucceeded"
        assert reply["app_id"] == after
        third = await spare(apps, {first, after})
        reply = await apps.cmd("uninstall", {"app_id": first})
        assert (await apps.wait_task(reply["task_id"]))["type"] == "TaskSucceeded"

        async def first_gone() -> bool:
            return set(networks(apps)) == {after, third}

        await wait_until(first_gone, 30, "first's network gone")


async def test_a_restart_takes_a_left_over_network_back_and_removes_the_others(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], apps: Apps
) -> None:
    async with serving(monkeypatch, build, env, "apps") as svc:
        apps.port = svc.port
        kept = await install(apps, "kept")
        made = await spare(apps, {kept})
    # one more left over, as if an install had been refused after taking its id; one named
    # and labelled as ours but not made so (its containers could reach each other); and a
    # network of ours whose label is no app id of ours: neither name nor label this service gives
    stray, unlike = str(uuid.uuid4()), str(uuid.uuid4())
    for app_id, icc in ((stray, "false"), (unlike, "true")):
        apps.docker.networks.create(
            f"{apps.prefix}-net-{app_id}",
            driver="bridge",
            options={"com.docker.network.bridge.enable_icc": icc},
            labels={"homeport.app": app_id},
        )
    odd = apps.docker.networks.create(
        f"{apps.prefix}-net-odd", driver="bridge", labels={"homeport.app": "odd"}
    )
    async with serving(monkeypatch, build, env, "apps") as svc:
        apps.port = svc.port
        # the app's network stays its own; of the two left over, one is the reserve; the one
        # not made as ours is never the reserve, and goes
        reserve = min(made, stray)
        gone = max(made, stray)

        async def removed() -> bool:
            return not {gone, unlike} & set(networks(apps))

        await wait_until(removed, 30, "the extra one removed")
        assert set(networks(apps)) == {kept, reserve, "odd"}
        assert await install(apps, "next") == reserve
    odd.remove()


async def test_an_install_refused_after_taking_the_id_gives_it_back(
    monkeypatch: pytest.MonkeyPatch, apps_env_for: EnvFor, tmp_path: Path
) -> None:
    defaults = Defaults(ssh=free_port(), discovery=free_port(socket.SOCK_DGRAM))
    env = apps_env_for(ports_catalog(tmp_path / "catalog", defaults), letter="s")
    async with (
        connected(env, mail=False) as apps,
        serving(monkeypatch, build, env, "apps") as svc,
    ):
        apps.port = svc.port
        ssh, admin = free_port(), free_port()
        first = await install(apps, "first", PORTS_APP, {"SSH_PORT": ssh, "ADMIN_PORT": admin})
        made = await spare(apps, {first})
        # another app's port: refused once the new app's id is taken, so it is given back
        taken = {"SSH_PORT": ssh, "ADMIN_PORT": free_port()}
        udp = {"DISCOVERY": free_port(socket.SOCK_DGRAM)}
        with pytest.raises(Conflict) as refused:
            await apps.cmd("install", _payload("second", PORTS_APP, taken) | {"udp_ports": udp})
        assert refused.value.field == "tcp_ports.SSH_PORT"
        assert await spare(apps, {first}) == made
        again = {"SSH_PORT": free_port(), "ADMIN_PORT": free_port()}
        assert await install(apps, "second", PORTS_APP, again, udp) == made
