"""`homeport up` / `status` against real Postgres and NATS, supervising sample services."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cli.main import main as homeport_main
from deploy.embedded import EmbeddedError, check_binaries
from deploy.errors import StackError
from deploy.planning import Module, discover_modules, module_exists, parse_module
from deploy.state import process_alive, read_state
from deploy.supervision import Backoff
from tests.support.procs import parent_pid
from tests.support.servers import need_server

REPO = Path(__file__).resolve().parents[2]
SAMPLE = "tests.deploy.sample_service"
CRASHING = "tests.deploy.crashing_service"


# -- without servers ----------------------------------------------------------------------


def test_backoff_doubles_to_30s_and_starts_over_after_a_long_run() -> None:
    b = Backoff()
    assert [b.delay(0.1) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert b.delay(59.9) == 30
    assert b.delay(60.0) == 0.5
    assert b.delay(1.0) == 1


def test_discovery_finds_services_and_skips_modules_that_do_not_exist() -> None:
    assert module_exists("libs.events.store")
    assert module_exists(SAMPLE)
    assert not module_exists("libs.events.no_such_relay")
    assert not module_exists("no_such_package.thing")
    found = discover_modules(relay_module="libs.events.no_such_relay")
    assert "relay" not in {m.name for m in found}
    expected = {
        Module(d.name, f"services.{d.name}")
        for d in (REPO / "services").iterdir()
        if (d / "__main__.py").is_file()
    }
    assert set(found) == expected
    if module_exists("libs.events.relay"):
        assert Module("relay", "libs.events.relay") in discover_modules()


def test_parse_module() -> None:
    assert parse_module("web=services.gateway") == Module("web", "services.gateway")
    assert parse_module("services.gateway") == Module("gateway", "services.gateway")
    with pytest.raises(StackError, match="bad module"):
        parse_module("x=not a module")


def test_status_and_audit_say_when_no_stack_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert homeport_main(["status", "--data-dir", str(tmp_path)]) == 3
    assert "not running" in capsys.readouterr().out
    assert homeport_main(["status", "--json", "--data-dir", str(tmp_path)]) == 3
    assert json.loads(capsys.readouterr().out)["running"] is False
    assert homeport_main(["audit", "verify", "--data-dir", str(tmp_path)]) == 3
    assert "homeport up" in capsys.readouterr().err


# -- the real stack -----------------------------------------------------------------------


def _homeport(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class Running:
    """A `homeport up` subprocess and everything needed to inspect and clean it up."""

    def __init__(self, data: Path, proc: subprocess.Popen[bytes], logs: Path) -> None:
        self.data, self.proc, self.logs = data, proc, logs
        self.seen_pids: dict[int, str] = {}  # every part pid ever seen -> part name

    def state(self) -> dict[str, Any]:
        state = read_state(self.data)
        assert state is not None, "no stack.json"
        for p in state["parts"]:
            if p["pid"] is not None:
                self.seen_pids[p["pid"]] = p["name"]
        return state

    def parts(self) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in self.state()["parts"]}

    def output(self) -> str:
        out = (self.logs / "up.out").read_text()
        err = (self.logs / "up.err").read_text()
        return f"--- stdout\n{out}\n--- stderr\n{err[-6000:]}"

    def wait_for(self, what: str, cond: Callable[[], bool], deadline_s: float) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                pytest.fail(f"homeport up exited ({self.proc.returncode}) {what}\n{self.output()}")
            if (self.data / "stack.json").exists() and cond():
                return
            time.sleep(0.1)
        pytest.fail(f"not {what} within {deadline_s}s\n{self.output()}")

    def cleanup(self) -> None:
        """Kill whatever is left, even after a failed test (Postgres is a grandchild)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        state = read_state(self.data) or {}
        pids = dict(self.seen_pids)
        pids.update({p["pid"]: p["name"] for p in state.get("parts", []) if p.get("pid")})
        for pid, name in pids.items():
            if process_alive(pid):
                # SIGQUIT is Postgres' immediate shutdown: it takes its backends with it.
                os.kill(pid, signal.SIGQUIT if name == "postgres" else signal.SIGKILL)
        end = time.monotonic() + 10
        while time.monotonic() < end and any(process_alive(p) for p in pids):
            time.sleep(0.1)
        for pid in pids:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def start_stack(tmp_root: Path, docker_host: str) -> Iterator[Callable[..., Running]]:
    try:
        check_binaries()
    except EmbeddedError as e:
        need_server("postgres and nats-server", e)
    started: list[Running] = []

    def start(*services: str, data: Path | None = None) -> Running:
        data = data or tmp_root / f"stack-{uuid.uuid4().hex[:8]}"
        logs = tmp_root / f"{data.name}-logs-{uuid.uuid4().hex[:4]}"
        logs.mkdir()
        argv = [sys.executable, "-m", "cli.main", "up", "--data-dir", str(data)]
        for s in services:
            argv += ["--service", s]
        with open(logs / "up.out", "wb") as out, open(logs / "up.err", "wb") as err:
            # the test dockerd: a second dockerd of the stack's own would fight over iptables
            env = {**os.environ, "HP_DOCKER_HOST": docker_host}
            proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=err, env=env)
        run = Running(data, proc, logs)
        started.append(run)
        return run

    try:
        yield start
    finally:
        for run in started:
            run.cleanup()


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as r:
        return int(r.status), bytes(r.read())


@pytest.mark.slow
def test_up_status_restart_refuse_and_stop(start_stack: Callable[..., Running]) -> None:
    stack = start_stack(f"gateway={SAMPLE}", f"worker={SAMPLE}")
    stack.wait_for(
        "up and healthy",
        lambda: "Dashboard:" in (stack.logs / "up.out").read_text(),
        deadline_s=90,
    )
    state = stack.state()
    parts = stack.parts()
    assert state["pid"] == stack.proc.pid
    assert list(parts) == ["postgres", "nats", "gateway", "worker"]
    assert all(p["state"] == "running" and p["restarts"] == 0 for p in parts.values())
    assert all(process_alive(p["pid"], p["proc_start"]) for p in parts.values())
    gateway_url = f"http://127.0.0.1:{parts['gateway']['port']}/"
    assert state["dashboard_url"] == gateway_url
    banner = (stack.logs / "up.out").read_text()
    assert f"Dashboard: {gateway_url}" in banner and "homeport status" in banner

    # Every service gets the stack's settings through HP_* variables.
    status, body = _get(parts["worker"]["health"])
    env = json.loads(body)["env"]
    assert status == 200
    assert env["HP_DATABASE_URL"] == state["database_url"]
    assert env["HP_DATABASE_URL"].endswith("/homeport")
    assert env["HP_NATS_URL"] == state["nats_url"]
    assert env["HP_HTTP_HOST"] == "127.0.0.1"
    assert env["HP_HTTP_PORT"] == str(parts["worker"]["port"])
    assert env["HP_KEYRING"] is None  # a service that seals nothing gets no keyring
    assert env["HP_DATA_DIR"] == str(stack.data)
    assert _get(gateway_url) == (200, b"sample dashboard\n")

    r = _homeport("status", "--data-dir", str(stack.data))
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("postgres", "nats", "gateway", "worker"):
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith(name + " "))
        assert " ok (" in line, r.stdout
    r = _homeport("status", "--json", "--data-dir", str(stack.data))
    report = json.loads(r.stdout)
    assert r.returncode == 0 and report["running"] and report["healthy"]
    assert {p["name"]: p["healthy"] for p in report["parts"]} == {
        "postgres": True,
        "nats": True,
        "gateway": True,
        "worker": True,
    }

    r = _homeport("audit", "verify", "--data-dir", str(stack.data))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "event chain intact" in r.stdout

    # A killed service comes back: new pid, one restart, healthy again.
    old = parts["worker"]["pid"]
    os.kill(old, signal.SIGKILL)
    t0 = time.monotonic()

    def restarted() -> bool:
        w = stack.parts()["worker"]
        return w["pid"] not in (None, old) and w["restarts"] == 1 and w["state"] == "running"

    stack.wait_for("restarting the killed worker", restarted, deadline_s=10)
    assert time.monotonic() - t0 < 5
    worker = stack.parts()["worker"]
    assert worker["last_exit"] == -signal.SIGKILL
    assert json.loads(_get(worker["health"])[1])["pid"] == worker["pid"]
    r = _homeport("status", "--data-dir", str(stack.data))
    assert r.returncode == 0, r.stdout + r.stderr
    assert stack.parts()["gateway"]["restarts"] == 0

    # A second `up` on the same data directory is refused and changes nothing.
    r = _homeport("up", "--data-dir", str(stack.data), "--service", f"worker={SAMPLE}")
    assert r.returncode == 1
    assert f"already running in {stack.data} (pid {stack.proc.pid})" in r.stderr
    assert stack.state()["pid"] == stack.proc.pid

    # SIGTERM stops everything, services first, and exits 0.
    pids = dict(stack.seen_pids)
    assert set(pids.values()) == {"postgres", "nats", "gateway", "worker"}
    t0 = time.monotonic()
    stack.proc.send_signal(signal.SIGTERM)
    assert stack.proc.wait(timeout=20) == 0, stack.output()
    assert time.monotonic() - t0 < 20
    alive = {name: pid for pid, name in pids.items() if process_alive(pid)}
    assert not alive, f"left running after the stack stopped: {alive}"
    final = stack.state()
    assert final["pid"] is None and final["state"] == "stopped"
    assert all(p["pid"] is None and p["state"] == "stopped" for p in final["parts"])
    err = (stack.logs / "up.err").read_text()
    order = [
        json.loads(ln)["part"]
        for ln in err.splitlines()
        if ln.startswith("{") and json.loads(ln)["event"] == "stopping" and "part" in ln
    ]
    assert set(order[:2]) == {"gateway", "worker"} and order[2:] == ["nats", "postgres"]

    r = _homeport("status", "--data-dir", str(stack.data))
    assert r.returncode == 3, r.stdout + r.stderr
    assert "not running" in r.stdout
    assert final["forkserver"] is None and not process_alive(state["forkserver"]["pid"])


def test_a_killed_supervisor_ends_its_fork_server_and_the_next_up_stops_its_services(
    start_stack: Callable[..., Running],
) -> None:
    """`homeport up` killed (-9): its fork server ends with it (nothing holds it), the services
    it forked run on as orphans, and the next `up` on the data directory stops them first."""
    stack = start_stack(f"gateway={SAMPLE}", f"worker={SAMPLE}")
    up = lambda s=stack: "Dashboard:" in (s.logs / "up.out").read_text()  # noqa: E731
    stack.wait_for("up and healthy", up, deadline_s=90)
    state = stack.state()
    forkserver = state["forkserver"]["pid"]
    services = [p["pid"] for p in state["parts"] if p["kind"] == "service"]
    assert len(services) == 2 and all(parent_pid(pid) == forkserver for pid in services)
    stack.proc.kill()
    stack.proc.wait()
    end = time.monotonic() + 10
    while process_alive(forkserver) and time.monotonic() < end:
        time.sleep(0.1)
    assert not process_alive(forkserver)
    assert all(process_alive(pid) for pid in services)  # orphans, until the next start

    again = start_stack(f"gateway={SAMPLE}", f"worker={SAMPLE}", data=stack.data)
    again.wait_for("up again", lambda: up(again), deadline_s=90)
    assert not [pid for pid in services if process_alive(pid)]
    now = again.state()
    assert all(p["state"] == "running" and p["pid"] not in services for p in now["parts"])
    assert all(
        parent_pid(p["pid"]) == now["forkserver"]["pid"]
        for p in now["parts"]
        if p["kind"] == "service"
    )


def test_crashing_service_is_restarted_with_growing_backoff(
    start_stack: Callable[..., Running],
) -> None:
    stack = start_stack(f"good={SAMPLE}", f"broken={CRASHING}")
    stack.wait_for(
        "restarting the broken service twice",
        lambda: stack.parts()["broken"]["restarts"] >= 2 and stack.parts()["good"]["pid"],
        deadline_s=60,
    )
    broken = stack.parts()["broken"]
    assert broken["last_exit"] == 3
    assert "failing on purpose" in Path(broken["log"]).read_text()

    r = _homeport("status", "--json", "--data-dir", str(stack.data))
    assert r.returncode == 1, r.stdout + r.stderr
    health = {p["name"]: p["healthy"] for p in json.loads(r.stdout)["parts"]}
    assert health["broken"] is False and health["postgres"] and health["nats"]

    delays = [
        json.loads(ln)["restart_in_s"]
        for ln in (stack.logs / "up.err").read_text().splitlines()
        if '"exited unexpectedly' in ln and '"broken"' in ln
    ]
    assert delays[:2] == [0.5, 1.0], delays

    stack.proc.send_signal(signal.SIGINT)
    assert stack.proc.wait(timeout=20) == 0, stack.output()


def test_up_refuses_a_service_module_that_does_not_exist(
    start_stack: Callable[..., Running],
) -> None:
    stack = start_stack("ghost=tests.deploy.no_such_service")
    assert stack.proc.wait(timeout=30) == 1
    assert "tests.deploy.no_such_service (for ghost) not found" in stack.output()


@pytest.mark.slow
def test_the_real_platform_comes_up_answers_and_survives_kill_9(
    start_stack: Callable[..., Running],
) -> None:
    """`homeport up` with the real services: events flow Postgres -> relay -> gateway."""
    import asyncio

    from libs.events import context
    from libs.events.bus import BusClient
    from libs.events.envelope import NewEvent
    from libs.events.store import PostgresEventStore
    from libs.events.wiring import connect_nats
    from tests.support.bus import refused_connect
    from tests.support.waits import wait_until

    stack = start_stack()
    stack.wait_for(
        "up and healthy", lambda: "Dashboard:" in (stack.logs / "up.out").read_text(), 120
    )
    parts = stack.parts()
    assert {"postgres", "nats", "relay", "gateway", "identity"} <= set(parts)

    def ready(name: str) -> bool:
        try:
            return _get(parts[name]["health"].replace("/healthz", "/readyz"))[0] == 200
        except OSError:  # 503 (HTTPError is an OSError) while its projections catch up
            return False

    for name in ("relay", "gateway", "identity"):
        assert _get(parts[name]["health"])[0] == 200  # alive at once
        stack.wait_for(f"{name} ready", lambda n=name: ready(n), deadline_s=60)  # type: ignore[misc]
    state = stack.state()
    # every service is forked from the fork server (deploy/forkserver.py), which holds none of
    # their settings: no database password, no keyring
    forkserver = state["forkserver"]["pid"]
    services = [p for p in state["parts"] if p["kind"] == "service"]
    assert services and all(parent_pid(p["pid"]) == forkserver for p in services), services
    held = Path(f"/proc/{forkserver}/environ").read_bytes()
    assert b"HP_DATABASE_URL" not in held and b"HP_KEYRING" not in held

    async def scenario(step: str) -> list[dict[str, Any]]:
        store = await PostgresEventStore.open(state["database_url"], max_size=2)
        # NATS wants a user: without one it refuses; as the gateway (its credentials, 0600 in
        # the data dir) the activity log answers
        assert "Authorization Violation" in await refused_connect(state["nats_url"])
        creds = stack.data / "nats" / "credentials" / "gateway"
        assert creds.stat().st_mode & 0o777 == 0o600
        nc = await connect_nats(state["nats_url"], "test", creds)
        try:
            client = BusClient(nc, sender="gateway")
            with context.use(context.Context(actor=f"tester-{step}", ip="192.0.2.1")):
                await store.append(f"app-{step}", [NewEvent("AppInstalled", {"step": step})])
            as_gateway = context.Context(actor="gateway")

            async def visible() -> bool:
                page = await client.query(
                    "gateway", "activity", {"actor": f"tester-{step}"}, ctx=as_gateway
                )
                return bool(page["items"])

            await wait_until(visible, 30, f"the {step} event in the activity log")
            page = await client.query("gateway", "activity", {"limit": 10}, ctx=as_gateway)
            return list(page["items"])
        finally:
            await nc.close()
            await store.close()

    # The platform database wants its password, which sits 0600 in the data dir.
    assert (stack.data / "database-password").stat().st_mode & 0o777 == 0o600
    assert (stack.data / "stack.json").stat().st_mode & 0o777 == 0o600
    no_password = "postgresql://postgres@" + state["database_url"].split("@", 1)[1]

    async def refused() -> str:
        import asyncpg

        with pytest.raises(asyncpg.InvalidPasswordError) as e:
            await asyncpg.connect(no_password)
        return str(e.value)

    assert "password authentication failed" in asyncio.run(refused())
    r = _homeport("status", "--data-dir", str(stack.data))
    password = (stack.data / "database-password").read_text().strip()
    assert password not in r.stdout + r.stderr
    items = asyncio.run(scenario("before"))
    assert items[0]["type"] == "AppInstalled" and items[0]["target"] == "app-before"

    for victim in ("gateway", "relay", "identity"):
        old = stack.parts()[victim]["pid"]
        os.kill(old, signal.SIGKILL)
        stack.wait_for(
            f"restarting {victim}",
            lambda v=victim, o=old: (
                stack.parts()[v]["pid"] not in (None, o)  # type: ignore[misc]
                and stack.parts()[v]["state"] == "running"
            ),
            deadline_s=15,
        )
    items = asyncio.run(scenario("after"))
    assert [i["target"] for i in items[:2]] == ["app-after", "app-before"]
    metrics = _get(stack.parts()["relay"]["health"].replace("/healthz", "/metrics"))[1]
    assert b"homeport_relay_lag_events 0.0" in metrics
    assert b"homeport_relay_lag_seconds 0.0" in metrics
    status, body = _get(stack.state()["dashboard_url"])
    assert status == 200 and b'<div id="root">' in body  # the dashboard

    # The replay applies every event of the log: the two above, and whatever the platform
    # recorded meanwhile (an alert while a part was down, the apps' spare network's subnet).
    async def events_in_log() -> tuple[int, set[str]]:
        import asyncpg

        conn = await asyncpg.connect(state["database_url"])
        try:
            n = await conn.fetchval("SELECT count(*) FROM events.events")
            rows = await conn.fetch("SELECT stream FROM gateway.activity")
            return int(n), {str(r["stream"]) for r in rows}
        finally:
            await conn.close()

    before, _ = asyncio.run(events_in_log())
    r = _homeport("replay", "activity", "--data-dir", str(stack.data), timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    applied = re.search(r"replayed projection activity: (\d+) events applied", r.stdout)
    assert applied is not None, r.stdout
    after, targets = asyncio.run(events_in_log())
    assert before <= int(applied.group(1)) <= after and before >= 2, (before, r.stdout, after)
    assert {"app-before", "app-after"} <= targets
    r = _homeport("audit", "verify", "--data-dir", str(stack.data))
    assert r.returncode == 0 and "event chain intact" in r.stdout, r.stdout + r.stderr
    r = _homeport("status", "--data-dir", str(stack.data))
    assert r.returncode == 0, r.stdout + r.stderr

    # What the banner says to do next works: create the administrator, then sign in.
    banner = (stack.logs / "up.out").read_text()
    assert "homeport setup --data-dir" in banner
    # ... and the setup link carries the one-time token; without it nobody can claim setup
    token = (stack.data / "setup-token").read_text().strip()
    assert f"/#/setup?token={token}" in banner
    identity_log = (stack.data / "logs" / "identity.log").read_text()
    assert "setup is not done" in identity_log and token not in identity_log  # never logged
    api = stack.state()["dashboard_url"].rstrip("/") + "/api/v1"
    claim = {"username": "mallory", "email": "m@example.test", "password": "mallory's own phrase"}
    for extra, status in (({}, 400), ({"setup_token": token[::-1]}, 403)):
        claimed = urllib.request.Request(
            api + "/setup",
            data=json.dumps({**claim, **extra}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(claimed, timeout=10)
        refused.value.close()  # the error holds the answer's connection
        assert refused.value.code == status
    secret = "a long admin passphrase"
    setup = [
        sys.executable, "-m", "cli.main", "setup", "--data-dir", str(stack.data),
        "--username", "admin", "--email", "admin@example.test", "--password-stdin",
    ]  # fmt: skip
    r = subprocess.run(
        setup, cwd=REPO, input=secret + "\n", capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Administrator admin created" in r.stdout and secret not in r.stdout + r.stderr
    r = subprocess.run(
        setup, cwd=REPO, input=secret + "\n", capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1 and "already done" in r.stderr
    assert not (stack.data / "setup-token").exists()
    login = urllib.request.Request(
        api + "/session",
        data=json.dumps({"username": "admin", "password": secret}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(login, timeout=10) as answer:
        cookie = answer.headers["Set-Cookie"].split(";", 1)[0]
    profile = urllib.request.Request(api + "/profile", headers={"Cookie": cookie})
    with urllib.request.urlopen(profile, timeout=10) as answer:
        assert json.loads(answer.read())["username"] == "admin"

    stack.proc.send_signal(signal.SIGTERM)
    assert stack.proc.wait(timeout=30) == 0, stack.output()


def test_data_dir_under_a_private_folder_keeps_the_cluster_where_postgres_can_reach_it(
    tmp_root: Path,
) -> None:
    """As root with the checkout in /root (0700), `make run` must still work."""
    import hashlib
    import shutil

    if os.geteuid() != 0:
        pytest.skip("only root runs Postgres as another user")
    try:
        check_binaries()
    except EmbeddedError as e:
        need_server("postgres and nats-server", e)
    private = tmp_root / f"private-{uuid.uuid4().hex[:6]}"
    private.mkdir(mode=0o700)
    data = private / "data"
    logs = tmp_root / f"{private.name}-logs"
    logs.mkdir()
    argv = [sys.executable, "-m", "cli.main", "up", "--data-dir", str(data)]
    with open(logs / "up.out", "wb") as out, open(logs / "up.err", "wb") as err:
        proc = subprocess.Popen(
            [*argv, "--service", f"gateway={SAMPLE}"], cwd=REPO, stdout=out, stderr=err
        )
    stack = Running(data, proc, logs)
    digest = hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:12]
    alt = Path("/var/lib/homeport") / f"postgres-{digest}"
    try:
        stack.wait_for("up and healthy", lambda: "Dashboard:" in (logs / "up.out").read_text(), 90)
        assert Path((data / "postgres" / "LOCATION").read_text().strip()) == alt
        assert (alt / "pgdata" / "PG_VERSION").is_file()
        assert _homeport("status", "--data-dir", str(data)).returncode == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, stack.output()
    finally:
        stack.cleanup()
        shutil.rmtree(alt, ignore_errors=True)
