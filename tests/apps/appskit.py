"""The real apps service against the real dockerd, in this process or as a child process."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import docker
import nats
import pytest

from libs.events.bus import BusClient
from libs.events.context import Context
from libs.events.inline import inline_lock_key
from libs.events.store import PostgresEventStore
from services.apps.config import BUNDLED_CATALOG
from services.apps.projections import AppsProjection
from tests.support.bus import ActorBus
from tests.support.mail import mail_beside
from tests.support.serving import serving

STATIC = "org.homeport.static"
ROOT = Path(__file__).resolve().parents[2]
ADMIN_CTX = Context("system", "apps-test", None, None)


_READ_MODEL = {
    "apps": "SELECT * FROM apps.apps ORDER BY app_id",
    "locations": "SELECT * FROM apps.locations ORDER BY domain, location",
    "ports": "SELECT * FROM apps.ports ORDER BY protocol, host_port",
    "snapshots": "SELECT * FROM apps.snapshots ORDER BY snapshot_id",
}


async def assert_read_model_replays(store: PostgresEventStore, batch: int = 7) -> None:
    """The apps read model as the live appends wrote it (most as one statement, from the
    state the writer held) equals the one a replay of the log writes (`apply`, in batches of
    several streams). Under the projection's lock (live writers wait), in a transaction rolled
    back: nothing is changed."""
    projection = AppsProjection()
    async with store.pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", inline_lock_key(AppsProjection))
            live = {k: [dict(r) for r in await conn.fetch(q)] for k, q in _READ_MODEL.items()}
            await projection.reset(conn)
            events = await store.read_all(0, 100_000, conn=conn)
            events = [e for e in events if projection.wants(e)]
            for i in range(0, len(events), batch):
                await projection.apply(conn, events[i : i + batch])
            again = {k: [dict(r) for r in await conn.fetch(q)] for k, q in _READ_MODEL.items()}
        finally:
            await tx.rollback()
    assert live["apps"], "no app was recorded: the comparison would see nothing"
    for table, rows in live.items():
        assert rows == again[table], (table, rows, again[table])


def static_catalog(dest: Path) -> Path:
    """A catalog of the static app in several versions (copies of the bundled one).

    1.0.0 as bundled; 1.1.0 also has the sendmail addon; 1.2.0 needs approval to update to;
    2.0.0 never answers its health check (an update to it must roll back)."""
    src = BUNDLED_CATALOG / STATIC / "1.0.0"
    for version, change in (
        ("1.0.0", {}),
        ("1.0.1", {"changelog": "* built anew by every test run"}),
        ("1.1.0", {"changelog": "* sends mail", "addons": {"localstorage": {}, "sendmail": {}}}),
        ("1.2.0", {"updateNeedsApproval": True, "changelog": "* needs approval"}),
        ("2.0.0", {"healthCheckPath": "/never-there", "changelog": "* broken on purpose"}),
    ):
        d = dest / STATIC / version
        shutil.copytree(src, d)
        manifest = json.loads((d / "manifest.json").read_text())
        manifest.update({"version": version, **change})
        (d / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if version == "1.0.1":  # a context no earlier run built: its image is built again
            (d / "welcome" / "build-id.txt").write_text(uuid.uuid4().hex)
        page = d / "welcome" / "index.html"
        page.write_text(page.read_text().replace("</body>", f"<p>version {version}</p></body>"))
    return dest


@dataclass
class Apps:
    bus: BusClient
    store: PostgresEventStore
    prefix: str
    docker: docker.DockerClient
    port: int = 0  # the service's HTTP port (health, metrics), when it runs in this process

    async def cmd(self, verb: str, payload: dict[str, Any]) -> Any:
        return await self.bus.command("apps", verb, payload, ctx=ADMIN_CTX, timeout=60)

    async def ask(self, name: str, payload: dict[str, Any], actor: str = "system") -> Any:
        ctx = Context(actor, "apps-test", None, None)
        return await self.bus.query("apps", name, payload, ctx=ctx, timeout=30)

    async def app(self, app_id: str) -> dict[str, Any]:
        return dict(await self.ask("app", {"app_id": app_id}))

    async def task(self, task_id: str) -> list[str]:
        """The types of the task's events so far."""
        return [e.type for e in await self.store.read_stream(f"task-{task_id}")]

    async def wait_task(self, task_id: str, timeout: float = 120) -> dict[str, Any]:
        """Until the task ends; returns its last event's data and type."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            events = await self.store.read_stream(f"task-{task_id}")
            if events and events[-1].type in ("TaskSucceeded", "TaskFailed"):
                return {"type": events[-1].type, **events[-1].data}
            await asyncio.sleep(0.05)  # a look is one indexed read; many tasks end within 1 s
        raise AssertionError(f"task {task_id} did not end within {timeout} s: {events[-1:]}")

    async def events(self, app_id: str) -> list[str]:
        return [e.type for e in await self.store.read_stream(f"app-{app_id}")]

    def container(self, app_id: str) -> Any:
        return self.docker.containers.get(f"{self.prefix}-app-{app_id}")

    async def page(self, app_id: str, path: str = "/") -> tuple[int, str]:
        info = await self.app(app_id)
        port = info["container"]["port"]
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as r:
            return r.status, await r.text()


def apps_env(
    *,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    docker_host: str,
    prefix: str,
    catalog: Path,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    return {
        "HP_DATABASE_URL": dsn,
        "HP_NATS_URL": nats_url,
        "HP_KEYRING": str(tmp_path / "keyring.json"),
        "HP_DATA_DIR": str(tmp_path),
        "HP_DRAIN_SECONDS": "1",
        "HP_HTTP_PORT": "0",
        "HP_DOCKER_HOST": docker_host,
        "HP_APPS_DIR": str(tmp_path / "apps"),
        "HP_BASE_CACHE": "/var/cache/homeport-test",
        "HP_CATALOG_SOURCE": str(catalog),
        "HP_NAME_PREFIX": prefix,
        "HP_SERVICES_NETWORK": "homeport-services",
        "HP_HEALTH_INTERVAL": "1",
        "HP_UNHEALTHY_AFTER": "3",
        "HP_STATS_INTERVAL": "1",
        "HP_READY_TIMEOUT": "30",
        # no app updated because the wall clock is in the nightly window (test_autoupdate.py)
        "HP_AUTO_UPDATE_LOOP": "0",
        **(extra or {}),
    }


EnvFor = Callable[..., dict[str, str]]


@pytest.fixture
def apps_env_for(dsn: str, nats_url: str, tmp_path: Path, docker_host: str, uniq: str) -> EnvFor:
    """`apps_env` on this test's database, bus, Docker and tmp_path, its names prefixed by
    `letter` and the test's unique part: `apps_env_for(catalog, letter=..., extra=...)`.
    A fixture (tests/apps/conftest.py has it; a module elsewhere assigns it to use it)."""

    def make(
        catalog: Path, *, letter: str = "t", extra: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        return apps_env(
            dsn=dsn,
            nats_url=nats_url,
            tmp_path=tmp_path,
            docker_host=docker_host,
            prefix=f"{letter}{uniq[:8]}",
            catalog=catalog,
            extra=extra,
        )

    return make


def remove_docker_objects(client: docker.DockerClient, prefix: str) -> None:
    """Everything a test's apps left in Docker (by the prefix label and names)."""
    for c in client.containers.list(all=True, filters={"label": f"homeport.prefix={prefix}"}):
        with suppress(docker.errors.APIError):
            c.remove(force=True)
    for n in client.networks.list():
        if n.name.startswith(f"{prefix}-net-"):
            with suppress(docker.errors.APIError):
                n.remove()
    for v in client.volumes.list():
        if v.name.startswith(f"{prefix}-data-"):
            with suppress(docker.errors.APIError):
                v.remove(force=True)


@asynccontextmanager
async def running_apps(
    monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str], *, mail: bool = True
) -> AsyncIterator[Apps]:
    """The apps service (services.apps.__main__.build) in this process, ready (with a mail
    service beside it unless the test runs its own: `mail=False`)."""
    from services.apps.__main__ import build

    async with serving(monkeypatch, build, env, "apps") as svc, connected(env, mail) as apps:
        apps.port = svc.port
        yield apps


@asynccontextmanager
async def connected(env: Mapping[str, str], mail: bool = True) -> AsyncIterator[Apps]:
    """A bus client, the store and a Docker client for tests of a running apps service."""
    nc = await nats.connect(env["HP_NATS_URL"])
    store = await PostgresEventStore.open(env["HP_DATABASE_URL"], max_size=2)
    client = docker.DockerClient(base_url=env["HP_DOCKER_HOST"])
    try:
        apps = Apps(ActorBus(nc, default_timeout=30), store, env["HP_NAME_PREFIX"], client)
        if not mail:
            yield apps
        else:  # the sendmail addon's accounts come from the mail service (servers off here)
            async with mail_beside(env, Path(env["HP_DATA_DIR"]) / "mail-service"):
                yield apps
    finally:
        await asyncio.to_thread(remove_docker_objects, client, env["HP_NAME_PREFIX"])
        client.close()
        await store.close()
        await nc.close()


class AppsProcess:
    """`python -m services.apps` as a child process, for tests that kill it."""

    def __init__(self, env: Mapping[str, str], log: Path) -> None:
        self.env = {**os.environ, **env}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, **extra: str) -> None:
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.apps"],
            env={**self.env, **extra},
            cwd=ROOT,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
        out.close()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def tail(self, n: int = 30) -> str:
        with suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""
