"""The postgresql addon: a database and a role per app in the addon Postgres server.

The addon server is separate from the platform's own Postgres. Its pg_hba.conf is owned by this
module: a fixed header (the admin over the unix socket and loopback) plus one line per app that
lets the app's role into the app's database from the app's own network only. The app lines are
rendered from the table `homeport_addon.apps` in the admin database, so any manager instance
(after a restart, or a second one) writes the same file.

The server runs on demand (issue 15, idle memory): it is started by whoever supervises it
(`homeport up`, or `homeport-addon-postgres.path` on a server) once the flag file `wanted`
next to pg_hba.conf exists. `AddonPostgres.start` writes the flag before the first database is
made and waits for the server; the flag is never removed, so the server starts again at every
boot while its data dir may hold databases. Nothing needs the server while no app uses it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import asyncpg

from libs.events.pool import keep_session_state
from services.apps.errors import AppsError

__all__ = [
    "START_DEADLINE_S",
    "WANTED",
    "AddonError",
    "AddonPostgres",
    "PostgresCredentials",
    "addon_postgres",
    "wanted_flag",
]

WANTED = "wanted"  # the flag file next to pg_hba.conf: the addon server should run
START_DEADLINE_S = 60.0  # how long an operation waits for the addon server to answer
STARTING = "Starting the apps' database server"

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NAME = re.compile(r"app_[0-9a-f]{32}")
_ADMIN_USER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_PASSWORD = re.compile(r"[!-~]{22,256}")  # printable ASCII, no space: >= 128 bits when random
_HBA_LOCK = 0x686F6D65706F7274  # "homeport": session-wide advisory lock for the hba file
_APP_LOCK_NS = 0x68706131  # advisory lock namespace for one app (with hashtext(app_id))
_PG_BIN_ROOT = Path("/usr/lib/postgresql")

_HEADER = """\
# pg_hba.conf of the Homeport addon Postgres, written by services.apps.addons.postgresql.
# Do not edit: the app lines are rebuilt from the table homeport_addon.apps on every change.
# TYPE  DATABASE  USER  ADDRESS  METHOD
local   all       {admin}                 scram-sha-256
host    all       {admin}  127.0.0.1/32   scram-sha-256
host    all       {admin}  ::1/128        scram-sha-256
# apps: each app's role, into its own database, from its own network only
"""

_SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS homeport_addon;
REVOKE ALL ON SCHEMA homeport_addon FROM PUBLIC;
CREATE TABLE IF NOT EXISTS homeport_addon.apps (
    app_id uuid PRIMARY KEY,
    subnet cidr NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""


class AddonError(AppsError):
    """An addon operation failed; the message names the app and says what to do."""


@dataclass(frozen=True)
class PostgresCredentials:
    """What an app is told to connect with (the password never appears in repr)."""

    host: str
    port: int
    database: str
    username: str
    password: str = field(repr=False)

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = quote(self.username, safe="")
        pw = quote(self.password, safe="")
        return f"postgresql://{user}:{pw}@{host}:{self.port}/{quote(self.database, safe='')}"

    def env(self) -> dict[str, str]:
        """The HOMEPORT_POSTGRESQL_* variables the app's container gets."""
        return {
            "HOMEPORT_POSTGRESQL_HOST": self.host,
            "HOMEPORT_POSTGRESQL_PORT": str(self.port),
            "HOMEPORT_POSTGRESQL_DATABASE": self.database,
            "HOMEPORT_POSTGRESQL_USERNAME": self.username,
            "HOMEPORT_POSTGRESQL_PASSWORD": self.password,
            "HOMEPORT_POSTGRESQL_URL": self.url(),
        }


@dataclass(frozen=True)
class _Admin:
    host: str
    port: int
    user: str
    password: str | None = field(repr=False)
    database: str


def wanted_flag(hba_file: Path) -> Path:
    """The flag file whose existence asks for the addon server to run (next to pg_hba.conf)."""
    return hba_file.with_name(WANTED)


def addon_postgres(admin_dsn: str, host: str, port: int, hba_file: Path) -> AddonPostgres | None:
    """The addon Postgres, started on demand (nothing is asked of it yet); None without a DSN."""
    if not admin_dsn:
        return None
    return AddonPostgres(admin_dsn, host, port, hba_file, on_demand=True)


class AddonPostgres:
    """Manages per-app databases and roles in the addon Postgres and its pg_hba.conf."""

    def __init__(
        self,
        admin_dsn: str,
        host: str,
        port: int,
        hba_file: Path,
        *,
        connection_limit: int = 20,
        bin_dir: Path | None = None,
        command_timeout_s: float = 600.0,
        on_demand: bool = False,
        start_deadline_s: float = START_DEADLINE_S,
    ) -> None:
        self._dsn = admin_dsn
        self._admin = _parse_admin(admin_dsn)
        self.host = host
        self.port = port
        self.hba_file = hba_file
        self._connection_limit = connection_limit
        self._bin_dir = bin_dir
        self._timeout = command_timeout_s
        self._schema_ready = False
        # on demand: the flag asks for the server; else it is always there (run by the caller)
        self.wanted = wanted_flag(hba_file) if on_demand else None
        self._start_deadline = start_deadline_s
        self._started = False
        self._starting = asyncio.Lock()

    def __repr__(self) -> str:
        a = self._admin
        return f"AddonPostgres(admin={a.user}@{a.host}:{a.port}, apps at {self.host}:{self.port})"

    # ---- starting on demand ----------------------------------------------------------------

    def is_wanted(self) -> bool:
        """Whether the server was ever asked for (always, for one that is not on demand)."""
        return self.wanted is None or self.wanted.exists()

    async def ask(self) -> None:
        """Write the flag that asks for the server, if missing (no wait)."""
        if self.wanted is not None and not self.wanted.exists():
            await asyncio.to_thread(_write_flag, self.wanted)

    async def start(self, say: Callable[[str], Awaitable[None]] | None = None) -> None:
        """Ask for the server (the flag, if missing), wait until it answers (START_DEADLINE_S at
        most; `say` is told once when it has to wait), and make its pg_hba true to the table."""
        if self._started:
            return
        async with self._starting:
            if self._started:
                return
            await self.ask()
            await self._wait_up(say)
            await self.sync_hba()
            self._started = True

    async def _wait_up(self, say: Callable[[str], Awaitable[None]] | None) -> None:
        a = self._admin
        loop = asyncio.get_running_loop()
        end = loop.time() + self._start_deadline
        told = False
        while True:
            try:
                conn = await asyncpg.connect(self._dsn, timeout=5)
            except (OSError, TimeoutError, asyncpg.CannotConnectNowError) as e:
                if loop.time() >= end:
                    raise AddonError(
                        f"the apps' database server (the addon Postgres, unit "
                        f"homeport-addon-postgres, at {a.host}:{a.port}) did not answer within "
                        f"{self._start_deadline:.0f} s ({type(e).__name__}): check its log "
                        "(homeport logs addon-postgres), then retry"
                    ) from e
                if not told and say is not None:
                    told = True
                    await say(STARTING)
                await asyncio.sleep(0.25)
                continue
            except asyncpg.PostgresError as e:
                raise AddonError(
                    f"the addon Postgres at {a.host}:{a.port} refused the admin {a.user} "
                    f"({e.sqlstate}: {e}): check the admin password in HP_ADDON_PG_DSN"
                ) from e
            await conn.close()
            return

    # ---- hba file -------------------------------------------------------------------------

    def ensure_hba_file(self, owner: tuple[int, int] | None = None) -> None:
        """Write the header-only pg_hba.conf if none exists yet (before the server's first start).

        `owner` (uid, gid) is for when we are root and the server runs as another user; later
        rewrites keep the file's owner and mode.
        """
        if self.hba_file.exists():
            return
        self.hba_file.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.hba_file, self._render([]), owner=owner)

    async def sync_hba(self) -> None:
        """Rewrite pg_hba.conf from the apps table and make the server load it (on start-up)."""
        async with self._connect("the addon server") as conn:
            await self._ensure_schema(conn)
            await self._rebuild_hba(conn, "the addon server")

    def _render(self, rows: Sequence[tuple[str, str]]) -> str:
        lines = [_HEADER.format(admin=self._admin.user)]
        for app_id, subnet in sorted(rows):
            name = _name(app_id)
            lines.append(f"host    {name}  {name}  {subnet}  scram-sha-256\n")
        return "".join(lines)

    async def _rebuild_hba(self, conn: asyncpg.Connection, what: str) -> None:
        """Render the file from the table under the hba lock, replace it, reload, wait for it."""
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _HBA_LOCK)
                rows = await conn.fetch(
                    "SELECT app_id::text, subnet::text FROM homeport_addon.apps"
                )
                text = self._render([(r[0], r[1]) for r in rows])
                await asyncio.to_thread(_write_if_changed, self.hba_file, text)
                bad = await conn.fetch(
                    "SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL"
                )
                if bad:
                    errs = "; ".join(f"line {r[0]}: {r[1]}" for r in bad)
                    raise AddonError(
                        f"{self.hba_file} has errors after writing it for {what} ({errs}): "
                        "check that the server's hba_file setting points at this file"
                    )
                before = await conn.fetchval("SELECT clock_timestamp()")
                await conn.execute("SELECT pg_reload_conf()")
        except OSError as e:
            raise AddonError(
                f"cannot write {self.hba_file} for {what} ({e.strerror}): "
                "check the folder exists and is writable by the apps service"
            ) from e
        await self._wait_reloaded(before, what)

    async def _wait_reloaded(self, before: datetime, what: str) -> None:
        """A new session reports the postmaster's reload time: once it is past `before`, new
        connections are checked against the file just written."""
        loop = asyncio.get_running_loop()
        end = loop.time() + 10.0
        while True:
            async with self._connect(what) as probe:
                done = await probe.fetchval("SELECT pg_conf_load_time() > $1", before)
            if done:
                return
            if loop.time() > end:
                raise AddonError(
                    f"the addon Postgres did not reload pg_hba.conf within 10 s for {what}: "
                    "check its log"
                )
            await asyncio.sleep(0.05)

    # ---- connections and locks ------------------------------------------------------------

    @asynccontextmanager
    async def _connect(self, what: str) -> AsyncIterator[asyncpg.Connection]:
        a = self._admin
        try:
            conn = await asyncpg.connect(
                self._dsn, timeout=10, server_settings={"lock_timeout": "60s"}
            )
        except (OSError, asyncpg.PostgresError, TimeoutError) as e:
            raise AddonError(
                f"cannot reach the addon Postgres at {a.host}:{a.port} as {a.user} for {what} "
                f"({type(e).__name__}): check that it runs and the admin password is right"
            ) from e
        try:
            yield conn
        except asyncpg.PostgresError as e:
            raise AddonError(
                f"the addon Postgres refused an operation for {what} ({e.sqlstate}: {e}): "
                "check its log, then retry"
            ) from e
        finally:
            await conn.close()

    async def _ensure_schema(self, conn: asyncpg.Connection) -> None:
        if self._schema_ready:
            return
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _HBA_LOCK)
            await conn.execute(_SCHEMA_SQL)
            await conn.execute(
                f"REVOKE CONNECT ON DATABASE {_ident(self._admin.database)} FROM PUBLIC"
            )
        self._schema_ready = True

    @asynccontextmanager
    async def _app_lock(self, conn: asyncpg.Connection, app_id: str) -> AsyncIterator[None]:
        """One operation per app at a time, across manager instances."""
        keep_session_state(conn)  # a no-op on our own connections; the rule for session locks
        await conn.execute("SELECT pg_advisory_lock($1, hashtext($2))", _APP_LOCK_NS, app_id)
        try:
            yield
        finally:
            if not conn.is_closed():
                await conn.execute(
                    "SELECT pg_advisory_unlock($1, hashtext($2))", _APP_LOCK_NS, app_id
                )

    # ---- the API --------------------------------------------------------------------------

    async def provision(
        self, app_id: str, subnet: str, password: str | None = None
    ) -> PostgresCredentials:
        """Create (or update) the app's role and database; allow it in from `subnet` only."""
        _check_app_id(app_id)
        net = _check_subnet(app_id, subnet)
        if password is None:
            password = secrets.token_urlsafe(24)
        elif not _PASSWORD.fullmatch(password):
            raise AddonError(
                f"the Postgres password given for app {app_id} is not 22-256 printable ASCII "
                "characters without spaces: omit it to get a random one"
            )
        await self.start()
        name = _name(app_id)
        role, db = _ident(name), _ident(name)
        verifier = _literal(_scram_verifier(password))
        attrs = (
            "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT NOREPLICATION NOBYPASSRLS "
            f"CONNECTION LIMIT {int(self._connection_limit)}"
        )
        what = f"app {app_id}"
        async with self._connect(what) as conn:
            await self._ensure_schema(conn)
            async with self._app_lock(conn, app_id):
                if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name):
                    await conn.execute(f"ALTER ROLE {role} WITH {attrs} PASSWORD {verifier}")
                else:
                    await conn.execute(f"CREATE ROLE {role} WITH {attrs} PASSWORD {verifier}")
                if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                    await conn.execute(f"ALTER DATABASE {db} OWNER TO {role}")
                else:
                    await conn.execute(
                        f"CREATE DATABASE {db} OWNER {role} TEMPLATE template0 ENCODING 'UTF8'"
                    )
                await conn.execute(f"REVOKE ALL ON DATABASE {db} FROM PUBLIC")
                await conn.execute(
                    "INSERT INTO homeport_addon.apps (app_id, subnet) VALUES ($1, $2)"
                    " ON CONFLICT (app_id) DO UPDATE SET subnet = EXCLUDED.subnet,"
                    " updated_at = now()",
                    app_id,
                    str(net),
                )
                await self._rebuild_hba(conn, what)
        return PostgresCredentials(self.host, self.port, name, name, password)

    async def deprovision(self, app_id: str) -> None:
        """Remove the app's hba line, end its sessions, drop its database and role."""
        _check_app_id(app_id)
        await self.start()
        name = _name(app_id)
        what = f"app {app_id}"
        async with self._connect(what) as conn:
            await self._ensure_schema(conn)
            async with self._app_lock(conn, app_id):
                await conn.execute("DELETE FROM homeport_addon.apps WHERE app_id = $1", app_id)
                await self._rebuild_hba(conn, what)
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                    name,
                )
                for db in (name, f"{name}_restore", f"{name}_old"):
                    await conn.execute(f"DROP DATABASE IF EXISTS {_ident(db)} WITH (FORCE)")
                await conn.execute(f"DROP ROLE IF EXISTS {_ident(name)}")

    async def exists(self, app_id: str) -> bool:
        """Whether the app's database exists (never, while the server was never asked for)."""
        _check_app_id(app_id)
        if not self.is_wanted():
            return False
        await self.start()
        async with self._connect(f"app {app_id}") as conn:
            found = await conn.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", _name(app_id)
            )
        return found is not None

    async def dump(self, app_id: str, dest: Path) -> None:
        """Write a pg_dump custom-format archive of the app's database to `dest` (mode 0600)."""
        _check_app_id(app_id)
        name = _name(app_id)
        if not await self.exists(app_id):
            raise AddonError(f"app {app_id} has no Postgres database to dump: provision it first")
        if not await asyncio.to_thread(dest.parent.is_dir):
            raise AddonError(f"cannot dump app {app_id} to {dest}: create {dest.parent} first")
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            await self._run(
                app_id,
                "pg_dump",
                ["--format=custom", f"--file={tmp}", *self._conn_args(name)],
            )
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    async def restore(self, app_id: str, src: Path) -> None:
        """Replace the app's database with the content of a dump made by `dump`.

        The dump is restored into a scratch database first and swapped in by renaming, so a
        broken dump leaves the app's data as it was.
        """
        _check_app_id(app_id)
        if not await asyncio.to_thread(src.is_file):
            raise AddonError(f"cannot restore app {app_id} from {src}: no such file")
        await self.start()
        await self._run(app_id, "pg_restore", ["--list", str(src)])
        name = _name(app_id)
        tmp, old = f"{name}_restore", f"{name}_old"
        what = f"app {app_id}"
        async with self._connect(what) as conn, self._app_lock(conn, app_id):
            if not await conn.fetchval(
                "SELECT 1 FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba"
                " WHERE d.datname = $1 AND r.rolname = $1",
                name,
            ):
                raise AddonError(
                    f"app {app_id} has no Postgres database to restore into: provision it first"
                )
            await conn.execute(f"DROP DATABASE IF EXISTS {_ident(tmp)} WITH (FORCE)")
            await conn.execute(f"DROP DATABASE IF EXISTS {_ident(old)} WITH (FORCE)")
            await conn.execute(
                f"CREATE DATABASE {_ident(tmp)} OWNER {_ident(name)}"
                " TEMPLATE template0 ENCODING 'UTF8'"
            )
            await conn.execute(f"REVOKE ALL ON DATABASE {_ident(tmp)} FROM PUBLIC")
            try:
                await self._run(
                    app_id,
                    "pg_restore",
                    [
                        "--no-owner",
                        f"--role={name}",
                        "--exit-on-error",
                        "--single-transaction",
                        *self._conn_args(tmp),
                        str(src),
                    ],
                )
            except AddonError:
                await conn.execute(f"DROP DATABASE IF EXISTS {_ident(tmp)} WITH (FORCE)")
                raise
            # No session may hold the database while it is renamed: shut the door, then empty it.
            await conn.execute(f"ALTER DATABASE {_ident(name)} ALLOW_CONNECTIONS false")
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                name,
            )
            await conn.execute(f"ALTER DATABASE {_ident(name)} RENAME TO {_ident(old)}")
            await conn.execute(f"ALTER DATABASE {_ident(tmp)} RENAME TO {_ident(name)}")
            await conn.execute(f"DROP DATABASE {_ident(old)} WITH (FORCE)")

    # ---- client programs ------------------------------------------------------------------

    def _conn_args(self, database: str) -> list[str]:
        a = self._admin
        return [
            f"--host={a.host}",
            f"--port={a.port}",
            f"--username={a.user}",
            f"--dbname={database}",
        ]

    def _binary(self, app_id: str, program: str) -> str:
        dirs: list[Path] = []
        if self._bin_dir is not None:
            dirs.append(self._bin_dir)
        elif _PG_BIN_ROOT.is_dir():
            versions = [p for p in _PG_BIN_ROOT.iterdir() if p.name.isdigit()]
            dirs.extend(p / "bin" for p in sorted(versions, key=lambda p: -int(p.name)))
        for d in dirs:
            if os.access(d / program, os.X_OK):
                return str(d / program)
        found = shutil.which(program) if self._bin_dir is None else None
        if found is None:
            raise AddonError(
                f"{program} not found for app {app_id}: install the Postgres client programs "
                "(postgresql-client) matching the addon server's version"
            )
        return found

    async def _run(self, app_id: str, program: str, args: list[str]) -> None:
        """Run a Postgres client program; the admin password goes in its environment only."""
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "PGCONNECT_TIMEOUT": "10"}
        if self._admin.password is not None:
            env["PGPASSWORD"] = self._admin.password
        argv = [self._binary(app_id, program), "--no-password", *args]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
        except OSError as e:
            raise AddonError(f"cannot run {program} for app {app_id}: {e.strerror}") from e
        try:
            _, err = await asyncio.wait_for(proc.communicate(), self._timeout)
        except TimeoutError as e:
            raise AddonError(
                f"{program} for app {app_id} did not finish within {self._timeout:.0f} s: "
                "check the addon Postgres's load, then retry"
            ) from e
        finally:
            if proc.returncode is None:
                with suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if proc.returncode != 0:
            msg = err.decode(errors="replace").strip().splitlines()
            tail = " / ".join(msg[-3:]) or f"exit code {proc.returncode}"
            raise AddonError(
                f"{program} failed for app {app_id} ({tail}): check the file and the server log"
            )


# ---- helpers ------------------------------------------------------------------------------


def _check_app_id(app_id: object) -> None:
    if not isinstance(app_id, str) or not _UUID.fullmatch(app_id):
        raise AddonError(
            f"app id {app_id!r} is not a lowercase UUID (like 0b6c…-…): pass the app instance's id"
        )


def _check_subnet(app_id: str, subnet: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        net = ipaddress.ip_network(subnet, strict=True)
    except (ValueError, TypeError) as e:
        raise AddonError(
            f"subnet {subnet!r} for app {app_id} is not a network address like 10.213.5.0/24: "
            "pass the app network's subnet"
        ) from e
    if net.prefixlen < (16 if net.version == 4 else 48):
        raise AddonError(
            f"subnet {net} for app {app_id} is too wide (at most /16 for IPv4, /48 for IPv6): "
            "pass the app network's own subnet"
        )
    return net


def _name(app_id: str) -> str:
    """Database and role name of an app: app_<32 hex digits>."""
    name = "app_" + app_id.replace("-", "")
    if not _NAME.fullmatch(name):  # not an assert: it guards SQL, and -O drops asserts
        raise ValueError(f"not an app id: {app_id!r}")
    return name


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    if "\\" in text or "\0" in text:
        raise ValueError("literal with a backslash or NUL")
    return "'" + text.replace("'", "''") + "'"


def _scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier Postgres stores, so the server never sees the password."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def _parse_admin(dsn: str) -> _Admin:
    u = urlsplit(dsn)
    if u.scheme not in ("postgresql", "postgres") or not u.hostname:
        raise AddonError(
            "the addon Postgres admin DSN is not a postgresql://user:password@host:port/db URL: "
            "check the apps service's configuration"
        )
    user = unquote(u.username or "postgres")
    if not _ADMIN_USER.fullmatch(user):
        raise AddonError(
            f"the addon Postgres admin user {user!r} is not a plain lowercase name: "
            "use a user like postgres"
        )
    password = None if u.password is None else unquote(u.password)
    database = unquote(u.path.lstrip("/")) or user
    return _Admin(u.hostname, u.port or 5432, user, password, database)


def _write_flag(path: Path) -> None:
    """The `wanted` flag, written atomically (a supervisor never sees a half-made file)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, "the apps' database server runs: an app has, or had, a database\n")
    except OSError as e:
        raise AddonError(
            f"cannot write {path} to start the apps' database server ({e.strerror}): check the "
            "folder exists and is writable by the apps service"
        ) from e


def _write_if_changed(path: Path, text: str) -> None:
    try:
        if path.read_text() == text:
            return
    except FileNotFoundError:
        pass
    _write_atomic(path, text)


def _write_atomic(path: Path, text: str, owner: tuple[int, int] | None = None) -> None:
    """Write a temp file next to `path` and rename it over, keeping the old owner and mode."""
    mode = 0o644
    try:
        st = path.stat()
        mode = st.st_mode & 0o777
        owner = owner or (st.st_uid, st.st_gid)
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if owner is not None and os.geteuid() == 0:
                os.fchown(f.fileno(), *owner)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
