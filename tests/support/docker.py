"""The dockerd the tests use: HP_TEST_DOCKER_HOST, the shared test one, or the system's."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from deploy.embedded import DockerDaemon, EmbeddedError, docker_answers
from tests.support.servers import need_server

__all__ = ["SYSTEM_DOCKER", "find_docker_host", "shared_dockerd"]

# One shared dockerd for all test runs (its image cache keeps later runs fast).
_DOCKER_RUN = Path("/run/homeport-test")
SYSTEM_DOCKER = Path("/var/run/docker.sock")


def shared_dockerd() -> DockerDaemon:
    return DockerDaemon(
        data_root=Path("/var/lib/homeport-test/docker"),
        exec_root=_DOCKER_RUN / "exec",
        pidfile=_DOCKER_RUN / "docker.pid",
        socket_path=_DOCKER_RUN / "docker.sock",
        address_pool="base=10.220.0.0/14,size=24",
        bridge="none",
        log_path=_DOCKER_RUN / "dockerd.log",
    )


def find_docker_host() -> str:
    """A `unix://` URL of a dockerd: HP_TEST_DOCKER_HOST, the shared test one if it runs, the
    system's if it answers, or the shared test one started now."""
    env = os.environ.get("HP_TEST_DOCKER_HOST")
    if env:
        return env
    daemon = shared_dockerd()
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
