"""SECURITY.md "Isolation of apps", probed from inside running app containers.

Every "unreachable" is shown next to something the same probe does reach (the container's own
server, a listener on the services network gateway), and the probe exits 0 whatever it finds,
so a crash or a broken network can not pass for isolation.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import docker
import pytest

from deploy.embedded import NatsServer, PostgresServer
from libs.egress import EgressRules
from services.apps.container import NetworkInfo, RuntimeFailure
from services.apps.runtime import DockerRuntime
from services.apps.subnets import PREFIX, app_address
from tests.apps.dockerkit import (
    DockerNames,
    app_spec,
    connects,
    docker_exec,
    docker_read,
    free_range,
    host_addresses,
    probe_many,
)
from tests.support.servers import need_server

pytestmark = [pytest.mark.timeout(60), pytest.mark.xdist_group("docker-isolation")]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class Listener:
    host: str
    port: int
    server: asyncio.Server


async def _listen(host: str) -> Listener:
    async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    server = await asyncio.start_server(handle, host, 0)
    return Listener(host, server.sockets[0].getsockname()[1], server)


@pytest.fixture
def root() -> None:
    if os.geteuid() != 0:
        need_server("root (ip, iptables)", PermissionError("these tests change host networking"))


def _iptables(*args: str, table: str = "filter", check: bool = True) -> str:
    argv = ["iptables", "-w", "10", "-t", table, *args]
    return subprocess.run(argv, check=check, capture_output=True).stdout.decode()


def _iptables_rules(chain: str, table: str = "mangle") -> list[str]:
    return _iptables("-S", chain, table=table).splitlines()


@pytest.fixture
async def egress(root: None) -> AsyncIterator[EgressRules]:
    """The egress rules in a chain of this test's own, checked right after `ensure()`.

    A chain of its own: the host's HOMEPORT-EGRESS may hold rules an earlier run (or a local
    stack) left, which would drop the probes whatever `ensure()` does; the drop counters read
    below are this chain's only. Removed after the test.
    """
    rules = EgressRules(chain=f"HPT-EGRESS-{uuid.uuid4().hex[:8]}")
    try:
        # Where an earlier version put it (filter: DOCKER-USER and INPUT): ensure() moves it.
        jump_args = ["-i", rules.interfaces, "-j", rules.chain]
        _iptables("-N", "DOCKER-USER", check=False)
        _iptables("-N", rules.chain)
        _iptables("-A", rules.chain, "-d", "169.254.0.0/16", "-j", "DROP")
        _iptables("-I", "DOCKER-USER", "1", *jump_args)
        _iptables("-I", "INPUT", "1", *jump_args)
        await rules.ensure()
        for hook in ("DOCKER-USER", "INPUT", "FORWARD"):
            assert rules.chain not in _iptables("-S", hook), f"filter {hook} left as it was"
        assert _iptables("-S", rules.chain, check=False) == "", "the filter chain is gone"
        chain, jump = rules.chain, f"-i {rules.interfaces} -j {rules.chain}"
        assert _iptables_rules(chain) == [
            f"-N {chain}",
            f"-A {chain} -d 169.254.0.0/16 -j DROP",
            f"-A {chain} -d 127.0.0.0/8 -j DROP",
            f"-A {chain} -o br-+ -j DROP",
        ]
        # First in both paths of the mangle table (before any filter rule, so before Docker's):
        # forwarded (FORWARD) and to the host itself (INPUT).
        assert _iptables_rules("FORWARD")[1] == f"-A FORWARD {jump}"
        assert _iptables_rules("INPUT")[1] == f"-A INPUT {jump}"
        await rules.ensure()  # idempotent: nothing added twice
        assert _iptables_rules("INPUT").count(f"-A INPUT {jump}") == 1
        assert len(_iptables_rules(chain)) == 4
        yield rules
    finally:
        await rules.remove()
    assert not [r for r in _iptables_rules("INPUT") if rules.chain in r], "removed again"
    assert not [r for r in _iptables_rules("FORWARD") if rules.chain in r], "removed again"


@pytest.fixture
async def services_net(runtime: DockerRuntime, dnames: DockerNames) -> NetworkInfo:
    for _ in range(5):
        subnet = f"10.{216 + uuid.uuid4().int % 4}.{uuid.uuid4().int % 256}.0/24"
        try:
            return await runtime.ensure_services_network(dnames("svc"), subnet)
        except Exception as e:  # a subnet in use by a concurrent test: pick another
            last = e
    raise last


@pytest.fixture
async def started(
    runtime: DockerRuntime, dnames: DockerNames, probe_image: str
) -> AsyncIterator[NetworkInfo]:
    """App `a` (serving on 8080) running on its own network."""
    net = await runtime.ensure_network(dnames("net-a"), dnames.labels)
    vol = dnames("data-a")
    await runtime.ensure_volume(vol, dnames.labels)
    await runtime.create_container(app_spec(dnames, "a", net.name, http_port=8080, data_volume=vol))
    await runtime.start(dnames("a"))
    yield net


async def test_container_is_confined(
    started: NetworkInfo, dnames: DockerNames, docker_client: docker.DockerClient
) -> None:
    a = dnames("a")
    code, out = await docker_exec(docker_client, a, ["/bin/sh", "-c", "echo x > /x"])
    assert code != 0 and "Read-only file system" in out
    code, _ = await docker_exec(docker_client, a, ["/bin/sh", "-c", "echo x > /bin/probe"])
    assert code != 0
    ok = (
        "echo ok > /tmp/t && cat /tmp/t && echo > /run/t && echo d > /app/data/f && cat /app/data/f"
    )
    assert await docker_exec(docker_client, a, ["/bin/sh", "-c", ok]) == (0, "ok\nd\n")
    assert await docker_exec(docker_client, a, ["/bin/id", "-u"]) == (0, "1000\n")
    for proc in ("1", "self"):
        status = await docker_read(docker_client, a, f"/proc/{proc}/status")
        caps = dict(line.split(":\t", 1) for line in status.splitlines() if line.startswith("Cap"))
        assert caps["CapEff"] == "0000000000000000", status
        assert caps["CapBnd"] == "0000000000000000"
        assert "NoNewPrivs:\t1" in status
    code, _ = await docker_exec(
        docker_client, a, ["/bin/sh", "-c", "echo x > /proc/sys/kernel/ns_last_pid"]
    )
    assert code != 0

    hc = docker_client.api.inspect_container(a)["HostConfig"]
    assert hc["ReadonlyRootfs"] is True and hc["CapDrop"] == ["ALL"] and not hc["CapAdd"]
    assert hc["SecurityOpt"] == ["no-new-privileges:true"] and hc["Privileged"] is False
    assert hc["Memory"] == hc["MemorySwap"] == 64 << 20 and hc["PidsLimit"] == 256
    assert hc["RestartPolicy"]["Name"] == "unless-stopped"
    assert hc["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "10m", "max-file": "3"}}
    assert set(hc["Tmpfs"]) == {"/tmp", "/run"} and hc["NetworkMode"] == started.name


async def test_metadata_and_host_services_unreachable(
    egress: EgressRules,
    started: NetworkInfo,
    services_net: NetworkInfo,
    dnames: DockerNames,
    docker_client: docker.DockerClient,
    pg_server: PostgresServer,
    nats_server: NatsServer,
) -> None:
    rules = egress
    tag = uuid.uuid4().hex[:8]
    ns, veth = f"hpns{tag}", f"hpv{tag}"
    listeners: list[Listener] = []
    ns_proc: asyncio.subprocess.Process | None = None
    try:
        # 169.254.170.2 one hop away, in a namespace behind a veth (the FORWARD path), and
        # 169.254.169.254 on the host itself (the INPUT path), on the veth's host end.
        # (No dummy interfaces here: this kernel has no dummy driver.)
        _ip("netns", "add", ns)
        _ip("link", "add", f"{veth}a", "type", "veth", "peer", "name", f"{veth}b")
        _ip("link", "set", f"{veth}b", "netns", ns)
        _ip("addr", "add", "169.254.170.1/30", "dev", f"{veth}a")
        _ip("addr", "add", "169.254.169.254/32", "dev", f"{veth}a")
        _ip("link", "set", f"{veth}a", "up")
        _ip("-n", ns, "addr", "add", "169.254.170.2/30", "dev", f"{veth}b")
        _ip("-n", ns, "link", "set", f"{veth}b", "up")
        _ip("-n", ns, "route", "add", "default", "via", "169.254.170.1")
        ns_port = 8770
        ns_proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", ns, "python3", "-c",
            "import socket\n"
            f"s = socket.create_server(('169.254.170.2', {ns_port}))\n"
            "print('ready', flush=True)\n"
            "while True: s.accept()[0].close()\n",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert ns_proc.stdout is not None
        assert await asyncio.wait_for(ns_proc.stdout.readline(), 10) == b"ready\n"

        metadata = await _listen("169.254.169.254")
        services = await _listen(services_net.gateway)
        listeners += [metadata, services]
        assert await connects("169.254.169.254", metadata.port)
        assert await connects("169.254.170.2", ns_port)
        assert await connects(services_net.gateway, services.port)

        before = (await rules.dropped()).get("169.254.0.0/16", 0)
        hosts = host_addresses(started.gateway, services_net.gateway)
        closed = [("169.254.169.254", metadata.port), ("169.254.170.2", ns_port)]
        closed += [(h, p) for h in hosts for p in (pg_server.port, nats_server.port)]
        reachable = [("127.0.0.1", 8080), (services_net.gateway, services.port)]
        # Probed while Docker's FORWARD -> DOCKER-USER jump is out, as it is for a moment every
        # time Docker creates a network (it deletes the jump and inserts it again on top).
        # Docker does that for other tests' networks meanwhile, so a delete may find the jump
        # gone already, and afterwards it is put back only if Docker has not done so itself.
        jump = "-A FORWARD -j DOCKER-USER\n"
        try:
            for _ in range(_iptables("-S", "FORWARD").count(jump)):
                _iptables("-D", "FORWARD", "-j", "DOCKER-USER", check=False)
            found = await probe_many(docker_client, dnames("a"), [*reachable, *closed])
        finally:
            if jump not in _iptables("-S", "FORWARD"):
                _iptables("-I", "FORWARD", "-j", "DOCKER-USER")

        assert {t: found[t] for t in reachable} == {t: "open" for t in reachable}
        assert {t: r for t, r in found.items() if t in closed and r == "open"} == {}
        assert found[("169.254.169.254", metadata.port)] == "timeout"
        assert found[("169.254.170.2", ns_port)] == "timeout"
        after = (await rules.dropped()).get("169.254.0.0/16", 0)
        assert after >= before + 2, "the egress rule is what dropped the metadata probes"
    finally:
        for listener in listeners:
            listener.server.close()
            await listener.server.wait_closed()
        if ns_proc is not None:
            ns_proc.kill()
            await ns_proc.wait()
        subprocess.run(["ip", "link", "del", f"{veth}a"], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


async def test_other_apps_unreachable(
    egress: EgressRules,
    started: NetworkInfo,
    runtime: DockerRuntime,
    dnames: DockerNames,
    docker_client: docker.DockerClient,
) -> None:
    # b's network as the apps service makes one from its subnet pool (a /28, b at its second
    # address: the edge's upstream); a's as Docker's pools made them before the pool
    async def free_subnet(refused: Sequence[str]) -> str:
        return free_range([*await runtime.subnets_in_use(), *refused], "10.216.0.0/16", PREFIX)

    net_b = await runtime.ensure_network(dnames("net-b"), dnames.labels, free_subnet)
    address = app_address(net_b.subnet)
    await runtime.create_container(
        app_spec(dnames, "b", net_b.name, http_port=8080, address=address)
    )
    await runtime.start(dnames("b"))
    b = await runtime.state(dnames("b"))
    assert b is not None and b.ip == address and b.http_host_port is not None
    port = b.http_host_port

    # b serves: on its own address from inside, and on 127.0.0.1:<port> from the host.
    assert await probe_many(docker_client, dnames("b"), [(b.ip, 8080)]) == {(b.ip, 8080): "open"}

    async def host_reaches_b() -> bool:
        return await connects("127.0.0.1", port)

    for _ in range(50):
        if await host_reaches_b():
            break
        await asyncio.sleep(0.1)
    assert await host_reaches_b()

    hosts = host_addresses(started.gateway, net_b.gateway)
    closed = [(b.ip, 8080), *[(h, port) for h in hosts]]
    before = (await egress.dropped()).get("0.0.0.0/0", 0)
    found = await probe_many(docker_client, dnames("a"), [("127.0.0.1", 8080), *closed])
    assert found[("127.0.0.1", 8080)] == "open"
    assert {t: r for t, r in found.items() if t in closed and r == "open"} == {}
    # Homeport's own rule dropped the probes to b (not only Docker's isolation chains).
    assert (await egress.dropped()).get("0.0.0.0/0", 0) >= before + 1


async def test_a_network_under_an_apps_name_but_not_made_so_is_never_used(
    runtime: DockerRuntime, dnames: DockerNames, docker_client: docker.DockerClient
) -> None:
    """Someone who makes `<prefix>-net-<id>` first (or an admin who changes it) gets no app
    onto a network whose containers reach each other: an empty one is made again, one with a
    container on it is refused and left as it is."""
    api = docker_client.api
    name, labels = dnames("net-x"), dnames.labels
    icc = "com.docker.network.bridge.enable_icc"

    def made(**kw: object) -> str:
        options = kw.pop("options", {})
        return str(api.create_network(name, driver="bridge", options=options, **kw)["Id"])

    for wrong in (
        {"labels": labels},  # Docker's default: icc on
        {"labels": {"homeport.test": "another"}, "options": {icc: "false"}},  # not this app's
        {"labels": labels, "options": {icc: "false"}, "internal": True},
    ):
        foreign = made(**wrong)
        info = await runtime.ensure_network(name, labels)
        now = api.inspect_network(name)
        assert now["Id"] != foreign, wrong
        assert now["Options"][icc] == "false" and now["Labels"] == labels
        assert not now["Internal"] and info.subnet == now["IPAM"]["Config"][0]["Subnet"]
        again = await runtime.ensure_network(name, labels)  # as made: used as it is
        assert again == info and api.inspect_network(name)["Id"] == now["Id"]
        api.remove_network(name)

    foreign = made(labels=labels)
    await runtime.create_container(app_spec(dnames, "x", name))
    await runtime.start(dnames("x"))
    with pytest.raises(RuntimeFailure) as refused:
        await runtime.ensure_network(name, labels)
    assert name in str(refused.value) and "icc on" in str(refused.value)
    assert "disconnect" in str(refused.value)
    assert api.inspect_network(name)["Id"] == foreign
