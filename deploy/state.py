"""What the local stack keeps on disk and reads back: the data directory, its lock, `stack.json`
(pids, ports, states), `ports.json` (ports apps were given), and database passwords.

Layout of the data directory:

    <data>/stack.lock      flock held by the running stack (a second `up` is refused)
    <data>/stack.json      pids, ports, URLs, restarts and states (rewritten atomically)
    <data>/ports.json      ports apps were told once and keep (addon Postgres, LDAP, edge)
    <data>/keyring/<service>/keyring.json  the sealing keyring of each service that seals (by
                           the service through its HP_KEYRING; libs/events/sealing.py)
    <data>/keyring.json    the one keyring all services shared before, if the data dir is that
                           old: each service's keyring starts as a copy, then it goes
    <data>/postgres/       the Postgres cluster and its log
    <data>/nats/           the JetStream store and the nats-server log
    <data>/logs/<name>.log stdout and stderr (JSON lines) of each service
    <data>/postgres-addons/ the addon Postgres apps' databases live in (not the platform's)
    <data>/docker/         dockerd's data, when the stack runs its own (no system Docker)
    <data>/apps/           snapshots and the locally signed catalog
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import pwd
import secrets
import socket
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deploy.embedded import free_port
from deploy.errors import StackError

__all__ = [
    "FALLBACK_ROOT",
    "HOST",
    "KEYRING_DIR",
    "KEYRING_FILE",
    "LOCK_FILE",
    "PORTS_FILE",
    "STATE_FILE",
    "database_password",
    "is_running",
    "lock",
    "now",
    "port_free",
    "postgres_dir",
    "postgres_ids",
    "prepare_dir",
    "process_alive",
    "read_state",
    "stable_port",
    "start_time",
    "write_atomic",
    "write_state",
]

log = logging.getLogger("homeport.stack")

HOST = "127.0.0.1"
STATE_FILE = "stack.json"
LOCK_FILE = "stack.lock"
PORTS_FILE = "ports.json"
KEYRING_DIR = "keyring"  # <data>/keyring/<service>/keyring.json
KEYRING_FILE = "keyring.json"  # the shared keyring of data dirs from before
FALLBACK_ROOT = Path("/var/lib/homeport")


# -- processes ----------------------------------------------------------------------------


def start_time(pid: int) -> int | None:
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
    started = start_time(pid)
    return started is not None and (proc_start is None or started == proc_start)


def now() -> str:
    """The time of a state change, as `stack.json` records it."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def port_free(port: int) -> bool:
    """Whether `port` can be bound on the loopback address the stack uses."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


# -- stack.json ---------------------------------------------------------------------------


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


def write_state(data_dir: Path, state: dict[str, Any]) -> None:
    """Replace `stack.json` atomically (0600)."""
    write_atomic(data_dir / STATE_FILE, (json.dumps(state, indent=2) + "\n").encode())


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically (a 0600 file written, synced, then renamed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# -- ports.json and secrets ---------------------------------------------------------------


def stable_port(data_dir: Path, name: str) -> int:
    """A port apps are told once and keep (in their containers' settings): chosen at the first
    start, kept in `<data>/ports.json`, never changed; taken by something else -> StackError."""
    path = data_dir / PORTS_FILE
    try:
        ports = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        ports = {}
    port = ports.get(name)
    if isinstance(port, int):
        if not port_free(port):
            raise StackError(
                f"port {port} ({name}, which apps were given) is in use by another program:"
                " stop it, then start homeport again"
            )
        return port
    port = free_port()
    ports[name] = port
    write_atomic(path, (json.dumps(ports, indent=2) + "\n").encode())
    return port


def database_password(data_dir: Path, name: str = "database-password") -> str:
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


# -- the data directory -------------------------------------------------------------------


def lock(data_dir: Path) -> int:
    """Hold `stack.lock` (its fd, with our pid in it); another stack holding it -> StackError."""
    path = data_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StackError(
            f"homeport is already running in {data_dir} (pid {holder}): stop it with "
            f"Ctrl-C in its terminal or `kill {holder}`, or use another --data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def prepare_dir(data_dir: Path) -> None:
    """Data dir 0700 (0711 as root: the postgres user must pass through to its cluster).

    Everything below it is 0700 too, so 0711 lets nobody else read the NATS store or logs.
    """
    pg_ids = postgres_ids()
    data_dir.chmod(0o711 if pg_ids is not None else 0o700)
    for sub in ("postgres", "nats", "logs"):
        (data_dir / sub).mkdir(mode=0o700, exist_ok=True)
        (data_dir / sub).chmod(0o700)


def postgres_dir(data_dir: Path) -> Path:
    """Where the cluster lives: `<data>/postgres`, unless the postgres user cannot get there.

    As root with the checkout under a private folder (such as /root), the postgres user
    cannot pass through; the cluster then lives in /var/lib/homeport/postgres-<hash of the
    data dir> and `<data>/postgres/LOCATION` says so.
    """
    d = data_dir / "postgres"
    pg_ids = postgres_ids()
    if pg_ids is None or all(_can_enter(p, *pg_ids) for p in data_dir.parents):
        return d
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    FALLBACK_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    alt = FALLBACK_ROOT / f"postgres-{digest}"
    (d / "LOCATION").write_text(f"{alt}\n")
    log.info(
        "the postgres user cannot reach the data directory; cluster kept elsewhere",
        extra={"postgres_dir": str(alt)},
    )
    return alt


def postgres_ids() -> tuple[int, int] | None:
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
