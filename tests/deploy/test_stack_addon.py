"""`homeport up` runs the apps' database server on demand (issue 15, idle memory): not at
start while no app asked for it, started and supervised once the apps service's flag appears."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deploy.embedded import EmbeddedError, check_binaries
from deploy.planning import ADDON_WANTED
from deploy.state import postgres_dir, process_alive, read_state
from tests.support.servers import need_server

REPO = Path(__file__).resolve().parents[2]


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_the_addon_server_starts_only_once_its_flag_appears(
    tmp_root: Path, docker_host: str
) -> None:
    try:
        check_binaries()
    except EmbeddedError as e:
        need_server("postgres and nats-server", e)
    data = tmp_root / f"stack-addon-{secrets.token_hex(4)}"
    log = tmp_root / f"{data.name}.log"
    argv = [sys.executable, "-m", "cli.main", "up", "--data-dir", str(data)]
    argv += ["--service", "apps=services.apps"]
    env = {**os.environ, "HP_DOCKER_HOST": docker_host}
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=out, env=env)
    pids: set[int] = set()

    def parts() -> dict[str, dict[str, Any]]:
        state = read_state(data) or {}
        found = {p["name"]: p for p in state.get("parts", [])}
        pids.update(p["pid"] for p in found.values() if p.get("pid"))
        return found

    def wait_for(what: str, cond: Callable[[], bool], deadline_s: float) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            assert proc.poll() is None, f"homeport up exited {what}:\n{log.read_text()[-4000:]}"
            if cond():
                return
            time.sleep(0.2)
        pytest.fail(f"not {what} within {deadline_s} s:\n{log.read_text()[-4000:]}")

    try:
        wait_for("running", lambda: (read_state(data) or {}).get("state") == "running", 120)
        p = parts()
        assert {"postgres", "nats", "apps"} <= set(p) and "addon-postgres" not in p
        pg = postgres_dir(data)
        flag = pg.with_name(pg.name + "-addons") / ADDON_WANTED  # as deploy/planning.py puts it
        wait_for("apps answering", lambda: _accepts(int(parts()["apps"]["port"])), 60)
        time.sleep(2)  # the stack polls once a second: nothing asked for it, nothing starts
        assert not flag.exists() and "addon-postgres" not in parts()

        flag.parent.mkdir(parents=True, exist_ok=True)
        flag.write_text("wanted\n")  # what the apps service does before its first database

        def addon_running() -> bool:
            a = parts().get("addon-postgres")
            return a is not None and a["state"] == "running" and _accepts(int(a["port"]))

        wait_for("addon-postgres started", addon_running, 60)
        addon = parts()["addon-postgres"]
        assert addon["kind"] == "addon_postgres" and process_alive(addon["pid"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()[-4000:]
        assert not process_alive(addon["pid"])  # stopped with the stack
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in pids:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
