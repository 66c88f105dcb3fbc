"""The server install, after deploy/install.sh has installed the Debian packages, copied the
platform to `/opt/homeport/<version>` and made its venv: `python -m deploy.install`.

Each step prints a progress line and is idempotent: a second run repairs what is missing and
changes nothing else (no unit restarted, no file rewritten with other bytes, no second user,
initdb or keyring). The steps, in order (`STEPS`):

checks     root, Debian 12; Debian's own postgresql/nats-server/nginx units and its mail
           servers' (postfix, dovecot, rspamd: the mail service runs its own, so the mail ports
           are free until mail is on) stopped and disabled (Homeport runs its own); every fixed
           port (deploy.units.PORTS, 80, 443) free or held by the Homeport unit it belongs to,
           else an error naming port and holder
users      system groups `homeport` (and `docker`), a user per unit (units.unit_user: one
           per service and the relay, `homeport-<name>`; the mail unit is root's) with its
           supplementary groups; the mail servers' own users (postfix, dovecot, dovenull,
           _rspamd, the store's `mail`) come with their Debian packages
dirs       units.directories(layout) with their owner and mode; on an install from before,
           what the one shared user `homeport` owned given to each service's user and
           identity's address keys moved to `<data>/ip-keys` (deploy/ownership.py)
current    `/opt/homeport/current` -> this version (kept when it points at another, updated one);
           `/usr/local/bin/homeport` -> its venv's `homeport`
config     `/etc/homeport/homeport.env` (0640 root:homeport): the database and NATS URLs on the
           fixed ports, the addon server's admin DSN, domains empty until setup; the database
           passwords, made once, in `/etc/homeport/*-password` (0600); `release.pub` and
           `release-url` when given
postgres   both clusters initdb'd as homeport-postgres (scram for TCP, local socket trust: the
           socket is in the 0700 data folder)
docker     dockerd (docker.io, enabled and started) unless --docker-host names another; the
           services network (the addon server listens on its gateway) and the addon pg_hba.conf
keyring    a sealing keyring per service that seals, `keyring/<service>/keyring.json`
           (libs.events.sealing; moved from `keyring/<service>.json` or a copy of an older
           install's shared keyring.json, which then goes), owned by its service's user
base-image the apps' Debian base tarball in HP_BASE_CACHE (debootstrap once, an existing
           tarball reused) and the images imported into dockerd
units      units.write_units into /etc/systemd/system, daemon-reload when one changed (and
           try-restart of a changed one), the platform database created, `systemctl enable
           --now homeport.target` and the nightly update timer
health     every unit active and ready (update.SystemdHost.healthy)
upgrades   unattended security upgrades: /etc/apt/apt.conf.d/20auto-upgrades
and prints the dashboard's address and the one-time setup link.
"""

from __future__ import annotations

import argparse
import asyncio
import grp
import ipaddress
import json
import os
import pwd
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from deploy.bytecode import warm_release
from deploy.layout import Layout
from deploy.ownership import give_to_users, move_ip_keys
from deploy.planning import SERVICES_GATEWAY, SERVICES_NETWORK, SERVICES_SUBNET
from deploy.units import (
    ADDON_PG_HBA_DIR,
    ADDON_UNITS,
    PLATFORM_GROUP,
    PORTS,
    RESTORE_UNITS,
    SHARED_USER,
    TARGET,
    UPDATE_UNITS,
    directories,
    render_units,
    unit_name,
    unit_specs,
    unit_user,
    write_units,
)
from deploy.update import SystemdHost, UpdateError, switch_link

__all__ = ["InstallError", "Installer", "main"]

UNIT_DIR = Path("/etc/systemd/system")
DEBIAN_UNITS = (
    "postgresql.service",
    "nats-server.service",
    "nginx.service",
    # the mail service runs these as its children (deploy/units.py: the mail unit)
    "postfix.service",
    "dovecot.socket",
    "dovecot.service",
    "rspamd.service",
)
DATABASE = "homeport"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
AUTO_UPGRADES = Path("/etc/apt/apt.conf.d/20auto-upgrades")
# Debian's own 50unattended-upgrades allows only the security origin (and ESM) by default:
# with these two lines apt updates its lists and installs security upgrades every day.
AUTO_UPGRADES_TEXT = """\
// Written by the Homeport installer: daily unattended upgrades. Which upgrades is Debian's
// /etc/apt/apt.conf.d/50unattended-upgrades: by default security updates only.
APT::Periodic::Update-Package-Lists "1";
APT::Periodic::Unattended-Upgrade "1";
"""
HEALTH_TIMEOUT = 300.0
SETUP_TOKEN = "setup-token"  # noqa: S105 - identity writes it in its data dir
_PORT_UNITS = {  # ports of PORTS served by a unit other than homeport-<name>
    "nats-monitor": "nats",
    "ldap": "identity",
}

Say = Callable[[str], None]


def sshd_ports(
    config: Path | None = None, sshd: str = "/usr/sbin/sshd", privsep: Path = Path("/run/sshd")
) -> tuple[int, ...]:
    """The ports sshd listens on as `sshd -T` reports them (its whole configuration, drop-ins
    included); (22,) when no sshd is installed.

    `sshd -T` refuses to run without its privilege separation folder (`privsep`), which only
    its own unit makes when it starts: on a machine whose sshd is not started yet (or started
    by socket), it is made first, as that unit would (root's, 0755). Any other refusal is an
    InstallError naming sshd's words: guessing 22 would let the firewall's default drop close
    an admin's way in on another port.
    """
    if not Path(sshd).exists():
        return (22,)
    argv = [sshd, "-T", *(["-f", str(config)] if config is not None else [])]
    run = _run_sshd(argv)
    if run.returncode != 0 and "privilege separation" in run.stderr and not privsep.exists():
        privsep.mkdir(mode=0o755)
        os.chmod(privsep, 0o755)  # noqa: S103 - what sshd needs (its unit makes it so)
        run = _run_sshd(argv)
    if run.returncode != 0:
        raise InstallError(
            f"`{' '.join(argv)}` failed ({run.stderr.strip() or f'exit {run.returncode}'}): the "
            "firewall must keep sshd's ports open, so the install needs them; check sshd's "
            "configuration with `sshd -t`, then run the installer again"
        )
    ports = set()
    for line in run.stdout.splitlines():
        key, _, value = line.strip().partition(" ")
        if key == "port" and value.isdigit() and 0 < int(value) < 65536:
            ports.add(int(value))
    return tuple(sorted(ports)) or (22,)


def _run_sshd(argv: list[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InstallError(f"could not ask sshd for its ports ({' '.join(argv)}): {e}") from e


class InstallError(Exception):
    """The install cannot go on; the message says what is wrong and what to do."""


@dataclass
class Options:
    version: str
    release_key: Path | None = None
    release_url: str = ""
    docker_host: str = ""
    prefix: Path = Path("/")
    health_timeout: float = HEALTH_TIMEOUT


@dataclass
class Installer:
    """One run of the install; `run()` does every step in order."""

    options: Options
    say: Say = print
    changed: list[str] = field(default_factory=list)

    @property
    def layout(self) -> Layout:
        return Layout(self.options.prefix)

    @property
    def docker_url(self) -> str:
        return self.options.docker_host or "unix:///run/docker.sock"

    def run(self) -> None:
        steps = STEPS
        for n, (name, message, step) in enumerate(steps, 1):
            self.say(f"[{n}/{len(steps)}] {name}: {message}")
            step(self)
        self._banner()

    def repair(self) -> None:
        """What `homeport update` runs from the release it switches to (and from the one it
        rolls back to), before it restarts the platform: that release's users, folders,
        configuration, keyrings, unit files and database roles (`REPAIR_STEPS`); nothing is
        started or restarted here."""
        for n, (name, message, step) in enumerate(REPAIR_STEPS, 1):
            self.say(f"[{n}/{len(REPAIR_STEPS)}] {name}: {message}")
            step(self)

    # -- checks ---------------------------------------------------------------------------

    def _checks(self) -> None:
        if os.geteuid() != 0:
            raise InstallError("run the installer as root (sudo deploy/install.sh)")
        release = _os_release()
        if release.get("ID") != "debian" or release.get("VERSION_ID") != "12":
            name = release.get("PRETTY_NAME", "an unknown system")
            raise InstallError(f"Homeport installs on Debian 12 (bookworm); this is {name}")
        for unit in DEBIAN_UNITS:
            enabled = _systemctl("is-enabled", unit, check=False).strip()
            active = _systemctl("is-active", unit, check=False).strip()
            if enabled == "enabled" or active in ("active", "activating"):
                _systemctl("disable", "--now", unit)
                self.say(f"      stopped and disabled Debian's {unit} (Homeport runs its own)")
        self._check_ports()

    def _check_ports(self) -> None:
        wanted = {name: port for name, port in PORTS.items()}
        wanted |= {"edge-http": 80, "edge-https": 443}
        for name, port in sorted(wanted.items(), key=lambda kv: kv[1]):
            owner = _PORT_UNITS.get(name, "gateway" if name.startswith("edge") else name)
            if _systemctl("is-active", unit_name(owner), check=False).strip() == "active":
                continue  # ours, already running
            address = "0.0.0.0" if port in (80, 443) else "127.0.0.1"  # noqa: S104 - a probe
            if not _port_free(address, port):
                raise InstallError(
                    f"port {port} (for Homeport's {name}) is taken by {_holder(port)}: stop "
                    "that program or move it to another port, then run the installer again"
                )

    # -- users and folders ----------------------------------------------------------------

    def _users(self) -> None:
        wanted: dict[str, set[str]] = {}  # user -> supplementary groups
        for spec in unit_specs(self.layout):
            wanted.setdefault(spec.user, set()).update(spec.groups)
        groups = {PLATFORM_GROUP} | {g for more in wanted.values() for g in more}
        if self.options.docker_host:
            groups.discard("docker")
        for g in sorted(groups):
            if not _group_exists(g):
                _run(["groupadd", "--system", g])
                self.say(f"      group {g} created")
        for user, member_of in sorted(wanted.items()):
            if not _user_exists(user):
                _run(["useradd", "--system", "--user-group" if not _group_exists(user) else
                      f"--gid={user}", "--home-dir", str(self.layout.data), "--no-create-home",
                      "--shell", "/usr/sbin/nologin", user])  # fmt: skip
                self.say(f"      user {user} created")
            have = {g.gr_name for g in grp.getgrall() if user in g.gr_mem}
            for g in sorted((member_of & groups) - have):
                _run(["usermod", "--append", "--groups", g, user])
                self.say(f"      user {user} added to group {g}")

    def _dirs(self) -> None:
        folders = directories(self.layout)
        # an install from before each service had a user of its own (its folders still the
        # one shared user's): what that user owned goes to each service's user
        # (deploy/ownership.py), once; later runs find nothing of it and walk nothing
        shared = pwd.getpwnam(SHARED_USER).pw_uid if _user_exists(SHARED_USER) else None
        moving = shared is not None and any(
            p.is_dir() and p.stat().st_uid == shared for p in folders if p != self.layout.data
        )
        for path, (owner, group, mode) in folders.items():
            _ensure_dir(path, owner, group, mode)
        _ensure_dir(self.layout.etc, "root", PLATFORM_GROUP, 0o750)
        _ensure_dir(self.layout.data / "postgres" / "pgdata", "homeport-postgres", "", 0o700)
        _ensure_dir(self.layout.data / "postgres-addons" / "pgdata", "homeport-postgres", "", 0o700)
        if moving:
            assert shared is not None
            given = give_to_users(self.layout, {shared}, folders)
            self.say(f"      {given} files of user {SHARED_USER} given to the services' users")
        move_ip_keys(self.layout, self.say)

    def _current(self) -> None:
        layout, version = self.layout, self.options.version
        running = layout.version_of(layout.current)
        if running is None:
            switch_link(layout.current, version)
            self.say(f"      {layout.current} -> {version}")
        elif running != version:
            self.say(f"      {layout.current} stays at {running} (updated since; not {version})")
        if running in (None, version):  # the services' -OO byte code, as the units load it
            try:
                warm_release(layout.current)
            except (OSError, subprocess.SubprocessError) as e:
                reason = (getattr(e, "stderr", None) or b"").decode(errors="replace").strip()
                self.say(f"      the services' byte code was not prepared: {reason or e}")
        link = self.options.prefix / "usr" / "local" / "bin" / "homeport"
        target = layout.current / "venv" / "bin" / "homeport"
        if not link.is_symlink() or link.readlink() != target:
            link.parent.mkdir(parents=True, exist_ok=True)
            tmp = link.with_name(".homeport.new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            os.replace(tmp, link)

    # -- configuration --------------------------------------------------------------------

    def _password(self, name: str) -> str:
        path = self.layout.etc / name
        if path.is_file():
            return path.read_text().strip()
        secret = secrets.token_urlsafe(32)
        _write_file(path, secret + "\n", "root", "root", 0o600)
        return secret

    def admin_dsn(self) -> str:
        """The platform database as its superuser (root's tools and this installer only)."""
        pw = quote(self._password("database-password"), safe="")
        return f"postgresql://postgres:{pw}@127.0.0.1:{PORTS['postgres']}/{DATABASE}"

    def role_passwords(self) -> dict[str, str]:
        """Each service's Postgres role password (libs/events/roles.py), made once, 0600 root."""
        from libs.events.nats_access import ensure_credentials
        from libs.events.roles import SERVICE_ROLES

        return ensure_credentials(self.layout.etc / "database-roles", SERVICE_ROLES)

    def database_env_texts(self) -> dict[str, str]:
        """service -> the text of its database env file: its own role's URL (the apps
        service's also names the addon server's admin, which only it manages)."""
        from libs.events.roles import dsn_as, role_of

        admin = self.admin_dsn()
        addon_pw = quote(self._password("addon-database-password"), safe="")
        out = {}
        for service, password in sorted(self.role_passwords().items()):
            lines = [
                "# Written by the Homeport installer: this service's own database role.",
                f"HP_DATABASE_URL={dsn_as(admin, role_of(service), password)}",
            ]
            if service == "apps":
                lines.append(
                    f"HP_ADDON_PG_DSN=postgresql://postgres:{addon_pw}@127.0.0.1:"
                    f"{PORTS['addon-postgres']}/postgres"
                )
            out[service] = "\n".join(lines) + "\n"
        return out

    def env_text(self) -> str:
        """The text of homeport.env (the same bytes on every run): no password in it, every
        service's user reads it (each unit adds its own database env file)."""
        lines = [
            "# Written by the Homeport installer (deploy/install.py); the units read it.",
            "# The shared settings of every service; each unit adds its own (port, data dir,",
            "# its database role in /etc/homeport/database/<service>.env).",
            f"HP_NATS_URL=nats://127.0.0.1:{PORTS['nats']}",
            "HP_LOG_LEVEL=INFO",
            "HP_DRAIN_SECONDS=10",
            "# No domain until the setup wizard: the dashboard is at my.localhost meanwhile.",
            "# The ports this machine's sshd listens on (sshd -T at install): the firewall keeps",
            "# them open (rate limited), so installing never closes the way in.",
            f"HP_FIREWALL_SSH_PORTS={','.join(map(str, sshd_ports()))}",
        ]
        if self.options.docker_host:
            lines.append(f"HP_DOCKER_HOST={self.options.docker_host}")
        return "\n".join(lines) + "\n"

    def _config(self) -> None:
        if _write_file(self.layout.env_file, self.env_text(), "root", PLATFORM_GROUP, 0o640):
            self.changed.append(str(self.layout.env_file))
            self.say(f"      wrote {self.layout.env_file}")
        admin = (
            f"# root's tools only (updates, restores, audit)\nHP_DATABASE_URL={self.admin_dsn()}\n"
        )
        if _write_file(self.layout.admin_env_file, admin, "root", "root", 0o600):
            self.say(f"      wrote {self.layout.admin_env_file}")
        for service, text in self.database_env_texts().items():
            path = self.layout.database_env_file(service)
            path.parent.mkdir(mode=0o700, exist_ok=True)
            if _write_file(path, text, "root", "root", 0o600):
                self.changed.append(str(path))
                self.say(f"      wrote {path}")
        if self.options.release_key is not None:
            from deploy.release import ReleaseError, load_public_key

            try:
                load_public_key(self.options.release_key)
            except ReleaseError as e:
                raise InstallError(f"--release-key {self.options.release_key}: {e}") from e
            text = self.options.release_key.read_text()
            if _write_file(self.layout.release_key, text, "root", "root", 0o644):
                self.say(f"      pinned the release key in {self.layout.release_key}")
        if self.options.release_url:
            url = self.options.release_url
            if not url.startswith(("https://", "http://", "file://")):
                raise InstallError(f"--release-url {url!r}: expected an https:// URL")
            _write_file(self.layout.release_url_file, url + "\n", "root", "root", 0o644)

    # -- Postgres ---------------------------------------------------------------------------

    def _postgres(self) -> None:
        for name, secret in (
            ("postgres", "database-password"),
            ("postgres-addons", "addon-database-password"),
        ):
            pgdata = self.layout.data / name / "pgdata"
            if (pgdata / "PG_VERSION").is_file():
                continue
            pwfile = self.layout.data / name / ".initdb-password"
            _write_file(pwfile, self._password(secret) + "\n", "homeport-postgres", "", 0o600)
            try:
                _run(
                    ["runuser", "-u", "homeport-postgres", "--", str(PG_BIN / "initdb"),
                     "-D", str(pgdata), "-U", "postgres", "--auth-host=scram-sha-256",
                     "--auth-local=trust", f"--pwfile={pwfile}", "-E", "UTF8",
                     "--locale=C.UTF-8", "--no-instructions"],
                )  # fmt: skip
            finally:
                pwfile.unlink(missing_ok=True)
            self.say(f"      initdb {pgdata}")

    # -- Docker -----------------------------------------------------------------------------

    def _docker(self) -> None:
        if not self.options.docker_host:
            if _systemctl("is-enabled", "docker.service", check=False).strip() != "enabled":
                _systemctl("enable", "docker.service")
            if _systemctl("is-active", "docker.service", check=False).strip() != "active":
                _systemctl("start", "docker.service")
                self.say("      started docker.service")
        asyncio.run(self._services_network())
        hba = self.layout.data / ADDON_PG_HBA_DIR / "pg_hba.conf"
        if not hba.exists():
            from services.apps.addons.postgresql import AddonPostgres

            addon = AddonPostgres(
                "postgresql://postgres@127.0.0.1/postgres",
                SERVICES_GATEWAY,
                PORTS["addon-postgres"],
                hba,
            )
            apps = pwd.getpwnam(unit_user("apps"))
            addon.ensure_hba_file((apps.pw_uid, grp.getgrnam(PLATFORM_GROUP).gr_gid))
            os.chmod(hba, 0o640)
            self.say(f"      wrote {hba}")

    async def _services_network(self) -> None:
        from services.apps.runtime import DockerRuntime

        deadline = time.monotonic() + 60
        while True:
            try:
                async with DockerRuntime(self.docker_url) as runtime:
                    await runtime.ensure_services_network(SERVICES_NETWORK, SERVICES_SUBNET)
                return
            except Exception as e:
                if time.monotonic() > deadline:
                    raise InstallError(
                        f"dockerd at {self.docker_url} did not answer or could not make the "
                        f"{SERVICES_NETWORK} network: {e}"
                    ) from e
                await asyncio.sleep(1)

    def _keyring(self) -> None:
        """A keyring per service that seals, each in its folder and owned by its service's
        user; on an install from before, each starts as that service's file or a copy of the
        shared keyring.json, which then go (libs/events/sealing.py)."""
        from libs.events.sealing import KEYRING_OWNERS, Keyring, keyring_file

        folder = self.layout.data / "keyring"
        for owner in KEYRING_OWNERS:
            path = keyring_file(folder, owner)
            if not path.is_file():
                Keyring.open(path).close()
                self.say(f"      created the sealing keyring of {owner}: {path}")
            for p in (path.parent, *path.parent.iterdir()):
                _chown(p, unit_user(owner), "")

    def _base_image(self) -> None:
        from services.apps.base_image import ensure_base_image

        cache = self.layout.data / "base-cache"

        async def progress(line: str) -> None:
            self.say(f"      {line}")

        asyncio.run(ensure_base_image(self.docker_url, cache, progress))
        for p in (cache, *cache.rglob("*")):
            _chown(p, unit_user("apps"), "")

    # -- systemd ----------------------------------------------------------------------------

    def _units(self) -> None:
        # a repair: a running unit whose file changed runs the new one (no other restarts)
        services = [n for n in self._unit_files() if n.endswith(".service")]
        if services:
            _systemctl("try-restart", *services)
            self.say(f"      restarted {', '.join(services)} (their unit files changed)")
        pg = unit_name("postgres")
        _systemctl("start", pg)
        self._create_database()
        if _systemctl("is-enabled", TARGET, check=False).strip() != "enabled":
            _systemctl("enable", TARGET)
        # a repair: units that gave up (start limit) may start again; running ones are left be
        _systemctl("reset-failed", "homeport-*", check=False)
        _systemctl("start", TARGET)
        # the nightly update check (does nothing until the admin turns it on in the dashboard)
        # and the setup wizard's restore requests (homeport-restore.path, as root)
        for timer in (
            u
            for u in (*UPDATE_UNITS, *RESTORE_UNITS, *ADDON_UNITS)
            if u.endswith((".timer", ".path"))
        ):
            if _systemctl("is-enabled", timer, check=False).strip() != "enabled":
                _systemctl("enable", "--now", timer)
                self.say(f"      enabled {timer}")

    def _unit_files(self) -> list[str]:
        """The unit files of this release, and a daemon-reload when one changed; those that
        changed and were there before."""
        before = {
            name: (UNIT_DIR / name).read_bytes() if (UNIT_DIR / name).is_file() else None
            for name in render_units(self.layout)
        }
        write_units(self.layout, UNIT_DIR)
        written = [n for n, old in before.items() if (UNIT_DIR / n).read_bytes() != old]
        if written:
            _systemctl("daemon-reload")
            self.say(f"      wrote {len(written)} unit files")
        return [n for n in written if before[n] is not None]

    def _database_roles(self) -> None:
        asyncio.run(self._roles())

    def _create_database(self) -> None:
        socket_dir = str(self.layout.data / "postgres")
        psql = ["runuser", "-u", "homeport-postgres", "--", str(PG_BIN / "psql"), "-X", "-q",
                "-h", socket_dir, "-p", str(PORTS["postgres"]), "-U", "postgres", "-d",
                "postgres", "-tA", "-c"]  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            proc = subprocess.run(
                [*psql, f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],  # noqa: S608
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            if proc.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise InstallError(
                    f"the platform Postgres did not answer: {proc.stderr.strip()} "
                    f"(journalctl -u {unit_name('postgres')})"
                )
            time.sleep(0.5)
        if proc.stdout.strip() != "1":
            _run([*psql, f'CREATE DATABASE "{DATABASE}"'])
            self.say(f"      created the database {DATABASE}")
        # each service's role and rights, the event store migrated as its owner (idempotent)
        asyncio.run(self._roles())

    async def _roles(self) -> None:
        import asyncpg

        from libs.events.roles import prepare_roles

        conn = await asyncpg.connect(self.admin_dsn())
        try:
            await prepare_roles(conn, self.role_passwords())
        finally:
            await conn.close()

    def _health(self) -> None:
        host = SystemdHost()
        try:
            bad = host.healthy(self.options.health_timeout)
        except UpdateError as e:
            raise InstallError(str(e)) from e
        if bad:
            names = ", ".join(bad)
            raise InstallError(
                f"not healthy after {self.options.health_timeout:.0f} s: {names}; see "
                "`homeport status` and `homeport logs <service>`"
            )
        self.say(f"      {len(host.units())} units active and ready")

    def _upgrades(self) -> None:
        if _write_file(AUTO_UPGRADES, AUTO_UPGRADES_TEXT, "root", "root", 0o644):
            self.say(f"      wrote {AUTO_UPGRADES}")

    # -- the end ----------------------------------------------------------------------------

    def setup_link(self, site: str = "my.localhost") -> str | None:
        """The one-time setup link at `site` (a host or an address) while setup is not done
        (identity's token), else None."""
        try:
            token = (self.layout.data / "identity" / SETUP_TOKEN).read_text().strip()
        except OSError:
            return None
        return f"https://{site}/#/setup?token={token}" if token else None

    def _banner(self) -> None:
        # The edge serves the dashboard at the server's own addresses until a domain of its
        # own has its certificate (services/gateway/edge/sync.py): the link names the address.
        address = primary_address()
        site = address or "my.localhost"
        link = self.setup_link(site)
        lines = [
            "",
            f"Homeport {self.options.version} is installed and running.",
            f"  Dashboard: https://{site}/",
        ]
        if link is not None:
            lines.append(f"  Setup:     {link}")
        else:
            lines.append("  Setup is done: sign in at the dashboard.")
        lines += [
            "  Its certificate is self-signed until the dashboard has a domain of its own: the",
            "  browser warns about it; accept it for this address. Then: https://my.<domain>/",
        ]
        if address is not None:
            local = self.setup_link() or "https://my.localhost/"
            lines.append(f"  On this server itself: {local}")
        else:
            lines.append("  (no address found: reach it through ssh -L 443:127.0.0.1:443)")
        lines += [
            "Check every part: homeport status; logs: homeport logs <service>",
            "",
        ]
        self.say("\n".join(lines))


STEPS: Sequence[tuple[str, str, Callable[[Installer], None]]] = (
    ("checks", "system, Debian's own servers, ports", Installer._checks),
    ("users", "system users and groups", Installer._users),
    ("dirs", "folders", Installer._dirs),
    ("current", "the running version", Installer._current),
    ("config", "/etc/homeport", Installer._config),
    ("postgres", "the platform's and the apps' Postgres clusters", Installer._postgres),
    ("docker", "Docker and the services network", Installer._docker),
    ("keyring", "the sealing keyrings", Installer._keyring),
    ("base-image", "the apps' Debian base image (once: a few minutes)", Installer._base_image),
    ("units", "systemd units, starting homeport.target", Installer._units),
    ("health", "waiting for every service", Installer._health),
    ("upgrades", "unattended security upgrades", Installer._upgrades),
)
# What `homeport update` applies of a release (`Installer.repair`): these steps of the install,
# then the unit files without starting anything, and the database roles.
REPAIR_STEPS: Sequence[tuple[str, str, Callable[[Installer], object]]] = (
    *(step for step in STEPS if step[0] in ("users", "dirs", "config", "keyring")),
    ("units", "systemd unit files", Installer._unit_files),
    ("roles", "the services' database roles", Installer._database_roles),
)


# -- helpers ------------------------------------------------------------------------------------


def _os_release(path: Path = Path("/etc/os-release")) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip().strip('"')
    return out


def _run(argv: list[str], timeout: float = 300.0) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InstallError(f"{' '.join(argv[:3])}: {e}") from e
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise InstallError(f"{' '.join(argv[:4])} failed: " + " | ".join(tail))
    return proc.stdout


def _systemctl(*args: str, check: bool = True) -> str:
    if check:
        return _run(["systemctl", *args])
    proc = subprocess.run(
        ["systemctl", *args], capture_output=True, text=True, timeout=120, check=False
    )
    return proc.stdout


def _port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def _holder(port: int) -> str:
    """Which program listens on `port` (from `ss`), for the error message."""
    try:
        out = subprocess.run(
            ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "another program"
    for part in out.split():
        if part.startswith("users:"):
            return part.removeprefix("users:")  # (("nginx",pid=12,fd=6),...)
    return "another program"


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _chown(path: Path, owner: str, group: str) -> None:
    """`group` "" is the owner's own group."""
    uid = pwd.getpwnam(owner).pw_uid
    gid = grp.getgrnam(group).gr_gid if group else pwd.getpwnam(owner).pw_gid
    st = path.lstat()
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.lchown(path, uid, gid)


def _ensure_dir(path: Path, owner: str, group: str, mode: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    _chown(path, owner, group)
    if path.stat().st_mode & 0o7777 != mode:
        path.chmod(mode)


def _write_file(path: Path, text: str, owner: str, group: str, mode: int) -> bool:
    """Write `text` unless the file holds it already; owner and mode set either way. Whether
    the bytes changed."""
    data = text.encode()
    changed = not path.is_file() or path.read_bytes() != data
    if changed:
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _chown(tmp, owner, group)
        tmp.chmod(mode)
        os.replace(tmp, path)
    else:
        _chown(path, owner, group)
        if path.stat().st_mode & 0o7777 != mode:
            path.chmod(mode)
    return changed


def primary_address() -> str | None:
    """The server's primary address as a URL host (IPv6 in brackets): the source address of
    the default route (the kernel is asked which route a packet to a documentation address
    would take; nothing is sent), else the first global address; None if it has neither."""
    for family, probe in (("-4", "192.0.2.1"), ("-6", "2001:db8::1")):
        for route in _ip_json(family, "route", "get", probe):
            if route.get("prefsrc"):
                return _url_host(str(route["prefsrc"]))
    for link in _ip_json("addr", "show", "scope", "global"):
        for info in link.get("addr_info", []):
            if info.get("local") and link.get("ifname") != "lo":
                return _url_host(str(info["local"]))
    return None


def _ip_json(*args: str) -> list[dict[str, Any]]:
    """`ip -j <args>` parsed; [] when ip fails (no such route) or is missing."""
    try:
        proc = subprocess.run(
            ["ip", "-j", *args], capture_output=True, text=True, timeout=10, check=False
        )
        out = json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else []
    except (OSError, subprocess.SubprocessError, ValueError):
        return []
    return [x for x in out if isinstance(x, dict)] if isinstance(out, list) else []


def _url_host(address: str) -> str | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return f"[{ip}]" if ip.version == 6 else str(ip)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.install",
        description="Install Homeport on this Debian 12 server (run by deploy/install.sh).",
    )
    parser.add_argument("--version", required=True, help="the version in /opt/homeport/")
    parser.add_argument("--release-key", type=Path, help="the release public key to pin (PEM)")
    parser.add_argument("--release-url", default="", help="where `homeport update` looks")
    parser.add_argument(
        "--docker-host", default="", help="use this dockerd (unix:///path) instead of docker.io"
    )
    parser.add_argument(
        "--health-timeout", type=float, default=HEALTH_TIMEOUT, help="seconds (default 300)"
    )
    parser.add_argument(
        "--repair",
        action="store_true",
        help="only this release's users, folders, configuration, keyrings, unit files and "
        "database roles, nothing started (what `homeport update` runs)",
    )
    args = parser.parse_args(argv)
    if args.repair and not args.docker_host:  # kept as the install was made
        from deploy.update import read_env_file

        args.docker_host = read_env_file(Layout(Path("/")).env_file).get("HP_DOCKER_HOST", "")
    if args.docker_host and not args.docker_host.startswith("unix:///"):
        parser.error(f"--docker-host {args.docker_host!r}: expected unix:///path/to/docker.sock")
    options = Options(
        args.version,
        release_key=args.release_key,
        release_url=args.release_url,
        docker_host=args.docker_host,
        health_timeout=args.health_timeout,
    )
    try:
        installer = Installer(options, say=lambda line: print(line, flush=True))
        installer.repair() if args.repair else installer.run()
    except InstallError as e:
        print(f"install failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
