"""Fixtures that start real servers (Postgres, NATS with JetStream) and check for leaks."""

from __future__ import annotations

import asyncio
import fcntl
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import docker
import pytest

from deploy.embedded import (
    DockerDaemon,
    EmbeddedError,
    NatsServer,
    PostgresServer,
    docker_answers,
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_server(what: str, err: Exception) -> None:
    """Under CI a missing server fails the run; elsewhere the skip says why."""
    msg = f"{what} unavailable: {err}"
    if IN_CI:
        pytest.fail(msg + " (CI=true: servers are required)", pytrace=False)
    print(f"SKIP: {msg}")
    pytest.skip(msg)


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="hp-test-"))
    d.chmod(0o755)  # the postgres user must be able to reach its data dir when we are root
    yield d


@pytest.fixture(scope="session")
def pg_server(tmp_root: Path) -> Iterator[PostgresServer]:
    server = PostgresServer(tmp_root / "pg", fsync=True)
    try:
        server.start()
    except (EmbeddedError, OSError) as e:
        need_server("postgres", e)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def nats_server(tmp_root: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_root / "nats")
    try:
        server.start()
    except (EmbeddedError, OSError) as e:
        need_server("nats-server", e)
    yield server
    server.stop()


@pytest.fixture
async def dsn(pg_server: PostgresServer) -> AsyncIterator[str]:
    """A fresh database for this test; fails the test if it leaves a connection open."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield pg_server.dsn_for(name)
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        left = await admin.fetch(
            "SELECT pid, application_name, state, query FROM pg_stat_activity WHERE datname = $1"
            " AND backend_type = 'client backend'",  # not autovacuum workers
            name,
        )
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    assert not left, f"test left {len(left)} Postgres connection(s) open: {[dict(r) for r in left]}"


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
def uniq() -> str:
    """A short unique suffix for stream, consumer and subject names of one test."""
    return uuid.uuid4().hex[:10]


def _children() -> set[int]:
    pid = os.getpid()
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out.update(int(x) for x in (task / "children").read_text().split())
        except OSError:
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    before = _children()
    yield
    left = [p for p in _children() - before if _alive(p)]
    assert not left, f"test left child process(es) running: {left}"


@pytest.fixture(autouse=True)
async def _no_leftover_tasks() -> AsyncIterator[None]:
    yield
    me = asyncio.current_task()
    await asyncio.sleep(0)
    left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    assert not left, f"test left asyncio task(s) running: {left}"


# Docker: one shared dockerd for all test runs (its image cache keeps later runs fast).

_DOCKER_RUN = Path("/run/homeport-test")


def _test_dockerd() -> DockerDaemon:
    return DockerDaemon(
        data_root=Path("/var/lib/homeport-test/docker"),
        exec_root=_DOCKER_RUN / "exec",
        pidfile=_DOCKER_RUN / "docker.pid",
        socket_path=_DOCKER_RUN / "docker.sock",
        address_pool="base=10.220.0.0/14,size=24",
        bridge="none",
        log_path=_DOCKER_RUN / "dockerd.log",
    )


SYSTEM_DOCKER = Path("/var/run/docker.sock")


@pytest.fixture(scope="session")
def docker_host() -> str:
    """A `unix://` URL of a dockerd: HP_TEST_DOCKER_HOST, the shared test one if it runs, the
    system's if it answers, or the shared test one started now."""
    env = os.environ.get("HP_TEST_DOCKER_HOST")
    if env:
        return env
    daemon = _test_dockerd()
    if daemon.answers():
        return daemon.url
    if docker_answers(SYSTEM_DOCKER):
        # a second dockerd beside the system's would fight it over iptables: share it
        return f"unix://{SYSTEM_DOCKER}"
    try:
        _DOCKER_RUN.mkdir(parents=True, exist_ok=True)
        with open(_DOCKER_RUN / "start.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # both xdist workers get here: one starts it
            if not daemon.answers():
                daemon.start(deadline_s=60.0, detach=True)  # outlives this run on purpose
    except (EmbeddedError, OSError) as e:
        need_server("dockerd", e)
    return daemon.url


@pytest.fixture
def docker_client(docker_host: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=docker_host, version="auto")
    yield client
    client.close()
