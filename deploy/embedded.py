"""Embedded servers: Postgres and NATS (JetStream) in a data directory, on free loopback ports.

Used by the local stack (`homeport up`) and by the test fixtures, so both start the same way.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = [
    "EmbeddedError",
    "NatsServer",
    "PostgresServer",
    "check_binaries",
    "find_binary",
    "free_port",
    "wait_port",
]

_PG_DIRS = (
    "/usr/lib/postgresql/15/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/17/bin",
)


class EmbeddedError(RuntimeError):
    """An embedded server could not be found or started."""


def find_binary(name: str, extra_dirs: tuple[str, ...] = ()) -> str:
    """Return the path of an executable, looking in `extra_dirs` then PATH and sbin folders."""
    for d in extra_dirs:
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if found:
        return found
    raise EmbeddedError(f"{name} not found: run `make test` or `make run` to install it")


def check_binaries() -> None:
    """Raise EmbeddedError naming the first server binary (Postgres, nats-server) not installed."""
    for name in ("initdb", "postgres", "pg_isready"):
        find_binary(name, _PG_DIRS)
    find_binary("nats-server")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, deadline_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts on 127.0.0.1:port, or raise after `deadline_s`."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedError(f"process exited with code {proc.returncode} before port {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise EmbeddedError(f"nothing listened on 127.0.0.1:{port} within {deadline_s:.0f}s")


def _drop_to() -> tuple[int, int] | None:
    """Postgres refuses to run as root: when we are root, run it as the `postgres` user."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError as e:
        raise EmbeddedError("running as root needs a `postgres` system user") from e
    return pw.pw_uid, pw.pw_gid


def _chown_tree(path: Path, ids: tuple[int, int] | None) -> None:
    if ids is None:
        return
    for p in [path, *path.rglob("*")]:
        os.chown(p, *ids)


@dataclass
class PostgresServer:
    """A Postgres cluster in `datadir`, listening on 127.0.0.1:`port` (and a socket in datadir)."""

    datadir: Path
    port: int = 0
    fsync: bool = True
    log_path: Path | None = None
    # With a password, TCP logins need it (scram-sha-256); without, loopback trust (tests).
    password: str | None = field(default=None, repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        cred = "postgres" if self.password is None else f"postgres:{quote(self.password, safe='')}"
        return f"postgresql://{cred}@127.0.0.1:{self.port}/{database}"

    def _user_kwargs(self) -> dict[str, Any]:
        ids = _drop_to()
        return {} if ids is None else {"user": ids[0], "group": ids[1], "extra_groups": []}

    def init(self) -> None:
        """Create the cluster if the data directory holds none yet."""
        pgdata = self.datadir / "pgdata"
        if (pgdata / "PG_VERSION").exists():
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        pgdata.mkdir(mode=0o700, exist_ok=True)
        _chown_tree(self.datadir, _drop_to())
        initdb = find_binary("initdb", _PG_DIRS)
        auth = ["--auth=trust"]
        pwfile = self.datadir / ".initdb-password"
        if self.password is not None:
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.password + "\n")
            _chown_tree(pwfile, _drop_to())
            # The socket lives in the 0700 data folder: only its owner reaches it.
            auth = ["--auth-host=scram-sha-256", "--auth-local=trust", f"--pwfile={pwfile}"]
        try:
            r = subprocess.run(
                [
                    initdb,
                    "-D",
                    str(pgdata),
                    "-U",
                    "postgres",
                    *auth,
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-instructions",
                ],
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                **self._user_kwargs(),
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if r.returncode != 0:
            msg = r.stderr.decode(errors="replace").strip()
            raise EmbeddedError(
                f"initdb in {pgdata} failed ({msg}); when run as root every parent folder "
                "must be searchable by the postgres user"
            )

    def start(self, deadline_s: float = 30.0) -> None:
        """Start postgres in the foreground as our child; returns when it accepts connections."""
        self.init()
        if self.port == 0:
            self.port = free_port()
        postgres = find_binary("postgres", _PG_DIRS)
        pgdata = self.datadir / "pgdata"
        log = open(self.log_path or (self.datadir / "postgres.log"), "ab")
        self._proc = subprocess.Popen(
            [
                postgres,
                "-D",
                str(pgdata),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self.datadir),
                "-c",
                f"fsync={'on' if self.fsync else 'off'}",
                "-c",
                "max_connections=300",
                "-c",
                "shared_buffers=256MB",
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "logging_collector=off",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
            **self._user_kwargs(),
        )
        log.close()
        wait_port(self.port, deadline_s, self._proc)
        self._wait_ready(deadline_s)

    def _wait_ready(self, deadline_s: float) -> None:
        pg_isready = find_binary("pg_isready", _PG_DIRS)
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            r = subprocess.run(
                [pg_isready, "-h", "127.0.0.1", "-p", str(self.port), "-q"], check=False
            )
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise EmbeddedError(f"postgres on port {self.port} not ready within {deadline_s:.0f}s")

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def poll(self) -> int | None:
        """The exit code if the server process has exited (it is reaped), else None."""
        return None if self._proc is None else self._proc.poll()

    def stop(self, deadline_s: float = 20.0) -> None:
        """Fast shutdown (SIGINT), then SIGKILL after the deadline."""
        _stop(self._proc, signal.SIGINT, deadline_s)
        self._proc = None


@dataclass
class NatsServer:
    """nats-server with JetStream, its store in `datadir`, on 127.0.0.1:`port`."""

    datadir: Path
    port: int = 0
    monitor_port: int = 0
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, deadline_s: float = 20.0) -> None:
        """Start nats-server (same ports and store as before on a restart)."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port()
        if self.monitor_port == 0:
            self.monitor_port = free_port()
        binary = find_binary("nats-server")
        log = open(self.log_path or (self.datadir / "nats.log"), "ab")
        self._proc = subprocess.Popen(
            [
                binary,
                "-a",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-m",
                str(self.monitor_port),
                "-js",
                "-sd",
                str(self.datadir / "jetstream"),
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        wait_port(self.port, deadline_s, self._proc)
        wait_port(self.monitor_port, deadline_s, self._proc)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def poll(self) -> int | None:
        """The exit code if the server process has exited (it is reaped), else None."""
        return None if self._proc is None else self._proc.poll()

    def stop(self, deadline_s: float = 10.0) -> None:
        _stop(self._proc, signal.SIGTERM, deadline_s)
        self._proc = None


def _stop(proc: subprocess.Popen[bytes] | None, sig: int, deadline_s: float) -> None:
    if proc is None or proc.poll() is not None:
        if proc is not None:
            proc.wait()
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=deadline_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def astop(proc: asyncio.subprocess.Process, sig: int, deadline_s: float) -> None:
    """Stop an asyncio child: signal, wait up to the deadline, then SIGKILL."""
    if proc.returncode is not None:
        return
    proc.send_signal(sig)
    try:
        await asyncio.wait_for(proc.wait(), deadline_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
