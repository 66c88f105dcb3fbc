"""Embedded servers: Postgres and NATS (JetStream) in a data directory, on free loopback ports.

Used by the local stack (`homeport up`) and by the test fixtures, so both start the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from libs.events.nats_access import (
    DEFAULT_PREFIX,
    DEFAULT_STREAM,
    HARNESS,
    SERVICE_USERS,
    ensure_credentials,
    read_credentials,
    render_authorization,
)

__all__ = [
    "DockerDaemon",
    "EmbeddedError",
    "NatsServer",
    "PostgresServer",
    "check_binaries",
    "docker_answers",
    "find_binary",
    "free_port",
    "free_ports",
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
    return free_ports(1)[0]


# Ports handed out lie below the kernel's ephemeral range (Linux: 32768-60999), where no
# outgoing connection takes one between our pick and the server's bind (a CI run saw Postfix
# refused "Address already in use" for a port bind(0) had given moments before). Like the
# kernel, each process walks the range from a random start, so two processes rarely try the
# same port, and one that is taken is skipped. HP_FREE_PORTS=<low>-<high> narrows the range:
# the test workers each get their own (tests/conftest.py), since a port one picked stays free
# until its server binds it, seconds later, and another walking by could pick it meanwhile.
_PICK_LOW, _PICK_HIGH = 20000, 32767
# A server starting is polled this often (a refused loopback connect or a small file read:
# cheap); a start is counted from when it is ready, so a coarse poll is time lost at each one.
_POLL_S = 0.01
_cursor = [secrets.randbelow(_PICK_HIGH - _PICK_LOW + 1)]


def _pick_range() -> tuple[int, int]:
    """The range ports are picked from: HP_FREE_PORTS if it names one inside ours."""
    low, sep, high = os.environ.get("HP_FREE_PORTS", "").partition("-")
    if sep and low.isdigit() and high.isdigit():
        if _PICK_LOW <= int(low) < int(high) <= _PICK_HIGH:
            return int(low), int(high)
    return _PICK_LOW, _PICK_HIGH


def free_ports(
    n: int, *, host: str = "127.0.0.1", kind: socket.SocketKind = socket.SOCK_STREAM
) -> list[int]:
    """`n` different ports on `host` (TCP, or `kind`), free right now (each held while the
    next is picked)."""
    low, high = _pick_range()
    span = high - low + 1
    with contextlib.ExitStack() as held:
        ports: list[int] = []
        for _ in range(span):
            if len(ports) == n:
                break
            port = low + _cursor[0] % span
            _cursor[0] += 1
            s = socket.socket(socket.AF_INET, kind)
            try:
                s.bind((host, port))
            except OSError:
                s.close()
                continue
            held.enter_context(s)
            ports.append(port)
        while len(ports) < n:  # that range is full: let the kernel pick
            s = held.enter_context(socket.socket(socket.AF_INET, kind))
            s.bind((host, 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def wait_port(
    port: int,
    deadline_s: float,
    proc: subprocess.Popen[bytes] | None = None,
    host: str = "127.0.0.1",
) -> None:
    """Wait until something accepts on host:port, or raise after `deadline_s`."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedError(f"process exited with code {proc.returncode} before port {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(_POLL_S)
    raise EmbeddedError(f"nothing listened on {host}:{port} within {deadline_s:.0f}s")


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
    """A Postgres cluster in `datadir`, listening on `listen`:`port` (and a socket in datadir)."""

    datadir: Path
    port: int = 0
    fsync: bool = True
    log_path: Path | None = None
    # With a password, TCP logins need it (scram-sha-256); without, loopback trust (tests).
    password: str | None = field(default=None, repr=False)
    # Addresses to listen on; the first is where dsn, readiness checks and pg_isready connect.
    listen: tuple[str, ...] = ("127.0.0.1",)
    # A pg_hba.conf outside the data directory, kept by someone else (the addon manager);
    # it must exist and be readable by the server's user before start().
    hba_file: Path | None = None
    # Each allowed connection costs shared memory touched at start (~3 MiB per 100 at rest);
    # the test fixtures' one server holds many databases, the stack's clusters need far fewer.
    max_connections: int = 300
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        cred = "postgres" if self.password is None else f"postgres:{quote(self.password, safe='')}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"postgresql://{cred}@{host}:{self.port}/{database}"

    @property
    def host(self) -> str:
        """The address clients on this machine use: 127.0.0.1 if listened on, else the first."""
        return "127.0.0.1" if "127.0.0.1" in self.listen else self.listen[0]

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
        if not self.listen:
            raise EmbeddedError("PostgresServer.listen is empty: give at least one address")
        addresses = ",".join(self.listen)
        extra: list[str] = []
        if self.hba_file is not None:
            if not self.hba_file.is_file():
                raise EmbeddedError(f"{self.hba_file} missing: write the pg_hba.conf first")
            extra = ["-c", f"hba_file={self.hba_file}"]
        log = open(self.log_path or (self.datadir / "postgres.log"), "ab")
        self._proc = subprocess.Popen(
            [
                postgres,
                "-D",
                str(pgdata),
                "-p",
                str(self.port),
                "-h",
                addresses,
                "-k",
                str(self.datadir),
                "-c",
                f"fsync={'on' if self.fsync else 'off'}",
                "-c",
                f"max_connections={self.max_connections}",
                "-c",
                # no logical replication here: without workers, no launcher process (~1.3 MiB)
                "max_logical_replication_workers=0",
                "-c",
                "jit=off",  # as the server's units: a JIT-compiled query maps LLVM (~30+ MiB)
                "-c",
                "shared_buffers=64MB",  # 256MB: +10 MiB at rest, up to +192 MiB as it fills
                "-c",
                f"listen_addresses={addresses}",
                "-c",
                "logging_collector=off",
                *extra,
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
            **self._user_kwargs(),
        )
        log.close()
        self._wait_ready(time.monotonic() + deadline_s)

    def _wait_ready(self, end: float) -> None:
        """Until the server says it is ready, as `pg_ctl start -w` waits: the status line of
        `postmaster.pid` (written by this very process) reads "ready"; then its port accepts.
        pg_isready asks instead when that file cannot be read."""
        assert self._proc is not None
        pidfile = self.datadir / "pgdata" / "postmaster.pid"
        while time.monotonic() < end:
            if self._proc.poll() is not None:
                raise EmbeddedError(
                    f"postgres exited with code {self._proc.returncode} before it was ready"
                    f" (log: {self.log_path or self.datadir / 'postgres.log'})"
                )
            try:
                lines = pidfile.read_text(errors="replace").splitlines()
            except FileNotFoundError:
                lines = []
            except OSError:
                self._wait_isready(end)
                return
            # line 1: the postmaster's pid; line 8: its status (PM_STATUS_* in pidfile.h)
            if len(lines) >= 8 and lines[0].strip() == str(self._proc.pid):
                if lines[7].strip() == "ready":
                    wait_port(self.port, max(end - time.monotonic(), 1.0), self._proc, self.host)
                    return
            time.sleep(_POLL_S)
        raise EmbeddedError(f"postgres on port {self.port} not ready in time")

    def _wait_isready(self, end: float) -> None:
        wait_port(self.port, max(end - time.monotonic(), 0.0), self._proc, host=self.host)
        pg_isready = find_binary("pg_isready", _PG_DIRS)
        while time.monotonic() < end:
            r = subprocess.run(
                [pg_isready, "-h", self.host, "-p", str(self.port), "-q"], check=False
            )
            if r.returncode == 0:
                return
            time.sleep(0.05)
        raise EmbeddedError(f"postgres on port {self.port} not ready in time")

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
    """nats-server with JetStream, its store in `datadir`, on 127.0.0.1:`port`, with a user per
    service (libs/events/nats_access.py): their passwords in `<datadir>/credentials/<user>`
    (0600, made once), the server's `authorization` in `<datadir>/auth.conf` (0600, written at
    each start). `harness` adds a user allowed every subject, for tests and benchmarks only
    (`harness_url`); a stack never has one."""

    datadir: Path
    port: int = 0
    monitor_port: int = 0
    log_path: Path | None = None
    harness: bool = False
    stream: str = DEFAULT_STREAM
    prefix: str = DEFAULT_PREFIX
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The address, without credentials (each service brings its own file)."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def credentials_dir(self) -> Path:
        return self.datadir / "credentials"

    def credentials(self, user: str) -> Path:
        """The `user:password` file of `user` (made by start())."""
        return self.credentials_dir / user

    @property
    def harness_url(self) -> str:
        """The address with the harness user's credentials in it (tests, benchmarks)."""
        if not self.harness:
            raise EmbeddedError("this nats-server has no harness user")
        user, password = read_credentials(self.credentials(HARNESS))
        return f"nats://{user}:{quote(password, safe='')}@127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        users = [*SERVICE_USERS, *([HARNESS] if self.harness else [])]
        passwords = ensure_credentials(self.credentials_dir, users)
        conf = self.datadir / "auth.conf"
        text = render_authorization(passwords, stream=self.stream, prefix=self.prefix)
        tmp = conf.with_name(".auth.conf.new")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, conf)
        return conf

    def start(self, deadline_s: float = 20.0) -> None:
        """Start nats-server (same ports and store as before on a restart)."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port()
        if self.monitor_port == 0:
            self.monitor_port = free_port()
        binary = find_binary("nats-server")
        conf = self._write_config()
        log = open(self.log_path or (self.datadir / "nats.log"), "ab")
        self._proc = subprocess.Popen(
            [
                binary,
                "-c",
                str(conf),
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


def docker_answers(sock_path: Path, timeout: float = 1.0) -> bool:
    """True when a Docker API on the unix socket answers GET /_ping with 200 OK."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(sock_path))
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = b""
            while len(reply) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False
    head, _, body = reply.partition(b"\r\n\r\n")
    return head.split(b" ", 2)[1:2] == [b"200"] and body.strip() == b"OK"


@dataclass
class DockerDaemon:
    """A dockerd of our own: its data-root, exec-root, pidfile and unix socket, no docker0.

    `start(detach=False)` runs it as our child (the local stack supervises it);
    `start(detach=True)` lets it outlive us (test runs share one, and its image cache).
    """

    data_root: Path
    exec_root: Path
    pidfile: Path
    socket_path: Path
    address_pool: str = "base=10.220.0.0/14,size=24"
    bridge: str = "none"
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def answers(self, timeout: float = 1.0) -> bool:
        return docker_answers(self.socket_path, timeout)

    def argv(self) -> list[str]:
        return [
            find_binary("dockerd"),
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "--pidfile",
            str(self.pidfile),
            "-H",
            self.url,
            "--default-address-pool",
            self.address_pool,
            "--bridge",
            self.bridge,
        ]

    def start(self, deadline_s: float = 60.0, detach: bool = False) -> None:
        """Start dockerd; returns when its API answers, raises EmbeddedError after the deadline."""
        argv = self.argv()
        for d in (self.data_root, self.exec_root, self.pidfile.parent, self.socket_path.parent):
            d.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path or (self.socket_path.parent / "dockerd.log")
        log = open(log_path, "ab")
        try:
            if detach:
                # setsid -f forks: dockerd is not our child and outlives this process.
                r = subprocess.run(
                    [find_binary("setsid"), "-f", *argv],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    check=False,
                    timeout=deadline_s,
                )
                if r.returncode != 0:
                    raise EmbeddedError(f"setsid -f dockerd exited with code {r.returncode}")
            else:
                self._proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
                )
        finally:
            log.close()
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.answers():
                return
            if self._proc is not None and self._proc.poll() is not None:
                break
            time.sleep(0.1)
        tail = _tail(log_path)
        self.stop(5.0)
        raise EmbeddedError(
            f"dockerd on {self.socket_path} did not answer within {deadline_s:.0f}s; "
            f"see {log_path}: {tail}"
        )

    def pid(self) -> int | None:
        if self._proc is not None:
            return self._proc.pid
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def poll(self) -> int | None:
        """The exit code if our child dockerd has exited (it is reaped), else None."""
        return None if self._proc is None else self._proc.poll()

    def stop(self, deadline_s: float = 30.0) -> None:
        """SIGTERM (dockerd stops its containers), then SIGKILL after the deadline."""
        if self._proc is not None:
            _stop(self._proc, signal.SIGTERM, deadline_s)
            self._proc = None
            return
        pid = self.pid()
        if pid is None or not _is_dockerd(pid):
            return
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + deadline_s
        while time.monotonic() < end and _is_dockerd(pid):
            time.sleep(0.1)
        if _is_dockerd(pid):
            os.kill(pid, signal.SIGKILL)


def _is_dockerd(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return comm == "dockerd" and stat.rsplit(")", 1)[1].split()[0] != "Z"


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError as e:
        return str(e)
