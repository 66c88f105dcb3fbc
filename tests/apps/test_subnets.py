"""The app networks' subnets (services/apps/subnets.py) on the real event store and dockerd:
given in turn, a freed one only after every other, the turn kept across a restart; one in use
by Docker or routed by the host passed over; one Docker refuses as taken meanwhile passed over;
two takes racing get two; and an installed app's container sits at its subnet's second address,
which is the edge's upstream and answers from the host."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from libs.events.store import PostgresEventStore
from libs.service.config import ConfigError, load_config
from services.apps import events as ev
from services.apps.config import AppsConfig
from services.apps.container import RuntimeFailure
from services.apps.runtime import DockerRuntime, network_subnets
from services.apps.subnets import PREFIX, SubnetPool, host_routes
from tests.apps.appskit import (
    STATIC,
    Apps,
    EnvFor,
    remove_docker_objects,
    running_apps,
    static_catalog,
)
from tests.apps.dockerkit import DockerNames, free_range
from tests.support.servers import need_server

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pool(docker_client: docker.DockerClient) -> str:
    """A /24 of its own (16 subnets) that no Docker network overlaps now: apart from the
    default pool the other tests' apps use (10.214.0.0/16) and from the isolation test's."""
    return free_range(network_subnets(docker_client.api), "10.215.0.0/16", 24)


def hexed(address: ipaddress.IPv4Address) -> str:
    """As /proc/net/route writes an address: hex, little-endian."""
    return bytes(reversed(address.packed)).hex().upper()


def nth(pool: str, n: int) -> str:
    return str(list(ipaddress.IPv4Network(pool).subnets(new_prefix=PREFIX))[n])


@pytest.fixture
def no_routes(tmp_path: Path) -> Path:
    path = tmp_path / "route"
    path.write_text("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n")
    return path


@pytest.fixture
def cleanup(docker_client: docker.DockerClient) -> Iterator[list[str]]:
    """Names of networks to remove after the test."""
    names: list[str] = []
    yield names
    for name in names:
        for n in docker_client.api.networks(names=[name]):
            if n["Name"] == name:
                docker_client.api.remove_network(n["Id"])


async def test_subnets_come_in_turn_a_freed_one_after_all_others_and_a_restart_goes_on(
    store: PostgresEventStore, runtime: DockerRuntime, pool: str, no_routes: Path
) -> None:
    first = SubnetPool(store, pool, runtime, routes=no_routes)
    taken = [await first.take(f"net-{n}") for n in range(3)]
    assert taken == [nth(pool, 0), nth(pool, 1), nth(pool, 2)]
    # a restart (or a replay onto a new machine) goes on from the last one recorded
    again = SubnetPool(store, pool, runtime, routes=no_routes)
    taken += [await again.take(f"net-{n}") for n in range(3, 16)]
    assert len(set(taken)) == 16  # none of them in use: no network was made
    assert await again.take("net-16") == nth(pool, 0)  # the pool's end: its start again
    recorded = await store.read_stream(ev.SUBNETS_STREAM)
    assert [(e.data["network"], e.data["subnet"]) for e in recorded][:2] == [
        ("net-0", nth(pool, 0)),
        ("net-1", nth(pool, 1)),
    ]
    assert len(recorded) == 17


async def test_a_subnet_docker_uses_or_the_host_routes_is_passed_over(
    store: PostgresEventStore,
    runtime: DockerRuntime,
    docker_client: docker.DockerClient,
    dnames: DockerNames,
    pool: str,
    tmp_path: Path,
) -> None:
    # a network someone made (not ours) in the pool's second subnet; a VPN's route over the third
    docker_client.networks.create(
        dnames("someones"),
        driver="bridge",
        ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=nth(pool, 1))]),
        labels=dnames.labels,
    )
    # its bridge is routed on this host: the service's own view of the routes has it
    assert ipaddress.IPv4Network(nth(pool, 1)) in host_routes()
    third = ipaddress.IPv4Network(nth(pool, 2))
    routes = tmp_path / "route"
    routes.write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
        "eth0\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\n"  # the default route: no network
        f"tun0\t{hexed(third.network_address)}\t00000000\t0001\t0\t0\t0\t{hexed(third.netmask)}\n"
    )
    assert third in host_routes(routes)
    subnets = SubnetPool(store, pool, runtime, routes=routes)
    assert [await subnets.take(f"net-{n}") for n in range(2)] == [nth(pool, 0), nth(pool, 3)]
    assert not subnets.holds(str(ipaddress.IPv4Network(pool).supernet()))
    assert subnets.holds(nth(pool, 5)) and not subnets.holds("10.216.0.0/28")


def test_the_routes_are_read_under_the_units_proc_subset(
    docker_client: docker.DockerClient, dnames: DockerNames, pool: str
) -> None:
    """The units run with ProcSubset=pid (deploy/systemd/hardening.conf), which hides /proc/net:
    in a mount namespace with /proc mounted so, the service's view of the routes still has a
    Docker bridge's subnet."""
    unshare = shutil.which("unshare")
    if unshare is None:
        need_server("unshare (util-linux)", FileNotFoundError("unshare is not installed"))
    docker_client.networks.create(
        dnames("routed"),
        driver="bridge",
        ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=nth(pool, 4))]),
        labels=dnames.labels,
    )
    script = (
        "from services.apps.subnets import host_routes; "
        "print(' '.join(str(n) for n in host_routes()))"
    )
    mounted = (
        "mount -t proc -o subset=pid proc /proc && test ! -e /proc/net"
        f' && exec {sys.executable} -c "{script}"'
    )
    out = subprocess.run(
        [unshare, "-m", "--propagation", "private", "sh", "-c", mounted],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert nth(pool, 4) in out.stdout.split(), out.stdout


async def test_a_subnet_taken_meanwhile_is_refused_by_docker_and_the_next_one_made(
    store: PostgresEventStore,
    runtime: DockerRuntime,
    docker_client: docker.DockerClient,
    dnames: DockerNames,
    pool: str,
    no_routes: Path,
    cleanup: list[str],
) -> None:
    """Another client of the same dockerd makes a network in the subnet the pool just chose,
    between the pool's look at Docker's networks and the network's creation."""
    other = dnames("other")
    listed = runtime.subnets_in_use

    async def then_taken() -> list[str]:
        seen = await listed()
        if not docker_client.api.networks(names=[other]):
            config = docker.types.IPAMConfig(
                pool_configs=[docker.types.IPAMPool(subnet=nth(pool, 0))]
            )
            docker_client.networks.create(other, driver="bridge", ipam=config, labels=dnames.labels)
        return seen

    runtime.subnets_in_use = then_taken  # type: ignore[method-assign]
    name = dnames("app-net")
    cleanup.append(name)
    subnets = SubnetPool(store, pool, runtime, routes=no_routes)
    net = await runtime.ensure_network(name, {"homeport.app": "x"}, partial(subnets.take, name))
    assert net.subnet == nth(pool, 1)
    assert net.gateway == str(ipaddress.IPv4Network(nth(pool, 1))[1])
    recorded = [e.data["subnet"] for e in await store.read_stream(ev.SUBNETS_STREAM)]
    assert recorded == [nth(pool, 0), nth(pool, 1)]  # the refused one stays given: not reused


async def test_two_takes_racing_get_two_subnets_and_a_full_pool_is_an_error(
    store: PostgresEventStore, runtime: DockerRuntime, pool: str, tmp_path: Path
) -> None:
    a = SubnetPool(store, pool, runtime, routes=tmp_path / "none")
    b = SubnetPool(store, pool, runtime, routes=tmp_path / "none")  # a second process's
    got = await asyncio.gather(a.take("one"), b.take("two"), a.take("three"), b.take("four"))
    assert len(set(got)) == 4
    events = await store.read_stream(ev.SUBNETS_STREAM)
    assert [e.version for e in events] == [1, 2, 3, 4]
    assert sorted(e.data["subnet"] for e in events) == sorted(got)
    # every subnet under a route of the host: no subnet, and why
    net = ipaddress.IPv4Network(pool)
    routes = tmp_path / "route"
    routes.write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
        f"lan0\t{hexed(net.network_address)}\t00000000\t0001\t0\t0\t0\t{hexed(net.netmask)}\n"
    )
    full = SubnetPool(store, pool, runtime, routes=routes)
    with pytest.raises(RuntimeFailure, match="HP_APP_SUBNETS"):
        await full.take("five")
    assert len(await store.read_stream(ev.SUBNETS_STREAM)) == 4


def test_a_pool_too_small_is_refused(apps_env_for: EnvFor, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="/24 or larger"):
        SubnetPool(None, "10.215.0.0/25", None, routes=tmp_path)  # type: ignore[arg-type]
    env = apps_env_for(static_catalog(tmp_path / "catalog"))
    assert load_config(AppsConfig, env).app_subnets == "10.214.0.0/16"  # the default
    assert load_config(AppsConfig, {**env, "HP_APP_SUBNETS": "none"}).app_subnets == "none"
    for bad in ("10.215.0.0/25", "fd00::/48", "10.215.0.0/33", "a pool"):
        with pytest.raises(ConfigError) as e:
            load_config(AppsConfig, {**env, "HP_APP_SUBNETS": bad})
        assert [p.split(":", 1)[0] for p in e.value.problems] == ["HP_APP_SUBNETS"], bad


@pytest.mark.parametrize("pool", ["none"])
async def test_with_the_pool_off_docker_picks_and_the_edge_keeps_the_host_port(
    pooled: Apps, docker_client: docker.DockerClient
) -> None:
    apps = pooled
    app = await _install(apps, "plain")
    assert app["upstream"] is None and app["http_port"]
    assert await apps.store.read_stream(ev.SUBNETS_STREAM) == []
    net = docker_client.api.inspect_network(f"{apps.prefix}-net-{app['app_id']}")
    subnet = ipaddress.IPv4Network(net["IPAM"]["Config"][0]["Subnet"])
    assert not subnet.subnet_of(ipaddress.IPv4Network("10.214.0.0/16"))


async def test_an_installed_app_is_at_its_subnets_second_address_which_answers(
    pooled: Apps, docker_client: docker.DockerClient, pool: str
) -> None:
    await _install_and_reach(pooled, docker_client, pool)


@pytest.fixture
async def pooled(
    monkeypatch: pytest.MonkeyPatch,
    apps_env_for: EnvFor,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    pool: str,
) -> AsyncIterator[Apps]:
    """The apps service on its own subnet pool (`pool`, which a test may parametrize), serving
    the static app; its Docker objects removed at the end."""
    env = apps_env_for(static_catalog(tmp_path / "catalog"), extra={"HP_APP_SUBNETS": pool})
    try:
        async with running_apps(monkeypatch, env, mail=False) as apps:
            yield apps
    finally:
        remove_docker_objects(docker_client, env["HP_NAME_PREFIX"])


async def _install(apps: Apps, location: str) -> dict[str, Any]:
    reply = await apps.cmd(
        "install",
        {
            "manifest_id": STATIC,
            "version": "1.0.0",
            "location": location,
            "access": {"all_users": True},
        },
    )
    assert (await apps.wait_task(reply["task_id"]))["type"] == "TaskSucceeded"
    return dict(await apps.ask("app", {"app_id": reply["app_id"]}))


async def _install_and_reach(apps: Apps, docker_client: docker.DockerClient, pool: str) -> None:
    app = await _install(apps, "site")
    reply = {"app_id": app["app_id"]}
    network = docker_client.api.inspect_network(f"{apps.prefix}-net-{reply['app_id']}")
    subnet = ipaddress.IPv4Network(network["IPAM"]["Config"][0]["Subnet"])
    assert subnet.prefixlen == PREFIX and subnet.subnet_of(ipaddress.IPv4Network(pool))
    container = docker_client.api.inspect_container(f"{apps.prefix}-app-{reply['app_id']}")
    ip = container["NetworkSettings"]["Networks"][network["Name"]]["IPAddress"]
    assert ip == str(subnet[2])
    assert app["upstream"].startswith(f"{ip}:")
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{app['upstream']}/", timeout=aiohttp.ClientTimeout(total=10)) as r,
    ):
        assert r.status == 200
    # removed, then another app installed: the freed subnet, and so the address the edge may
    # still have for the removed app's host, is not the new app's
    gone = await apps.cmd("uninstall", {"app_id": app["app_id"]})
    assert (await apps.wait_task(gone["task_id"]))["type"] == "TaskSucceeded"
    assert not docker_client.api.networks(names=[network["Name"]])
    other = await _install(apps, "other")
    assert ipaddress.IPv4Address(other["upstream"].split(":")[0]) not in subnet
    assert other["upstream"] != app["upstream"]
    # its container restarted (dockerd, the host): the same address
    container = docker_client.api.inspect_container(f"{apps.prefix}-app-{other['app_id']}")
    ip = other["upstream"].split(":")[0]
    docker_client.api.restart(container["Id"], timeout=1)
    again = docker_client.api.inspect_container(container["Id"])
    assert [n["IPAddress"] for n in again["NetworkSettings"]["Networks"].values()] == [ip]


async def test_two_installs_at_once_get_two_networks_and_two_addresses(
    pooled: Apps, docker_client: docker.DockerClient
) -> None:
    """Both race for the network made ahead (one takes it, the other makes its own) and for the
    pool's next subnet: each app answers at its own address, in a subnet of its own."""
    apps = pooled
    one, two = await asyncio.gather(_install(apps, "one"), _install(apps, "two"))
    assert one["app_id"] != two["app_id"]
    subnets = set()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for app in (one, two):
            name = f"{apps.prefix}-net-{app['app_id']}"
            net = docker_client.api.inspect_network(name)
            subnet = ipaddress.IPv4Network(net["IPAM"]["Config"][0]["Subnet"])
            subnets.add(subnet)
            assert app["upstream"] == f"{subnet[2]}:8080", app
            async with http.get(f"http://{app['upstream']}/") as r:
                assert r.status == 200
    assert len(subnets) == 2
    given = [e.data["network"] for e in await apps.store.read_stream(ev.SUBNETS_STREAM)]
    assert len(given) == len(set(given))  # no network was given two subnets
