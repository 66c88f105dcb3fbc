"""A running addon Postgres for tests, and app networks to reach it from real containers.

The fixtures (tests/apps/conftest.py) are made from these pieces:

- `addon_docker`: a session-scoped docker client on conftest's `docker_host`
- `addon_server`: an `AddonServer` (session-scoped): an embedded Postgres separate from the
  platform's, listening on 127.0.0.1 and on the gateway address of a test-unique Docker
  network standing in for `homeport-services`, its pg_hba.conf managed by `AddonPostgres`
- `addon_postgres`: an `AddonPostgres` for that server (new instance per test)
- `app_network`: a factory for Docker networks with a free /24 (removed after the test)
- `psql_image`: a FROM-scratch image; `run_psql` runs the host's psql in a container of it
  (host /usr bind-mounted read-only) on an app network, as an app would connect
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import os
import pwd
import random
import secrets
import socket
import struct
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
from docker.models.networks import Network

from deploy.embedded import EmbeddedError, PostgresServer
from services.apps.addons.postgresql import AddonPostgres
from services.apps.container import NetworkInfo
from tests.support.servers import need_server

PSQL = "/usr/lib/postgresql/15/bin/psql"
# Test networks take /24s from here: clear of dockerd's default pool (10.220.0.0/14) and of
# 10.213.0.0/16, where the real homeport-services network lives by default.
_POOL = ipaddress.IPv4Network("10.192.0.0/12")
_AVOID = (ipaddress.IPv4Network("10.213.0.0/16"), ipaddress.IPv4Network("10.220.0.0/14"))


@dataclass(frozen=True)
class AddonServer:
    """The addon Postgres of a test session and the network apps reach it on."""

    server: PostgresServer
    admin_dsn: str = field(repr=False)
    host: str  # the services network's gateway: what apps are told to connect to
    port: int
    hba_file: Path
    services_net: NetworkInfo

    def manager(self) -> AddonPostgres:
        return AddonPostgres(self.admin_dsn, self.host, self.port, self.hba_file)


def _used_subnets(client: docker.DockerClient) -> list[ipaddress.IPv4Network]:
    used: list[ipaddress.IPv4Network] = []
    for net in client.networks.list():
        for cfg in (net.attrs.get("IPAM") or {}).get("Config") or []:
            try:
                n = ipaddress.ip_network(cfg.get("Subnet", ""), strict=False)
            except ValueError:
                continue
            if isinstance(n, ipaddress.IPv4Network):
                used.append(n)
    for line in Path("/proc/net/route").read_text().splitlines()[1:]:
        parts = line.split()
        dest, mask = (socket.inet_ntoa(struct.pack("<I", int(x, 16))) for x in (parts[1], parts[7]))
        if mask != "0.0.0.0":
            used.append(ipaddress.IPv4Network(f"{dest}/{mask}", strict=False))
    return used


def create_network(client: docker.DockerClient, name: str) -> tuple[Network, NetworkInfo]:
    """A bridge network with a /24 from the test pool that overlaps nothing on this host."""
    last: Exception | None = None
    for _ in range(30):
        used = _used_subnets(client)
        subnets = list(_POOL.subnets(new_prefix=24))
        subnet = random.choice(subnets)
        if any(subnet.overlaps(u) for u in (*used, *_AVOID)):
            continue
        gateway = str(subnet.network_address + 1)
        ipam = docker.types.IPAMConfig(
            pool_configs=[docker.types.IPAMPool(subnet=str(subnet), gateway=gateway)]
        )
        try:
            net = client.networks.create(name, driver="bridge", ipam=ipam)
        except docker.errors.APIError as e:  # raced with another worker for the subnet
            last = e
            continue
        return net, NetworkInfo(name, str(subnet), gateway)
    raise RuntimeError(f"no free /24 in {_POOL} for docker network {name}: {last}")


def _remove_network(net: Network) -> None:
    try:
        net.remove()
    except docker.errors.NotFound:
        pass


def session_client(docker_host: str) -> Iterator[docker.DockerClient]:
    """A session-wide client (conftest's `docker_client` is per test) on `docker_host`."""
    client = docker.DockerClient(base_url=docker_host, version="auto", timeout=60)
    try:
        client.ping()
    except (docker.errors.DockerException, OSError) as e:
        client.close()
        need_server("dockerd", e)
    yield client
    client.close()


def run_addon_server(tmp_root: Path, addon_docker: docker.DockerClient) -> Iterator[AddonServer]:
    """Body of a session fixture: the addon Postgres on a services network of its own."""
    uniq = secrets.token_hex(4)
    net, services = create_network(addon_docker, f"hpt-addonpg-{uniq}-services")
    datadir = tmp_root / f"addon-pg-{uniq}"
    password = secrets.token_urlsafe(24)
    hba = datadir / "pg_hba.conf"
    server = PostgresServer(
        datadir, password=password, listen=("127.0.0.1", services.gateway), hba_file=hba
    )
    try:
        owner = None
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            owner = (pw.pw_uid, pw.pw_gid)
        AddonPostgres(server.dsn, services.gateway, 0, hba).ensure_hba_file(owner)
        try:
            server.start()
        except (EmbeddedError, OSError) as e:
            need_server("addon postgres", e)
        yield AddonServer(server, server.dsn, services.gateway, server.port, hba, services)
    finally:
        server.stop()
        _remove_network(net)


def app_networks(addon_docker: docker.DockerClient) -> Iterator[Callable[[], NetworkInfo]]:
    """Call it to get a new app network; all are removed after the test."""
    made: list[Network] = []
    prefix = f"hpt-addonpg-{secrets.token_hex(4)}"

    def make() -> NetworkInfo:
        net, app = create_network(addon_docker, f"{prefix}-app{len(made)}")
        made.append(net)
        return app

    yield make
    for net in made:
        _remove_network(net)


def build_psql_image(addon_docker: docker.DockerClient) -> Iterator[str]:
    """An image with nothing in it: psql and its libraries come from the host's /usr."""
    if not Path(PSQL).is_file():
        need_server("psql", FileNotFoundError(PSQL))
    tag = f"hpt-addonpg-psql-{secrets.token_hex(4)}:1"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM scratch\nCOPY probe /.probe\n"), ("probe", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    image, _ = addon_docker.images.build(fileobj=buf, custom_context=True, tag=tag, rm=True)
    yield tag
    try:
        addon_docker.images.remove(image.id, force=True)
    except docker.errors.NotFound:
        pass


@dataclass(frozen=True)
class PsqlResult:
    code: int
    output: str


def _run_psql_sync(
    client: docker.DockerClient,
    image: str,
    network: str,
    conninfo: str,
    password: str,
    sql: str,
) -> PsqlResult:
    container = client.containers.run(
        image,
        [PSQL, "-X", "-w", "-v", "ON_ERROR_STOP=1", "-At", "-d", conninfo, "-c", sql],
        name=f"hpt-addonpg-psql-{secrets.token_hex(6)}",
        network=network,
        environment={"PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"},
        volumes={
            "/usr": {"bind": "/usr", "mode": "ro"},
            "/usr/lib": {"bind": "/lib", "mode": "ro"},
            "/usr/lib64": {"bind": "/lib64", "mode": "ro"},
        },
        read_only=True,
        cap_drop=["ALL"],
        detach=True,
    )
    try:
        status = container.wait(timeout=30)
        output = container.logs(stdout=True, stderr=True).decode(errors="replace")
        return PsqlResult(int(status["StatusCode"]), output)
    finally:
        container.remove(force=True)


async def run_psql(
    client: docker.DockerClient,
    image: str,
    network: NetworkInfo,
    *,
    host: str,
    port: int,
    user: str,
    database: str,
    password: str,
    sql: str = "SELECT 1",
) -> PsqlResult:
    """Run one psql command from a container on `network`, the way an app connects."""
    conninfo = f"host={host} port={port} user={user} dbname={database} sslmode=disable"
    return await asyncio.to_thread(
        _run_psql_sync, client, image, network.name, conninfo, password, sql
    )
