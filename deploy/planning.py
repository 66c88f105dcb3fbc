"""Planning the local stack: which parts run (Postgres, NATS, Docker, the addon Postgres, every
service of this checkout), on which ports, with which environment.

Docker: HP_DOCKER_HOST if set, else the system's /var/run/docker.sock if it answers, else the
one `make test` leaves running, else a dockerd of the stack's own (a supervised part). Without
any, the apps service is left out. Apps reach their addons (database, LDAP) on the gateway
address of the `homeport-services` network. The addon Postgres is planned with the apps service
but runs on demand (`Plan.addon_wanted`, deploy/stack.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy import bytecode
from deploy.bytecode import service_argv
from deploy.dbroles import service_dsn
from deploy.embedded import (
    DockerDaemon,
    EmbeddedError,
    NatsServer,
    PostgresServer,
    docker_answers,
    find_binary,
    free_port,
)
from deploy.errors import StackError
from deploy.forkserver import Forkserver
from deploy.state import HOST, KEYRING_DIR, database_password, port_free, postgres_dir, stable_port
from deploy.supervision import DockerRunner, Part, PartKind, ServerRunner, ServiceRunner
from libs.events.nats_access import SERVICE_USERS
from libs.events.sealing import KEYRING_OWNERS, keyring_file

__all__ = [
    "ADDON_WANTED",
    "APPS_MODULE",
    "BASE_CACHE",
    "DASHBOARD_PART",
    "DATABASE",
    "DRAIN_SECONDS",
    "GATEWAY_MODULE",
    "RELAY_MODULE",
    "SERVICES_GATEWAY",
    "SERVICES_NETWORK",
    "SERVICES_SUBNET",
    "Module",
    "Plan",
    "Planner",
    "discover_modules",
    "module_exists",
    "parse_module",
]

log = logging.getLogger("homeport.stack")

DATABASE = "homeport"
RELAY_MODULE = "libs.events.relay"
DASHBOARD_PART = "gateway"
SYSTEM_DOCKER = Path("/var/run/docker.sock")
TEST_DOCKER = Path("/run/homeport-test/docker.sock")  # tests/support/docker.py starts it
# The mail servers' ports in the local stack (HP_MAIL_<WHAT>_PORT) and the programs they need.
MAIL_PORTS = ("smtp", "submission", "submissions", "imaps", "managesieve", "milter")
MAIL_PROGRAMS = ("postfix", "dovecot", "rspamd")
MAIL_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
SERVICES_NETWORK = "homeport-services"
SERVICES_SUBNET = "10.213.0.0/24"
SERVICES_GATEWAY = "10.213.0.1"  # the first host address, as the apps runtime creates it
APPS_MODULE = "services.apps"
GATEWAY_MODULE = "services.gateway"
BASE_CACHE = Path("/var/cache/homeport")  # the debootstrap tarball, shared by data dirs
DRAIN_SECONDS = 10.0  # HP_DRAIN_SECONDS: services finish within the stop deadline
# The apps service writes this flag next to the addon server's pg_hba.conf before it needs the
# server (services/apps/addons/postgresql.py WANTED); the stack starts the server once it exists.
ADDON_WANTED = "wanted"
# Postgres connections allowed: the services' pools (5 each, opened on demand) and projection
# stores (2 each) stay well under it; 300 would touch ~6 MiB more shared memory per cluster.
MAX_CONNECTIONS = 100


@dataclass(frozen=True)
class Module:
    """A Python module the stack runs as `python -m <module>` under the part name `name`."""

    name: str
    module: str


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


# -- the plan -----------------------------------------------------------------------------


@dataclass
class Plan:
    """The parts in start order, and the addresses the services are given."""

    database_url: str
    nats_url: str
    parts: list[Part] = field(default_factory=list)
    docker_url: str = ""
    addon: PostgresServer | None = None  # the addon Postgres, when apps run
    ldap_port: int = 0
    edge_ports: tuple[int, int] | None = None  # nginx's HTTP and HTTPS ports, when it runs
    nats_credentials: Path | None = None  # the services' NATS credentials (one file each)
    forkserver: Forkserver | None = None  # what the services are forked from (forkserver.py)

    @property
    def addon_wanted(self) -> Path | None:
        """The flag whose existence asks for the addon Postgres (None: no addon server)."""
        return None if self.addon is None else self.addon.datadir / ADDON_WANTED


class Planner:
    """Builds the plan of one start of the stack in `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        python: str,
        base_port: int | None,
        modules: Sequence[Module] | None,
        log_level: str,
        fsync: bool,
    ) -> None:
        self.data_dir = data_dir
        self.python = python
        self.base_port = base_port
        self.modules = list(modules) if modules is not None else None
        self.log_level = log_level
        self.fsync = fsync

    def plan(self, previous: dict[str, Any] | None) -> Plan:
        """The parts, reusing the ports remembered from the previous run when free."""
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
        port = self._ports(previous)
        pg_dir = postgres_dir(self.data_dir)
        pg = PostgresServer(
            pg_dir,
            port=port("postgres"),
            fsync=self.fsync,
            password=database_password(self.data_dir),
            max_connections=MAX_CONNECTIONS,
        )
        nats = NatsServer(self.data_dir / "nats", port=port("nats"))
        nats.monitor_port = port("nats", "monitor_port")
        plan = Plan(pg.dsn_for(DATABASE), nats.url, nats_credentials=nats.credentials_dir)
        plan.parts = [
            Part(
                "postgres",
                PartKind.POSTGRES,
                pg.port,
                f"postgresql://{HOST}:{pg.port}/{DATABASE}",
                f"tcp://{HOST}:{pg.port}",
                pg.datadir / "postgres.log",
                ServerRunner(pg),
            ),
            Part(
                "nats",
                PartKind.NATS,
                nats.port,
                nats.url,
                f"tcp://{HOST}:{nats.port}",
                nats.datadir / "nats.log",
                ServerRunner(nats),
                monitor_port=nats.monitor_port,
            ),
        ]
        modules = self._plan_docker(plan, modules, pg_dir)
        self._plan_edge(plan, modules)
        if modules:
            plan.forkserver = self._forkserver(modules)
        for m in modules:
            p = port(m.name)
            log_path = self.data_dir / "logs" / f"{m.name}.log"
            env = self.service_env(plan, p, m.name)
            argv = service_argv(self.python, m.module)
            runner = ServiceRunner(argv, env, log_path, module=m.module, forkserver=plan.forkserver)
            plan.parts.append(
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
        return plan

    def _forkserver(self, modules: Sequence[Module]) -> Forkserver:
        """The fork server of the services: their interpreter and flags, the environment they
        share (no HP_* setting of this process: each service gets its own), and the modules
        two services or more import at start (bytecode.preload; every one's start-up modules
        when the cache has no list)."""
        prefix = bytecode.embedded_prefix()
        env = bytecode.service_env(dict(os.environ), prefix, writable=True)
        shared = {k: v for k, v in env.items() if not k.startswith("HP_")}
        starts = bytecode.startup_modules([m.module for m in modules])
        return Forkserver(
            [self.python, bytecode.OPTIMIZE_FLAG],
            shared,
            bytecode.preload(prefix) or starts,
            self.data_dir / "logs" / "forkserver.log",
        )

    def _ports(self, previous: dict[str, Any] | None) -> Callable[..., int]:
        """`port(name, key="port")`: from --base-port up, else the remembered one, else free."""
        remembered: dict[str, dict[str, Any]] = {}
        for p in (previous or {}).get("parts", []):
            if isinstance(p, dict) and isinstance(p.get("name"), str):
                remembered[p["name"]] = p
        taken: set[int] = set()
        seq = None if self.base_port is None else iter(range(self.base_port, 65536))

        def port(name: str, key: str = "port") -> int:
            if seq is not None:
                p = next(seq, None)
                if p is None or not port_free(p):
                    raise StackError(f"port {p} (for {name}) is in use: choose another --base-port")
            else:
                old = remembered.get(name, {}).get(key)
                if isinstance(old, int) and old not in taken and port_free(old):
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

        return port

    def _plan_docker(self, plan: Plan, modules: list[Module], pg_dir: Path) -> list[Module]:
        """Docker (the system's or our own), the addon Postgres and the LDAP port for apps."""
        if APPS_MODULE not in {m.module for m in modules}:
            return modules
        wanted = os.environ.get("HP_DOCKER_HOST", "")
        if wanted:
            plan.docker_url = wanted
        elif docker_answers(SYSTEM_DOCKER):
            plan.docker_url = f"unix://{SYSTEM_DOCKER}"
        elif docker_answers(TEST_DOCKER):
            # the dockerd `make test` leaves running: a second one would fight it over iptables
            plan.docker_url = f"unix://{TEST_DOCKER}"
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
            plan.docker_url = daemon.url
            plan.parts.append(
                Part(
                    "docker",
                    PartKind.DOCKER,
                    0,
                    daemon.url,
                    daemon.url,
                    self.data_dir / "logs" / "dockerd.log",
                    DockerRunner(daemon),
                )
            )
        addon_dir = pg_dir.with_name(pg_dir.name + "-addons")
        addon = PostgresServer(
            addon_dir,
            port=stable_port(self.data_dir, "addon-postgres"),
            fsync=self.fsync,
            password=database_password(self.data_dir, "addon-database-password"),
            listen=(HOST, SERVICES_GATEWAY),
            hba_file=addon_dir / "pg_hba.conf",
            max_connections=MAX_CONNECTIONS,
        )
        plan.addon = addon
        plan.ldap_port = stable_port(self.data_dir, "ldap")
        plan.parts.append(
            Part(
                "addon-postgres",
                PartKind.ADDON_POSTGRES,
                addon.port,
                f"postgresql://{SERVICES_GATEWAY}:{addon.port}",
                f"tcp://{HOST}:{addon.port}",
                addon_dir / "postgres.log",
                ServerRunner(addon),
            )
        )
        return modules

    def _plan_edge(self, plan: Plan, modules: list[Module]) -> None:
        """nginx (run by the gateway as its child) on high loopback ports, if nginx is here."""
        if GATEWAY_MODULE not in {m.module for m in modules}:
            return
        try:
            find_binary("nginx", ("/usr/sbin",))
        except EmbeddedError:
            log.warning("no nginx here: apps are reachable only on their loopback ports")
            return
        plan.edge_ports = (
            stable_port(self.data_dir, "edge-http"),
            stable_port(self.data_dir, "edge-https"),
        )

    def _mail_env(self) -> dict[str, str]:
        """The mail servers on high loopback ports kept from one start to the next (mail
        clients are set up with them); run only as root with Postfix, Dovecot and rspamd here."""
        env = {
            f"HP_MAIL_{what.upper()}_PORT": str(stable_port(self.data_dir, f"mail-{what}"))
            for what in MAIL_PORTS
        }
        missing = [p for p in MAIL_PROGRAMS if shutil.which(p, path=MAIL_PATH) is None]
        run = os.geteuid() == 0 and not missing
        if not run:
            why = "it needs root" if not missing else "missing: " + ", ".join(missing)
            log.warning("the mail servers are not run (%s): mail settings are only recorded", why)
        env["HP_MAIL_SERVERS"] = "true" if run else "false"
        env["HP_MAIL_DIR"] = str(self.data_dir / "mail")
        return env

    def service_env(self, plan: Plan, port: int, name: str = "") -> dict[str, str]:
        """The environment of a service: ours, with the HP_* settings of this stack on top, and
        the services' byte-code cache (deploy/bytecode.py); a service with a NATS user of its
        name gets that user's credentials file (libs/events/nats_access.py)."""
        env = bytecode.service_env(dict(os.environ), bytecode.embedded_prefix(), writable=True)
        env.update(
            HP_DATABASE_URL=plan.database_url,
            HP_NATS_URL=plan.nats_url,
            HP_HTTP_HOST=HOST,
            HP_HTTP_PORT=str(port),
            HP_LOG_LEVEL=self.log_level,
            HP_DRAIN_SECONDS=str(DRAIN_SECONDS),
            HP_DATA_DIR=str(self.data_dir),
            HP_BACKUP_DIR=str(self.data_dir / "backup"),
            HP_APPS_DIR=str(self.data_dir / "apps"),
            HP_CERTS_DIR=str(self.data_dir / "certs"),
            # the mail root (mail_env): the backup service reads the mail store's snapshots
            HP_MAIL_DIR=str(self.data_dir / "mail"),
        )
        # a keyring of its own for each service that seals; the others (the gateway) none,
        # whatever this process's environment says
        env.pop("HP_KEYRING", None)
        if name in KEYRING_OWNERS:
            env["HP_KEYRING"] = str(keyring_file(self.data_dir / KEYRING_DIR, name))
        if name in SERVICE_USERS and plan.nats_credentials is not None:
            env["HP_NATS_CREDENTIALS"] = str(plan.nats_credentials / name)
        own = service_dsn(plan.database_url, self.data_dir, name)
        if own is not None:  # its own Postgres role (deploy/dbroles.py), not the superuser
            env["HP_DATABASE_URL"] = own
        if plan.docker_url:
            env.update(
                HP_DOCKER_HOST=plan.docker_url,
                HP_APPS_DIR=str(self.data_dir / "apps"),
                HP_BASE_CACHE=str(BASE_CACHE),
                HP_SERVICES_NETWORK=SERVICES_NETWORK,
                HP_SERVICES_SUBNET=SERVICES_SUBNET,
                HP_LDAP_HOST=f"{HOST},{SERVICES_GATEWAY}",
                HP_LDAP_PORT=str(plan.ldap_port),
            )
        if plan.edge_ports is not None:
            env.update(
                HP_EDGE="true",
                HP_EDGE_DIR=str(self.data_dir / "edge"),
                HP_EDGE_HTTP_PORT=str(plan.edge_ports[0]),
                HP_EDGE_HTTPS_PORT=str(plan.edge_ports[1]),
                HP_EDGE_BIND=HOST,
                HP_ACME_DIR=str(self.data_dir / "acme"),
                HP_CERTS_DIR=str(self.data_dir / "certs"),
            )
        if name == "notify":  # links in mail lead to the dashboard as this stack serves it
            if plan.edge_ports is not None:
                env["HP_NOTIFY_DASHBOARD_URL"] = f"https://my.localhost:{plan.edge_ports[1]}"
                env["HP_NOTIFY_EDGE_HTTPS_PORT"] = str(plan.edge_ports[1])
            else:
                gateway = next((p for p in plan.parts if p.name == "gateway"), None)
                if gateway is not None and gateway.url:
                    env["HP_NOTIFY_DASHBOARD_URL"] = gateway.url.rstrip("/")
        if name == "mail":
            env.update(self._mail_env())
            if plan.docker_url:  # apps send from their networks to the services network's address
                env["HP_MAIL_APPS_LISTEN"] = SERVICES_GATEWAY
                env["HP_MAIL_APPS_PORT"] = str(stable_port(self.data_dir, "mail-apps"))
        if plan.addon is not None:
            env.update(
                HP_ADDON_PG_DSN=plan.addon.dsn_for("postgres"),
                HP_ADDON_PG_HBA=str(plan.addon.datadir / "pg_hba.conf"),
                HP_ADDON_PG_PORT=str(plan.addon.port),
            )
        return env
