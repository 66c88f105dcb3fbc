"""Fixtures every folder may use: real servers (Postgres, NATS with JetStream, dockerd, PowerDNS,
Pebble), one per xdist worker, with a fresh database / zone / name per test, and the checks that
no test leaves a process or a task behind. The servers' code is in tests/support/."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import docker
import pytest

from deploy.embedded import EmbeddedError, NatsServer, PostgresServer
from libs.events.store import PostgresEventStore
from tests.support.docker import find_docker_host
from tests.support.pdns import PdnsServer, PdnsZone, fresh_zone, run_pdns
from tests.support.pebble import ChallDns, PebbleServer, run_challdns, run_pebble
from tests.support.servers import remove_tree, started


def _own_ports() -> None:
    """Each xdist worker picks free ports from its own slice of deploy/embedded.py's range (its
    servers and their children too): a port one worker picked is free until its server binds
    it, and another worker walking the same range could take it meanwhile (Postfix once failed
    "Address already in use" so)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit()):
        return
    low, high = 20000, 32767
    size = (high - low + 1) // max(1, int(count))
    start = low + int(worker[2:]) * size
    os.environ["HP_FREE_PORTS"] = f"{start}-{start + size - 1}"


_own_ports()
# Passwords are hashed at SECURITY.md's bar (19 MiB), not production's 64 MiB: the same
# algorithm, a third of the CPU (about 0.05 s a hash here, and the suite hashes thousands).
# tests/identity/test_passwords.py tests the production parameters and this setting itself;
# the systemd box's install runs with the production default.
os.environ.setdefault("HP_PASSWORD_MEMORY_KIB", "19456")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `slow` first (a stable sort: the rest keep their order), so that with xdist
    the long ones do not start last and leave the other workers idle at the end of the run."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """`--dist loadgroup` must really keep an `xdist_group` on one worker: the isolation tests
    and the two systemd boxes rely on it. xdist does it by appending `@<group>` to the node id,
    which pytest 9.2 silently ignores (its node ids moved), so the groups ran in parallel and
    raced; this stops the run instead if that ever happens again."""
    if not getattr(session.config.option, "loadgroup", False):  # set in an xdist worker only
        return
    lost = [
        item.nodeid
        for item in session.items
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid
    ]
    if lost:
        raise pytest.UsageError(
            f"pytest-xdist could not group {len(lost)} tests (e.g. {lost[0]}): this pytest "
            "and pytest-xdist do not work together; pin a pytest that does in constraints.txt"
        )


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="hp-test-"))
    d.chmod(0o755)  # the postgres user must be able to reach its data dir when we are root
    yield d
    remove_tree(d)  # after the servers in it stopped (their fixtures depend on it)


@pytest.fixture(scope="session")
def pg_server(tmp_root: Path) -> Iterator[PostgresServer]:
    yield from started(PostgresServer(tmp_root / "pg", fsync=True), "postgres", EmbeddedError)


@pytest.fixture(scope="session")
def nats_server(tmp_root: Path) -> Iterator[NatsServer]:
    yield from started(NatsServer(tmp_root / "nats", harness=True), "nats-server", EmbeddedError)


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
async def store(dsn: str) -> AsyncIterator[PostgresEventStore]:
    """An event store on this test's database (a directory or module needing another pool
    size, or tables of its own, defines its own `store`)."""
    s = await PostgresEventStore.open(dsn, max_size=4)
    yield s
    await s.close()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.harness_url


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


@pytest.fixture(scope="session")
def docker_host() -> str:
    """A `unix://` URL of a dockerd (tests/support/docker.py says which)."""
    return find_docker_host()


@pytest.fixture
def docker_client(docker_host: str) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=docker_host, version="auto")
    yield client
    client.close()


@pytest.fixture(scope="session")
def pdns() -> Iterator[PdnsServer]:
    """One PowerDNS per xdist worker."""
    yield from run_pdns()


@pytest.fixture
def pdns_zone(pdns: PdnsServer) -> Iterator[PdnsZone]:
    """A fresh zone for this test, removed at the end."""
    yield from fresh_zone(pdns)


@pytest.fixture(scope="session")
def certs_pebble_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="hp-certs-pebble-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def certs_challdns(certs_pebble_dir: Path) -> Iterator[ChallDns]:
    yield from run_challdns(certs_pebble_dir)


@pytest.fixture(scope="session")
def certs_pebble(certs_pebble_dir: Path, certs_challdns: ChallDns) -> Iterator[PebbleServer]:
    """Pebble without validation sleeps, default nonce rejection (5 %), and never reusing an
    authorization (so every order answers its challenges, and a renewal can fail)."""
    env = {"PEBBLE_AUTHZREUSE": "0"}
    yield from run_pebble(certs_pebble_dir / "pebble", certs_challdns, nosleep=True, env=env)
