"""Fixtures of the apps tests: Docker (the probe image, a runtime, names cleaned up after each
test) and the addon Postgres with app networks to reach it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import docker
import pytest

from services.apps.addons.postgresql import AddonPostgres
from services.apps.container import NetworkInfo
from services.apps.runtime import DockerRuntime
from tests.apps.addonkit import (
    AddonServer,
    app_networks,
    build_psql_image,
    run_addon_server,
    session_client,
)
from tests.apps.appskit import apps_env_for
from tests.apps.dockerkit import DockerNames, build_probe_image, docker_names

__all__ = ["apps_env_for"]  # the fixture, for every test here


@pytest.fixture(scope="session")
def probe_image(docker_host: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tag of the probe image (built once; both xdist workers wait on one lock)."""
    return build_probe_image(docker_host, tmp_path_factory)


@pytest.fixture
async def runtime(docker_host: str) -> AsyncIterator[DockerRuntime]:
    async with DockerRuntime(docker_host) as rt:
        yield rt


@pytest.fixture
def dnames(docker_client: docker.DockerClient) -> Iterator[DockerNames]:
    """A unique prefix for this test's Docker objects; all are removed after the test."""
    yield from docker_names(docker_client)


@pytest.fixture(scope="session")
def addon_docker(docker_host: str) -> Iterator[docker.DockerClient]:
    """A session-wide client (conftest's `docker_client` is per test) on `docker_host`."""
    yield from session_client(docker_host)


@pytest.fixture(scope="session")
def addon_server(tmp_root: Path, addon_docker: docker.DockerClient) -> Iterator[AddonServer]:
    yield from run_addon_server(tmp_root, addon_docker)


@pytest.fixture
async def addon_postgres(addon_server: AddonServer) -> AsyncIterator[AddonPostgres]:
    yield addon_server.manager()


@pytest.fixture
def app_network(addon_docker: docker.DockerClient) -> Iterator[Callable[[], NetworkInfo]]:
    """Call it to get a new app network; all are removed after the test."""
    yield from app_networks(addon_docker)


@pytest.fixture(scope="session")
def psql_image(addon_docker: docker.DockerClient) -> Iterator[str]:
    """An image with nothing in it: psql and its libraries come from the host's /usr."""
    yield from build_psql_image(addon_docker)
