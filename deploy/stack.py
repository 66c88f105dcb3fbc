"""The local stack (`homeport up`): Postgres, NATS and every service, supervised, in a data dir.

Layout of the data directory:

    <data>/stack.lock      flock held by the running stack (a second `up` is refused)
    <data>/stack.json      pids, ports, URLs, restarts and states (rewritten atomically)
    <data>/keyring.json    the sealing keyring (created by the services through HP_KEYRING)
    <data>/postgres/       the Postgres cluster and its log
    <data>/nats/           the JetStream store and the nats-server log
    <data>/logs/<name>.log stdout and stderr (JSON lines) of each service
    <data>/postgres-addons/ the addon Postgres apps' databases live in (not the platform's)
    <data>/docker/         dockerd's data, when the stack runs its own (no system Docker)
    <data>/apps/           snapshots and the locally signed catalog

Docker: HP_DOCKER_HOST if set, else the system's /var/run/docker.sock if it answers, else the
one `make test` leaves running, else a dockerd of the stack's own (a supervised part). Without
any, the apps service is left out. Apps reach their addons (database, LDAP) on the gateway
address of the `homeport-services` network.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import pwd
import secrets
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import asyncpg

from deploy.embedded import (
    DockerDaemon,
    EmbeddedError,
    NatsServer,
    PostgresServer,
    docker_answers,
    find_binary,
    free_port,
)

__all__ = [
    "DATABASE",
    "LOCK_FILE",
    "RELAY_MODULE",
    "STATE_FILE",
    "Backoff",
    "Module",
    "Part",
    "PartKind",
    "PartState",
    "Stack",
    "StackError",
    "StackState",
    "discover_modules",
    "is_running",
    "module_exists",
    "parse_module",
    "probe",
    "process_alive",
    "read_state",
]

log = logging.getLogger("homeport.stack")

DATABASE = "homeport"
STATE_FILE = "stack.json"
LOCK_FILE = "stack.lock"
KEYRING_FILE = "keyring.json"
RELAY_MODULE = "libs.events.relay"
DASHBOARD_PART = "gateway"
HOST = "127.0.0.1"
SYSTEM_DOCKER = Path("/var/run/docker.sock")
TEST_DOCKER = Path("/run/homeport-test/docker.sock")  # tests/conftest.py starts it
SERVICES_NETWORK = "homeport-services"
SERVICES_SUBNET = "10.213.0.0/24"
SERVICES_GATEWAY = "10.213.0.1"  # the first host address, as the apps runtime creates it
APPS_MODULE = "services.apps"
GATEWAY_MODULE = "services.gateway"
BASE_CACHE = Path("/var/cache/homeport")  # the debootstrap tarball, shared by data dirs

RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
RESTART_RESET_S = 60.0  # a part that stayed up this long starts its backoff over
STOP_DEADLINE_S = 15.0  # SIGTERM, then SIGKILL after this long
DRAIN_SECONDS = 10.0  # HP_DRAIN_SECONDS: services finish within the stop deadline
READY_DEADLINE_S = 60.0
HEALTH_TIMEOUT_S = 2.0
_POLL_S = 0.25


def _database_password(data_dir: Path, name: str = "database-password") -> str:
    """A database's password: made once, kept 0600 in the data directory."""
    path = data_dir / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    secret = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    return secret


FALLBACK_ROOT = Path("/var/lib/homeport")


class StackError(Exception):
    """The stack cannot start or run; the message says why and what to do."""


class PartKind(StrEnum):
    POSTGRES = "postgres"
    NATS = "nats"
    DOCKER = "docker"
    ADDON_POSTGRES = "addon_postgres"
    SERVICE = "service"


class StackState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class PartState(StrEnum):
    PENDING = "pending"
    STARTING = "starting"  # process started, health not yet confirmed
    RUNNING = "running"  # answered its health check since it was (re)started
    BACKOFF = "backoff"  # exited unexpectedly, waiting to be restarted
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Module:
    """A Python module the stack runs as `python -m <module>` under the part name `name`."""

    name: str
    module: str


class Backoff:
    """Restart delays: 0.5 s doubling to 30 s; starts over after a run of 60 s or more."""

    def __init__(
        self,
        first: float = RESTART_MIN_S,
        cap: float = RESTART_MAX_S,
        reset_after: float = RESTART_RESET_S,
    ) -> None:
        self.first, self.cap, self.reset_after = first, cap, reset_after
        self._next = first

    def delay(self, up_for: float) -> float:
        """The wait before the next start, given how long the last run lasted."""
        if up_for >= self.reset_after:
            self._next = self.first
        d = self._next
        self._next = min(self._next * 2, self.cap)
        return d


# -- discovery ----------------------------------------------------------------------------


def _package_dirs(top: str) -> list[Path]:
    """The folders of top-level package `top` as `python -m` in our cwd would see it.

    `python -m` puts the cwd first on sys.path, so a package there wins; otherwise ask the
    import system (which finds the installed packages) without importing anything.
    """
    here = Path.cwd() / top
    if (here / "__init__.py").is_file():
        return [here]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return []
    if spec is None or spec.submodule_search_locations is None:
        return []
    return [Path(p) for p in spec.submodule_search_locations]


def module_exists(module: str) -> bool:
    """Whether `python -m module` would find a file, without importing anything below the top."""
    top, *rest = module.split(".")
    for d in _package_dirs(top):
        if not rest:
            if (d / "__main__.py").is_file():
                return True
            continue
        base = d.joinpath(*rest)
        if base.with_suffix(".py").is_file() or (base / "__main__.py").is_file():
            return True
    return False


def discover_modules(relay_module: str = RELAY_MODULE, package: str = "services") -> list[Module]:
    """The event relay (when it exists) and every `<package>/<name>/__main__.py`, by name."""
    found: dict[str, Module] = {}
    if module_exists(relay_module):
        found["relay"] = Module("relay", relay_module)
    for d in _package_dirs(package):
        for child in sorted(d.iterdir()):
            if child.name.isidentifier() and (child / "__main__.py").is_file():
                found.setdefault(child.name, Module(child.name, f"{package}.{child.name}"))
    return list(found.values())


def parse_module(spec: str) -> Module:
    """`name=package.module` (or just `package.module`, named after its last part)."""
    name, sep, module = spec.partition("=")
    if not sep:
        name, module = spec.rsplit(".", 1)[-1], spec
    name, module = name.strip(), module.strip()
    if not name or not all(p.isidentifier() for p in module.split(".")):
        raise StackError(f"bad module {spec!r}: expected NAME=package.module")
    return Module(name, module)


# -- processes ----------------------------------------------------------------------------


def _proc_start(pid: int) -> int | None:
    """The kernel start time of `pid` (clock ticks since boot): tells a reused pid apart."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def process_alive(pid: int | None, proc_start: int | None = None) -> bool:
    """Whether `pid` runs (not a zombie) and, when given, is still the process started then."""
    if pid is None:
        return False
    started = _proc_start(pid)
    return started is not None and (proc_start is None or started == proc_start)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


async def probe(
    health: str, session: aiohttp.ClientSession | None = None, deadline_s: float = HEALTH_TIMEOUT_S
) -> tuple[bool, str]:
    """Check one health address: `tcp://host:port` connects, `unix://path` is a dockerd that
    answers, `http://…` must answer 200."""
    if health.startswith("unix://"):
        ok = await asyncio.to_thread(docker_answers, Path(health.removeprefix("unix://")))
        return ok, "answering" if ok else "not answering"
    if health.startswith("tcp://"):
        host, _, port = health.removeprefix("tcp://").rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), deadline_s)
        except (OSError, TimeoutError) as e:
            return False, f"no connection: {e or type(e).__name__}"
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True, "accepting connections"
    own = session is None
    s = aiohttp.ClientSession() if session is None else session
    try:
        async with s.get(health, timeout=aiohttp.ClientTimeout(total=deadline_s)) as r:
            return r.status == 200, f"HTTP {r.status}"
    except (aiohttp.ClientError, TimeoutError) as e:
        return False, f"no answer: {e or type(e).__name__}"
    finally:
        if own:
            await s.close()


# -- state file ---------------------------------------------------------------------------


def read_state(data_dir: Path) -> dict[str, Any] | None:
    """The last `stack.json` written in `data_dir`, or None when there is none (or unreadable)."""
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def is_running(state: dict[str, Any] | None) -> bool:
    """Whether the stack that wrote `state` is still running."""
    if state is None or not isinstance(state.get("pid"), int):
        return False
    return process_alive(state["pid"], state.get("proc_start"))


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# -- parts --------------------------------------------------------------------------------


class _Runner(Protocol):
    """How the supervisor drives one part's process."""

    @property
    def pid(self) -> int | None: ...

    async def start(self) -> None: ...

    async def wait(self) -> int: ...

    async def stop(self, deadline_s: float) -> bool: ...


class _ServerRunner:
    """Postgres or NATS from deploy.embedded (blocking calls run in a worker thread)."""

    def __init__(self, server: PostgresServer | NatsServer) -> None:
        self.server = server

    @property
    def pid(self) -> int | None:
        return self.server.pid

    async def start(self) -> None:
        await asyncio.to_thread(self.server.start)

    async def wait(self) -> int:
        """Wait for the server to exit, through a pidfd (it is a `subprocess.Popen` child)."""
        pid = self.server.pid
        if pid is None:
            raise EmbeddedError("server not started")
        code = self.server.poll()
        if code is not None:
            return code
        fd = os.pidfd_open(pid)  # an unreaped (zombie) child still has its pid
        loop = asyncio.get_running_loop()
        exited = asyncio.Event()
        try:
            loop.add_reader(fd, exited.set)
            try:
                await exited.wait()
            finally:
                loop.remove_reader(fd)
        finally:
            os.close(fd)
        code = self.server.poll()
        return -1 if code is None else code

    async def stop(self, deadline_s: float) -> bool:
        await asyncio.to_thread(self.server.stop, deadline_s)
        return False


class _DockerRunner:
    """The stack's own dockerd (deploy.embedded.DockerDaemon) as a supervised child."""

    def __init__(self, daemon: DockerDaemon) -> None:
        self.daemon = daemon

    @property
    def pid(self) -> int | None:
        return self.daemon.pid() if self.daemon.poll() is None else None

    async def start(self) -> None:
        await asyncio.to_thread(self.daemon.start)

    async def wait(self) -> int:
        while True:
            code = self.daemon.poll()
            if code is not None or self.daemon.pid() is None:
                return -1 if code is None else code
            await asyncio.sleep(_POLL_S)

    async def stop(self, deadline_s: float) -> bool:
        await asyncio.to_thread(self.daemon.stop, deadline_s)
        return False


class _ServiceRunner:
    """`python -m <module>` in its own session (so a terminal's Ctrl-C reaches only the stack)."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        if self._proc is None or self._proc.returncode is not None:
            return None
        return self._proc.pid

    async def start(self) -> None:
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                start_new_session=True,
            )
        finally:
            os.close(fd)

    async def wait(self) -> int:
        assert self._proc is not None
        return await self._proc.wait()

    async def stop(self, deadline_s: float) -> bool:
        """SIGTERM, then SIGKILL after `deadline_s`; True when it had to be killed."""
        proc = self._proc
        if proc is None:
            return False
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), deadline_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                return True
        await proc.wait()
        return False


@dataclass
class Part:
    """One supervised process and what `stack.json` says about it."""

    name: str
    kind: PartKind
    port: int
    url: str
    health: str
    log: Path
    runner: _Runner = field(repr=False)
    module: str | None = None
    monitor_port: int | None = None
    state: PartState = PartState.PENDING
    pid: int | None = None
    proc_start: int | None = None
    restarts: int = 0
    last_exit: int | None = None
    since: str | None = None
    healthy: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind.value,
            "module": self.module,
            "pid": self.pid,
            "proc_start": self.proc_start,
            "port": self.port,
            "url": self.url,
            "health": self.health,
            "state": self.state.value,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "since": self.since,
            "log": str(self.log),
        }
        if self.monitor_port is not None:
            out["monitor_port"] = self.monitor_port
        return out


# -- the stack ----------------------------------------------------------------------------


class Stack:
    """Runs Postgres, NATS and the services of this checkout until SIGINT/SIGTERM."""

    def __init__(
        self,
        data_dir: Path,
        *,
        python: str = sys.executable,
        base_port: int | None = None,
        modules: Sequence[Module] | None = None,
        log_level: str = "INFO",
        fsync: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.python = python
        self.base_port = base_port
        self.modules = list(modules) if modules is not None else None
        self.log_level = log_level.upper()
        self.fsync = fsync
        self.parts: list[Part] = []
        self.state = StackState.STARTING
        self._stopping = asyncio.Event()
        self._started_at = _now()
        self._session: aiohttp.ClientSession | None = None
        self._database_url = ""
        self._nats_url = ""
        self._docker_url = ""
        self._addon: PostgresServer | None = None
        self._ldap_port = 0
        self._edge_ports: tuple[int, int] | None = None

    # -- public ---------------------------------------------------------------------------

    @property
    def keyring(self) -> Path:
        return self.data_dir / KEYRING_FILE

    @property
    def dashboard_url(self) -> str | None:
        """The gateway's URL, or None when this checkout has no gateway service."""
        for p in self.parts:
            if p.name == DASHBOARD_PART and p.kind is PartKind.SERVICE:
                return p.url
        return None

    def unhealthy(self) -> list[Part]:
        """Parts that have not answered their health check since the stack started."""
        return [p for p in self.parts if not p.healthy.is_set()]

    def stop(self) -> None:
        """Ask the stack to stop (what SIGINT and SIGTERM do)."""
        self._stopping.set()

    async def run(self, on_ready: Callable[[Stack], None] | None = None) -> None:
        """Start everything, call `on_ready` once it is healthy (or 60 s passed), run until stop."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock_fd = self._lock()
        loop = asyncio.get_running_loop()
        try:
            self._prepare_dir()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal, sig)
            try:
                await self._run_locked(on_ready)
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
        finally:
            os.close(lock_fd)

    # -- start-up -------------------------------------------------------------------------

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stopping.is_set():
            log.info("already stopping", extra={"signal": sig.name})
            return
        log.info("stopping", extra={"signal": sig.name})
        self._stopping.set()

    def _prepare_dir(self) -> None:
        """Data dir 0700 (0711 as root: the postgres user must pass through to its cluster).

        Everything below it is 0700 too, so 0711 lets nobody else read the NATS store or logs.
        """
        d = self.data_dir
        pg_ids = _postgres_ids()
        d.chmod(0o711 if pg_ids is not None else 0o700)
        for sub in ("postgres", "nats", "logs"):
            (d / sub).mkdir(mode=0o700, exist_ok=True)
            (d / sub).chmod(0o700)

    def _postgres_dir(self) -> Path:
        """Where the cluster lives: `<data>/postgres`, unless the postgres user cannot get there.

        As root with the checkout under a private folder (such as /root), the postgres user
        cannot pass through; the cluster then lives in /var/lib/homeport/postgres-<hash of the
        data dir> and `<data>/postgres/LOCATION` says so.
        """
        d = self.data_dir / "postgres"
        pg_ids = _postgres_ids()
        if pg_ids is None or all(_can_enter(p, *pg_ids) for p in self.data_dir.parents):
            return d
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:12]
        FALLBACK_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
        alt = FALLBACK_ROOT / f"postgres-{digest}"
        (d / "LOCATION").write_text(f"{alt}\n")
        log.info(
            "the postgres user cannot reach the data directory; cluster kept elsewhere",
            extra={"postgres_dir": str(alt)},
        )
        return alt

    def _lock(self) -> int:
        path = self.data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StackError(
                f"homeport is already running in {self.data_dir} (pid {holder}): stop it with "
                f"Ctrl-C in its terminal or `kill {holder}`, or use another --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    async def _run_locked(self, on_ready: Callable[[Stack], None] | None) -> None:
        previous = read_state(self.data_dir)
        await _reap_leftovers(previous)
        self._plan(previous)
        self._save()
        tasks: list[asyncio.Task[None]] = []
        try:
            async with aiohttp.ClientSession() as session:
                self._session = session
                try:
                    await self._start_servers()
                    if not self._stopping.is_set():
                        tasks = [
                            asyncio.create_task(
                                self._supervise(p, started=p.kind is not PartKind.SERVICE),
                                name=f"supervise.{p.name}",
                            )
                            for p in self.parts
                        ]
                        self.state = StackState.RUNNING
                        self._save()
                        await self._until_ready(tasks, on_ready)
                        await self._until_stopped(tasks)
                finally:
                    self._stopping.set()
                    self.state = StackState.STOPPING
                    self._save()
                    await self._join(tasks)
                    await self._shutdown()
        finally:
            self._session = None
            self.state = StackState.STOPPED
            self._save(stack_pid=False)
            log.info("stopped", extra={"data_dir": str(self.data_dir)})

    def _plan(self, previous: dict[str, Any] | None) -> None:
        """Build the parts, reusing the ports remembered from the previous run when free."""
        remembered: dict[str, dict[str, Any]] = {}
        for p in (previous or {}).get("parts", []):
            if isinstance(p, dict) and isinstance(p.get("name"), str):
                remembered[p["name"]] = p
        modules = self.modules if self.modules is not None else discover_modules()
        for m in modules:
            if not module_exists(m.module):
                raise StackError(
                    f"module {m.module} (for {m.name}) not found from {Path.cwd()}: "
                    "check the name, or run homeport from the checkout"
                )
        names = [m.name for m in modules]
        if len(set(names)) != len(names) or {"postgres", "nats"} & set(names):
            raise StackError(f"service names must be unique and not postgres/nats: {names}")
        taken: set[int] = set()
        seq = None if self.base_port is None else iter(range(self.base_port, 65536))

        def port(name: str, key: str = "port") -> int:
            if seq is not None:
                p = next(seq, None)
                if p is None or not _port_free(p):
                    raise StackError(f"port {p} (for {name}) is in use: choose another --base-port")
            else:
                old = remembered.get(name, {}).get(key)
                if isinstance(old, int) and old not in taken and _port_free(old):
                    p = old
                else:
                    p = free_port()
                    while p in taken:
                        p = free_port()
                    if isinstance(old, int):
                        log.warning(
                            "remembered port taken, using another",
                            extra={"part": name, "old_port": old, "new_port": p},
                        )
            taken.add(p)
            return p

        pg = PostgresServer(
            self._postgres_dir(),
            port=port("postgres"),
            fsync=self.fsync,
            password=_database_password(self.data_dir),
        )
        nats = NatsServer(self.data_dir / "nats", port=port("nats"))
        nats.monitor_port = port("nats", "monitor_port")
        self._database_url = pg.dsn_for(DATABASE)
        self._nats_url = nats.url
        self.parts = [
            Part(
                "postgres",
                PartKind.POSTGRES,
                pg.port,
                f"postgresql://{HOST}:{pg.port}/{DATABASE}",
                f"tcp://{HOST}:{pg.port}",
                pg.datadir / "postgres.log",
                _ServerRunner(pg),
            ),
            Part(
                "nats",
                PartKind.NATS,
                nats.port,
                nats.url,
                f"tcp://{HOST}:{nats.port}",
                nats.datadir / "nats.log",
                _ServerRunner(nats),
                monitor_port=nats.monitor_port,
            ),
        ]
        modules = self._plan_docker(modules, port)
        self._plan_edge(modules)
        for m in modules:
            p = port(m.name)
            log_path = self.data_dir / "logs" / f"{m.name}.log"
            runner = _ServiceRunner([self.python, "-m", m.module], self._service_env(p), log_path)
            self.parts.append(
                Part(
                    m.name,
                    PartKind.SERVICE,
                    p,
                    f"http://{HOST}:{p}/",
                    f"http://{HOST}:{p}/healthz",
                    log_path,
                    runner,
                    module=m.module,
                )
            )
        if not modules:
            log.warning("no services found to supervise", extra={"relay": RELAY_MODULE})

    def _plan_docker(self, modules: list[Module], port: Callable[[str], int]) -> list[Module]:
        """Docker (the system's or our own), the addon Postgres and the LDAP port for apps."""
        if APPS_MODULE not in {m.module for m in modules}:
            return modules
        wanted = os.environ.get("HP_DOCKER_HOST", "")
        if wanted:
            self._docker_url = wanted
        elif docker_answers(SYSTEM_DOCKER):
            self._docker_url = f"unix://{SYSTEM_DOCKER}"
        elif docker_answers(TEST_DOCKER):
            # the dockerd `make test` leaves running: a second one would fight it over iptables
            self._docker_url = f"unix://{TEST_DOCKER}"
        else:
            try:
                find_binary("dockerd")
            except EmbeddedError:
                log.warning(
                    "no Docker here (no dockerd, no /var/run/docker.sock): apps are left out;"
                    " install docker.io to run apps",
                )
                return [m for m in modules if m.module != APPS_MODULE]
            run = (
                Path("/run/homeport") / hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
            )
            daemon = DockerDaemon(
                data_root=self.data_dir / "docker",
                exec_root=run / "exec",
                pidfile=run / "docker.pid",
                socket_path=run / "docker.sock",
                address_pool="base=10.224.0.0/14,size=24",
                log_path=self.data_dir / "logs" / "dockerd.log",
            )
            self._docker_url = daemon.url
            self.parts.append(
                Part(
                    "docker",
                    PartKind.DOCKER,
                    0,
                    daemon.url,
                    daemon.url,
                    self.data_dir / "logs" / "dockerd.log",
                    _DockerRunner(daemon),
                )
            )
        addon_dir = self._postgres_dir().with_name(self._postgres_dir().name + "-addons")
        addon = PostgresServer(
            addon_dir,
            port=_stable_port(self.data_dir, "addon-postgres"),
            fsync=self.fsync,
            password=_database_password(self.data_dir, "addon-database-password"),
            listen=(HOST, SERVICES_GATEWAY),
            hba_file=addon_dir / "pg_hba.conf",
        )
        self._addon = addon
        self._ldap_port = _stable_port(self.data_dir, "ldap")
        self.parts.append(
            Part(
                "addon-postgres",
                PartKind.ADDON_POSTGRES,
                addon.port,
                f"postgresql://{SERVICES_GATEWAY}:{addon.port}",
                f"tcp://{HOST}:{addon.port}",
                addon_dir / "postgres.log",
                _ServerRunner(addon),
            )
        )
        return modules

    def _plan_edge(self, modules: list[Module]) -> None:
        """nginx (run by the gateway as its child) on high loopback ports, if nginx is here."""
        if GATEWAY_MODULE not in {m.module for m in modules}:
            return
        try:
            find_binary("nginx", ("/usr/sbin",))
        except EmbeddedError:
            log.warning("no nginx here: apps are reachable only on their loopback ports")
            return
        self._edge_ports = (
            _stable_port(self.data_dir, "edge-http"),
            _stable_port(self.data_dir, "edge-https"),
        )

    @property
    def secure_dashboard_url(self) -> str | None:
        """The dashboard through the edge at my.localhost, when this stack runs the edge."""
        if self._edge_ports is None or self.dashboard_url is None:
            return None
        return f"https://my.localhost:{self._edge_ports[1]}/"

    @property
    def apps_url(self) -> str | None:
        """How an app at <location> is reached on this machine, with a placeholder."""
        if self._edge_ports is None:
            return None
        return f"https://<location>.localhost:{self._edge_ports[1]}/"

    async def _prepare_addons(self) -> None:
        """The services network (its gateway is where addons listen), then the hba file."""
        from services.apps.addons.postgresql import AddonPostgres
        from services.apps.runtime import DockerRuntime

        try:
            async with DockerRuntime(self._docker_url) as runtime:
                await runtime.ensure_services_network(SERVICES_NETWORK, SERVICES_SUBNET)
            if self._addon is not None:
                await asyncio.to_thread(self._addon.init)
                hba = self._addon.datadir / "pg_hba.conf"
                addon = AddonPostgres(self._addon.dsn, SERVICES_GATEWAY, self._addon.port, hba)
                await asyncio.to_thread(addon.ensure_hba_file, _postgres_ids())
        except Exception as e:
            raise EmbeddedError(f"preparing the addons failed: {e}") from e

    def _service_env(self, port: int) -> dict[str, str]:
        """The environment of a service: ours, with the HP_* settings of this stack on top."""
        env = dict(os.environ)
        env.update(
            HP_DATABASE_URL=self._database_url,
            HP_NATS_URL=self._nats_url,
            HP_HTTP_HOST=HOST,
            HP_HTTP_PORT=str(port),
            HP_LOG_LEVEL=self.log_level,
            HP_DRAIN_SECONDS=str(DRAIN_SECONDS),
            HP_KEYRING=str(self.keyring),
            HP_DATA_DIR=str(self.data_dir),
        )
        if self._docker_url:
            env.update(
                HP_DOCKER_HOST=self._docker_url,
                HP_APPS_DIR=str(self.data_dir / "apps"),
                HP_BASE_CACHE=str(BASE_CACHE),
                HP_SERVICES_NETWORK=SERVICES_NETWORK,
                HP_SERVICES_SUBNET=SERVICES_SUBNET,
                HP_LDAP_HOST=f"{HOST},{SERVICES_GATEWAY}",
                HP_LDAP_PORT=str(self._ldap_port),
            )
        if self._edge_ports is not None:
            env.update(
                HP_EDGE="true",
                HP_EDGE_DIR=str(self.data_dir / "edge"),
                HP_EDGE_HTTP_PORT=str(self._edge_ports[0]),
                HP_EDGE_HTTPS_PORT=str(self._edge_ports[1]),
                HP_EDGE_BIND=HOST,
                HP_ACME_DIR=str(self.data_dir / "acme"),
                HP_CERTS_DIR=str(self.data_dir / "certs"),
            )
        if self._addon is not None:
            env.update(
                HP_ADDON_PG_DSN=self._addon.dsn_for("postgres"),
                HP_ADDON_PG_HBA=str(self._addon.datadir / "pg_hba.conf"),
                HP_ADDON_PG_PORT=str(self._addon.port),
            )
        return env

    async def _start_servers(self) -> None:
        """Postgres (and the `homeport` database), then NATS; services need both."""
        for part in self.parts:
            if part.kind is PartKind.SERVICE or self._stopping.is_set():
                continue
            part.state = PartState.STARTING
            self._save()
            log.info("starting", extra={"part": part.name, "port": part.port})
            try:
                if part.kind is PartKind.ADDON_POSTGRES:
                    await self._prepare_addons()
                await part.runner.start()
                if part.kind is PartKind.POSTGRES:
                    await _ensure_database(self._database_url)
            except (EmbeddedError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
                raise StackError(f"{part.name} did not start: {e} (log: {part.log})") from e
            self._mark_started(part)
            self._mark_healthy(part)

    # -- supervision ----------------------------------------------------------------------

    def _mark_started(self, part: Part) -> None:
        part.pid = part.runner.pid
        part.proc_start = None if part.pid is None else _proc_start(part.pid)
        part.state = PartState.STARTING
        part.since = _now()
        self._save()
        log.info("started", extra={"part": part.name, "pid": part.pid, "port": part.port})

    def _mark_healthy(self, part: Part) -> None:
        part.state = PartState.RUNNING
        part.healthy.set()
        self._save()
        log.info("healthy", extra={"part": part.name, "pid": part.pid})

    async def _supervise(self, part: Part, *, started: bool) -> None:
        """Keep `part` running: restart it with backoff whenever it exits on its own."""
        backoff = Backoff()
        while not self._stopping.is_set():
            up_since = time.monotonic()
            if not started:
                part.state = PartState.STARTING
                self._save()
                log.info("starting", extra={"part": part.name, "port": part.port})
                try:
                    await part.runner.start()
                except (EmbeddedError, OSError) as e:
                    log.error("could not start", extra={"part": part.name, "error": str(e)})
                else:
                    started = True
                    self._mark_started(part)
            code: int | None = None
            if started:
                code = await self._watch(part)
                if self._stopping.is_set():
                    return
                part.pid = part.proc_start = None
                part.last_exit = code
            started = False
            delay = backoff.delay(time.monotonic() - up_since)
            part.state = PartState.BACKOFF
            part.since = _now()
            self._save()
            log.warning(
                "exited unexpectedly, restarting",
                extra={
                    "part": part.name,
                    "exit_code": code,
                    "restart_in_s": delay,
                    "restart": part.restarts + 1,
                    "log": str(part.log),
                },
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return
            part.restarts += 1

    async def _watch(self, part: Part) -> int | None:
        """Wait until `part` exits (its code) or the stack stops (None); mark it healthy."""
        exited = asyncio.ensure_future(part.runner.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        checks = asyncio.ensure_future(self._until_healthy(part))
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (exited, stopping, checks):
                t.cancel()
            await asyncio.gather(exited, stopping, checks, return_exceptions=True)
        if exited.cancelled() or exited.exception() is not None:
            return None
        return exited.result()

    async def _until_healthy(self, part: Part) -> None:
        if part.state is PartState.RUNNING:
            return
        t0, warned = time.monotonic(), False
        while True:
            ok, detail = await probe(part.health, self._session)
            if ok:
                self._mark_healthy(part)
                return
            if not warned and time.monotonic() - t0 > READY_DEADLINE_S:
                warned = True
                log.warning(
                    "not healthy yet",
                    extra={"part": part.name, "detail": detail, "log": str(part.log)},
                )
            await asyncio.sleep(_POLL_S)

    async def _until_ready(
        self, tasks: list[asyncio.Task[None]], on_ready: Callable[[Stack], None] | None
    ) -> None:
        """Wait for every part to be healthy once (at most 60 s), then call `on_ready`."""
        waits = [asyncio.ensure_future(p.healthy.wait()) for p in self.parts]
        stopping = asyncio.ensure_future(self._stopping.wait())
        deadline = time.monotonic() + READY_DEADLINE_S
        try:
            while not all(w.done() for w in waits):
                left = deadline - time.monotonic()
                if left <= 0 or stopping.done() or any(t.done() for t in tasks):
                    break
                pending = {stopping, *tasks, *(w for w in waits if not w.done())}
                await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in (*waits, stopping):
                w.cancel()
            await asyncio.gather(*waits, stopping, return_exceptions=True)
        if self._stopping.is_set() or any(t.done() for t in tasks):
            return
        bad = self.unhealthy()
        if bad:
            log.warning("not all parts are healthy", extra={"parts": [p.name for p in bad]})
        else:
            log.info("ready", extra={"dashboard": self.dashboard_url})
        if on_ready is not None:
            on_ready(self)

    async def _until_stopped(self, tasks: list[asyncio.Task[None]]) -> None:
        """Run until asked to stop; a supervisor that ends on its own is a bug: stop then."""
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({stopping, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            await asyncio.gather(stopping, return_exceptions=True)
        if not self._stopping.is_set():
            for t in tasks:
                if t.done() and not t.cancelled() and t.exception() is not None:
                    log.error(
                        "supervisor failed, stopping the stack",
                        extra={"task": t.get_name()},
                        exc_info=t.exception(),
                    )
            raise StackError("a supervisor failed; see the log lines above")

    async def _join(self, tasks: Iterable[asyncio.Task[None]]) -> None:
        """Supervisors return soon after the stop event; none of them stops a process."""
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for t, r in zip(tasks, results, strict=True):
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
                log.error("supervisor failed", extra={"task": t.get_name()}, exc_info=r)

    # -- shutdown -------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """Services first (together), then NATS, then Postgres."""
        services = [p for p in self.parts if p.kind is PartKind.SERVICE]
        await asyncio.gather(*(self._stop_part(p) for p in services))
        for kind in (PartKind.ADDON_POSTGRES, PartKind.DOCKER, PartKind.NATS, PartKind.POSTGRES):
            for p in self.parts:
                if p.kind is kind:
                    await self._stop_part(p)

    async def _stop_part(self, part: Part) -> None:
        if part.runner.pid is not None:
            part.state = PartState.STOPPING
            self._save()
            log.info("stopping", extra={"part": part.name, "pid": part.runner.pid})
            try:
                killed = await part.runner.stop(STOP_DEADLINE_S)
            except (EmbeddedError, OSError) as e:
                log.error("could not stop", extra={"part": part.name, "error": str(e)})
                return
            if killed:
                log.warning(
                    "did not stop in time, killed",
                    extra={"part": part.name, "deadline_s": STOP_DEADLINE_S},
                )
        part.pid = part.proc_start = None
        part.state = PartState.STOPPED
        part.since = _now()
        self._save()

    # -- state ----------------------------------------------------------------------------

    def _save(self, *, stack_pid: bool = True) -> None:
        state = {
            "version": 1,
            "data_dir": str(self.data_dir),
            "pid": os.getpid() if stack_pid else None,
            "proc_start": _proc_start(os.getpid()) if stack_pid else None,
            "state": self.state.value,
            "started_at": self._started_at,
            "updated_at": _now(),
            "dashboard_url": self.dashboard_url,
            "database_url": self._database_url,
            "nats_url": self._nats_url,
            "keyring": str(self.keyring),
            "parts": [p.to_json() for p in self.parts],
        }
        _write_atomic(self.data_dir / STATE_FILE, (json.dumps(state, indent=2) + "\n").encode())


# -- helpers ------------------------------------------------------------------------------


def _stable_port(data_dir: Path, name: str) -> int:
    """A port apps are told once and keep (in their containers' settings): chosen at the first
    start, kept in `<data>/ports.json`, never changed; taken by something else -> StackError."""
    path = data_dir / "ports.json"
    try:
        ports = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        ports = {}
    port = ports.get(name)
    if isinstance(port, int):
        if not _port_free(port):
            raise StackError(
                f"port {port} ({name}, which apps were given) is in use by another program:"
                " stop it, then start homeport again"
            )
        return port
    port = free_port()
    ports[name] = port
    _write_atomic(path, (json.dumps(ports, indent=2) + "\n").encode())
    return port


def _postgres_ids() -> tuple[int, int] | None:
    """The postgres user's uid/gid when we are root (Postgres then runs as that user)."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        return None  # PostgresServer says what is missing
    return pw.pw_uid, pw.pw_gid


def _can_enter(path: Path, uid: int, gid: int) -> bool:
    st = path.stat()
    mode = st.st_mode
    if st.st_uid == uid:
        return bool(mode & stat.S_IXUSR)
    if st.st_gid == gid:
        return bool(mode & stat.S_IXGRP)
    return bool(mode & stat.S_IXOTH)


async def _ensure_database(database_url: str) -> None:
    """Create the platform database (connecting to the maintenance one) if it is missing."""
    conn = await asyncpg.connect(database_url.rsplit("/", 1)[0] + "/postgres")
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
            log.info("created database", extra={"database": DATABASE})
    finally:
        await conn.close()


async def _reap_leftovers(previous: dict[str, Any] | None) -> None:
    """Stop processes a previous stack left behind when it was killed without a clean stop."""
    left: list[tuple[str, int, int | None]] = []
    for p in (previous or {}).get("parts", []):
        if not isinstance(p, dict) or not isinstance(p.get("pid"), int):
            continue
        if process_alive(p["pid"], p.get("proc_start")):
            left.append((str(p.get("name")), p["pid"], p.get("proc_start")))
    if not left:
        return
    for name, pid, _ in left:
        log.warning("stopping a leftover of an earlier run", extra={"part": name, "pid": pid})
        sig = signal.SIGINT if name == "postgres" else signal.SIGTERM
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + STOP_DEADLINE_S
    # Not our children: /proc is all there is to watch.
    while time.monotonic() < deadline and any(process_alive(p, s) for _, p, s in left):  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    for name, pid, started in left:
        if process_alive(pid, started):
            log.warning("leftover did not stop, killing", extra={"part": name, "pid": pid})
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
