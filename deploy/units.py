"""The systemd units of a server install, rendered for a `Layout` (issue 15 "Install").

`homeport.target` (wanted by multi-user.target) pulls in, all `PartOf=homeport.target`:
`homeport-postgres.service` (the platform's own cluster in `<data>/postgres`, on loopback port
`PORTS["postgres"]`, not Debian's default cluster), `homeport-addon-postgres.path` (it starts
`homeport-addon-postgres.service`, the apps' addon server, once the apps service has written
`<data>/addon-pg-hba/wanted`: the server runs only when an app needs a database),
`homeport-nats.service` (JetStream, loopback), `homeport-relay.service` and
`homeport-<service>.service` for every `services/*/__main__.py` (found as `homeport up` finds
them). nginx, the edge, stays the gateway's child: the gateway unit may bind 80/443.

Who runs what (`unit_user`, `unit_groups`; the installer creates these users and groups):
- `homeport-postgres` runs both Postgres servers, `homeport-nats` runs NATS.
- Every service and the relay runs as a system user of its own, `homeport-<name>`, also in the
  group `homeport` (it may pass into /etc/homeport, to its NATS password). Each owns its folder
  `<data>/<name>` (0700) and, if it seals, its keyring folder `<data>/keyring/<name>/`
  (libs/events/sealing.py): a key file is readable only by its service's user. Files one
  service writes and another reads go through a folder whose group is a reader group
  (`READER_GROUPS`), group-readable and setgid, so that what the writer makes there has that
  group (services/certs/store.py, libs/events/periods.py make such files group-readable; the
  units neither chown nor set a setgid bit themselves: the root installer and restore do):
  * `<data>/certs/{live,acme}`: certs writes, the gateway (nginx, its child) reads
    (`homeport-tls`; a key 0640);
  * `<data>/ip-keys/`: identity's address keys, the private file read by the firewall
    (`homeport-ipkeys`, 0640), the public one by every service (0644);
  * `<data>/apps/snapshots`: apps writes, backup writes what it restores (0770, the group
    `homeport-backup`; apps reads what backup wrote with CAP_DAC_OVERRIDE);
  * `<data>/addon-pg-hba`: apps writes, the addon server reads (group `homeport`).
- Each unit also cannot see what it has no business with (InaccessiblePaths=): the other
  services' folders and keyring folders, the servers' data (Postgres, NATS), the database
  passwords in /etc/homeport (`database/`, `admin.env`: systemd reads a unit's own file before
  the unit starts) and the other services' NATS passwords. That holds even for a unit whose
  capabilities pass file modes: apps (CAP_DAC_OVERRIDE, for the apps' volumes) and backup
  (CAP_DAC_READ_SEARCH: it reads every keyring and app snapshot to back them up, so backup is
  the one unit that sees the other services' folders).
- One unit runs as root (`ROOT_UNITS`): mail, see below. Apps holds the docker socket's group,
  which is root-equivalent: it is the reason apps runs alone in a unit with only what it needs.
  It does not run debootstrap as root: the installer builds the base image tarball into
  `HP_BASE_CACHE` once, and apps reuses it (services/apps/base_image.py). It may write in
  dockerd's /var/lib/docker/volumes (a new volume's folder gets the app's owner and mode):
  one of two paths outside the data dir a unit writes (`writes_outside`); the other is the
  backup unit's: local backup targets (mounted disks) under /mnt, /media or /srv.

The mail unit runs as root, with a bounded set of capabilities (`MAIL_CAPABILITIES`), because
the mail service runs Postfix, Dovecot and rspamd as its own children (services/mail/servers.py
MailServers: the same code path as the local stack's, run as root there) and each master must
start as root: Postfix's and Dovecot's bind the mail ports (25, 465, 587, 993, 4190), all three
start their workers under their own users (postfix; dovecot, dovenull and the store's owner
`mail`; _rspamd: Debian's packages make them) and Dovecot chroots its login processes. Separate
root units per server, reloaded through .path units (as the addon Postgres is started), would
be three root units instead of one and a second way to run the servers beside the local stack's.
What the root unit may do, each item measured in the systemd box (tests/deploy/test_install.py;
CAP_NET_BIND_SERVICE excepted: the box, a Docker container, lets anyone bind a low port):
  * capabilities: CAP_NET_BIND_SERVICE (the ports), CAP_SETUID/CAP_SETGID (the workers' users),
    CAP_CHOWN/CAP_FOWNER (the servers' folders and files given to those users), CAP_DAC_OVERRIDE
    (rspamd's and Postfix's masters read their users' 0700/0750 folders, and the certificate
    certs wrote for the mail host), CAP_KILL (the service reloads and stops masters and workers
    that run as other users), CAP_SYS_CHROOT with the `chroot` system call (Dovecot's login
    processes); taking out any one of them breaks a start, a reload or a stop. No CAP_SYS_ADMIN,
    CAP_NET_ADMIN, CAP_SYS_PTRACE, CAP_FSETID. No ambient capabilities (root has its bounding
    set; ambient ones would go with a worker past its change of user).
  * NoNewPrivileges= and RestrictSUIDSGID= stay on: no server execs a setuid or setgid program
    and Postfix's queue needs no setgid folder. (Sieve's redirect and vacation would run
    /usr/sbin/sendmail, whose setgid postdrop writes Debian's own stopped Postfix's queue, not
    ours: Dovecot should be given a `submission_host`, in services/mail/render.py.)
    ProtectProc=invisible stays too, but hides nothing from a process of group root (the /proc
    mount's gid=0): the service finds its masters' workers at a reload.
  * the system calls of @system-service, `chroot`, without @resources; not without @privileged
    (setuid, setgroups, chown are in it).
  * MemoryDenyWriteExecute=no: rspamd's Lua is LuaJIT ("runtime code generation failed" with
    it on). AF_NETLINK: Postfix lists the host's addresses (getifaddrs). Any IP address: mail
    comes from anywhere and goes anywhere. UMask=0022: the servers' users read the generations
    the service writes (services/mail/servers.py makes its folders 0755 and secrets 0600/0640).
  * KillMode=mixed: stopping, systemd signals only the service, which stops the servers itself
    (Postfix first); signalled all at once, its supervisor would restart them meanwhile.
  * files: the system read-only but `<data>/mail` and its keyring folder; it reads certs'
    folder (the mail host's certificate). uid 0 still owns root's files and root-only sockets
    whatever the capabilities, so besides what every unit cannot see it cannot see what would
    take it out of its sandbox or hand it others' secrets (`_root_hidden`: the docker and
    containerd sockets, systemd's and D-Bus's, /etc/shadow, /etc/ssh, the installer's database
    passwords, the edge's and the addon server's folders, identity's private address keys).
  Its folder `<data>/mail` is root's, 0711: the servers' users pass through it to the mail root
  `<data>/mail/mail` (MailServers makes it and what is in it). The mail ports listen on every
  address (HP_MAIL_LISTEN=0.0.0.0; the firewall opens them only while mail is on), and apps send
  on the services network's gateway (HP_MAIL_APPS_LISTEN), as in the local stack with Docker.
  Debian's own units of these servers are stopped and disabled by the installer (deploy/install.py
  DEBIAN_UNITS): until mail is on for a domain, no mail port is taken.
  `systemd-analyze security` rates the unit 2.7 under Debian 12's systemd (the other services'
  1.3-2.3): tests/deploy/test_units.py lets it have 3.0, a service's unit otherwise 2.0.

The templates are in deploy/systemd/ (string.Template: `$name`, `$$` for a literal `$`).
`render_units(layout)` returns {file name: text}; `write_units(layout, unit_dir)` writes them
(idempotent); `directories(layout)` lists the folders (owner, group, mode) to make first.
Each service gets its own `HP_DATA_DIR=<data>/<name>` (identity's setup token is therefore
`<data>/identity/setup-token`) and a fixed loopback `HP_HTTP_PORT` (`service_port`); the shared
HP_* settings (database and NATS URLs, domains) come from `EnvironmentFile=<etc>/homeport.env`,
which overrides the unit's own `Environment=`.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from deploy.bytecode import OPTIMIZE_FLAG
from deploy.layout import Layout
from deploy.planning import (
    ADDON_WANTED,
    APPS_MODULE,
    MAX_CONNECTIONS,
    SERVICES_GATEWAY,
    SERVICES_NETWORK,
    SERVICES_SUBNET,
    Module,
    discover_modules,
)
from libs.events.nats_access import SERVICE_USERS
from libs.events.roles import SERVICE_ROLES
from libs.events.sealing import KEYRING_OWNERS, keyring_file

__all__ = [
    "ADDON_PG_HBA_DIR",
    "ADDON_UNITS",
    "PLATFORM_GROUP",
    "PORTS",
    "READER_GROUPS",
    "RESTORE_RECOVER",
    "RESTORE_UNITS",
    "ROOT_UNITS",
    "SHARED_USER",
    "SHOW_PROPERTIES",
    "TARGET",
    "UNIT_USERS",
    "UPDATE_UNITS",
    "UnitSpec",
    "directories",
    "installed_units",
    "ip_keys_file",
    "logs_argv",
    "mail_root",
    "parse_show",
    "render_units",
    "restart_argv",
    "service_port",
    "status_argv",
    "unit_for",
    "unit_groups",
    "unit_name",
    "unit_ok",
    "unit_specs",
    "unit_user",
    "write_units",
]

TEMPLATES = Path(__file__).with_name("systemd")
TARGET = "homeport.target"
# The nightly platform update: a timer and the oneshot it starts (not part of the target).
UPDATE_UNITS = ("homeport-update.service", "homeport-update.timer")
# The setup wizard's restore: the path unit watches the backup service's request (as root);
# the recovery after a cut-off restore runs before the platform's units when the target starts.
RESTORE_RECOVER = "homeport-restore-recover.service"
RESTORE_UNITS = ("homeport-restore.service", "homeport-restore.path", RESTORE_RECOVER)
# The addon Postgres on demand: started by this path unit once the apps service asks for it.
ADDON_UNITS = ("homeport-addon-postgres.path",)
PLATFORM_GROUP = "homeport"
POSTGRES_BIN = "/usr/lib/postgresql/15/bin/postgres"
NATS_BIN = "/usr/sbin/nats-server"  # where Debian 12 puts it
ADDON_PG_HBA_DIR = "addon-pg-hba"  # under the data dir: apps writes it, the addon server reads
DOCKER_VOLUMES = Path("/var/lib/docker/volumes")  # docker.io's volumes (apps' data)

# Where a backup unit may write a local target (a mounted disk) on a server install; the
# backup service refuses system folders itself (services/backup/targets/factory.py).
LOCAL_TARGET_ROOTS = (Path("/mnt"), Path("/media"), Path("/srv"))

# Loopback ports of a server install. Services not listed get a stable one from `service_port`.
PORTS: dict[str, int] = {
    "postgres": 7432,
    "addon-postgres": 7433,
    "nats": 7422,
    "nats-monitor": 7822,
    "ldap": 7389,
    "relay": 7400,
    "apps": 7401,
    "backup": 7402,
    "certs": 7403,
    "dns": 7404,
    "firewall": 7405,
    "identity": 7406,
    "notify": 7407,
    "gateway": 7410,  # the dashboard's API; nginx on 80/443 proxies to it
}
_FREE_PORTS = range(7440, 7500)

# unit (short name) -> (user, supplementary groups) where it is not `homeport-<name>` in the
# group `homeport` (`unit_user`, `unit_groups`); the installer creates these system users.
UNIT_USERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "postgres": ("homeport-postgres", ()),
    "addon-postgres": ("homeport-postgres", (PLATFORM_GROUP,)),  # reads apps' pg_hba.conf
    "nats": ("homeport-nats", ()),
    "apps": ("homeport-apps", (PLATFORM_GROUP, "docker")),
    "mail": ("root", ()),  # ROOT_UNITS
}
# Groups through which one service reads what another writes: group -> its members (units).
READER_GROUPS: dict[str, tuple[str, ...]] = {
    "homeport-tls": ("certs", "gateway"),  # certificates and keys nginx serves
    "homeport-ipkeys": ("identity", "firewall"),  # the address keys the firewall reads
}
# Debian's own groups a unit's user also joins: the firewall reads sshd's entries in the journal
# (failed SSH sign-ins, services/firewall/sshd.py).
SYSTEM_GROUPS: dict[str, tuple[str, ...]] = {"firewall": ("systemd-journal",)}
# The one user every service and the relay ran as before each had its own: the installer gives
# what it owned to the new owners (deploy/ownership.py).
SHARED_USER = PLATFORM_GROUP

# Units that run as root, with the reason (see the module's docstring).
ROOT_UNITS: dict[str, str] = {
    "mail": "Postfix's and Dovecot's masters start as root (the mail ports, their workers' users)",
}
# What the mail unit's root may do: bind the mail ports, start the servers' workers under their
# users, give the servers' folders to those users, read past file modes (Postfix's queue),
# signal workers of other users, chroot (Dovecot's login processes).
MAIL_CAPABILITIES = (
    "CAP_NET_BIND_SERVICE",
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_CHOWN",
    "CAP_FOWNER",
    "CAP_DAC_OVERRIDE",
    "CAP_KILL",
    "CAP_SYS_CHROOT",
)
# Sockets and files a root unit could use to leave its sandbox (they answer to uid 0 whatever
# its capabilities) or that hold others' secrets: hidden from it (InaccessiblePaths=-).
_ROOT_HIDDEN = (
    Path("/run/docker.sock"),
    Path("/run/docker"),
    Path("/run/containerd"),
    Path("/run/dbus/system_bus_socket"),
    Path("/run/systemd/private"),
    Path("/etc/shadow"),
    Path("/etc/gshadow"),
    Path("/etc/ssh"),
    Path("/var/lib/docker"),
)


@dataclass(frozen=True)
class UnitSpec:
    """What differs between two units; the template adds the rest (and the hardening)."""

    name: str  # short: "postgres", "relay", "gateway"
    template: str  # a file in deploy/systemd/
    description: str
    user: str
    groups: tuple[str, ...] = ()
    module: str = ""  # python -m <module>, for the relay and services
    port: int = 0
    after: tuple[str, ...] = ()  # units (full names) this one starts after
    requires: tuple[str, ...] = ()  # and needs running
    wants: tuple[str, ...] = ()
    writes: tuple[Path, ...] = ()  # ReadWritePaths= (the installer makes these folders)
    writes_outside: tuple[Path, ...] = ()  # ReadWritePaths=-: others' folders, if present
    hidden: tuple[Path, ...] = ()  # InaccessiblePaths=-: not even readable (others' keys)
    capabilities: tuple[str, ...] = ()  # bounding set = ambient set (none for root)
    families: tuple[str, ...] = ("AF_UNIX", "AF_INET", "AF_INET6")
    loopback_only: bool = False  # IPAddressDeny=any except localhost
    umask: str = "0077"
    memory_deny_write_execute: bool = True
    syscall_deny: tuple[str, ...] = ("@privileged", "@resources")
    syscall_allow: tuple[str, ...] = ()  # beyond @system-service
    environment: dict[str, str] = field(default_factory=dict)
    values: dict[str, str] = field(default_factory=dict)  # template-specific substitutions

    @property
    def unit(self) -> str:
        return unit_name(self.name)


def unit_name(name: str) -> str:
    """`gateway` -> `homeport-gateway.service`; a bad name raises ValueError naming it."""
    if not name or not all(c.isalnum() or c in "-_" for c in name) or not name[0].isalpha():
        raise ValueError(f"service name {name!r}: expected letters, digits, - and _")
    return f"homeport-{name}.service"


def service_port(name: str) -> int:
    """The loopback HTTP port of one part (health, metrics, API) on a server install."""
    if name in PORTS:
        return PORTS[name]
    taken = set(PORTS.values())
    start = zlib.crc32(name.encode()) % len(_FREE_PORTS)
    for i in range(len(_FREE_PORTS)):
        port = _FREE_PORTS[(start + i) % len(_FREE_PORTS)]
        if port not in taken:
            return port
    raise ValueError(f"no free port left for service {name!r}")  # pragma: no cover


# -- what each unit needs ----------------------------------------------------------------------


def unit_specs(layout: Layout, modules: Sequence[Module] | None = None) -> list[UnitSpec]:
    """Every unit of an install in `layout`: servers first, then the relay and the services."""
    data = layout.data
    code = layout.current
    pg, nats = unit_name("postgres"), unit_name("nats")
    hba_dir = data / ADDON_PG_HBA_DIR
    specs = [
        UnitSpec(
            "postgres",
            "postgres.service",
            "Homeport Postgres (the platform's event store)",
            *UNIT_USERS["postgres"],
            port=PORTS["postgres"],
            writes=(data / "postgres",),
            loopback_only=True,
            syscall_deny=("@privileged",),
            values={
                "datadir": str(data / "postgres"),
                "listen": "127.0.0.1",
                # as the embedded stack (MAX_CONNECTIONS; deploy/embedded.py shared_buffers):
                # what `python -m bench idle_memory` measures is what a server runs
                "max_connections": str(MAX_CONNECTIONS),
                "shared_buffers": "64MB",
                "extra": " -c max_logical_replication_workers=0",
            },
        ),
        UnitSpec(
            "addon-postgres",
            "postgres.service",
            "Homeport addon Postgres (apps' databases)",
            *UNIT_USERS["addon-postgres"],
            port=PORTS["addon-postgres"],
            # listens on the services network's gateway too: that address exists once dockerd
            # has made the network (the installer creates it before the first start).
            after=("docker.service",),
            wants=("docker.service",),
            writes=(data / "postgres-addons",),
            syscall_deny=("@privileged",),
            values={
                "datadir": str(data / "postgres-addons"),
                "listen": f"127.0.0.1,{SERVICES_GATEWAY}",
                "max_connections": str(MAX_CONNECTIONS),
                "shared_buffers": "64MB",
                "extra": f" -c hba_file={hba_dir / 'pg_hba.conf'}"
                " -c max_logical_replication_workers=0",
            },
        ),
        UnitSpec(
            "nats",
            "nats.service",
            "Homeport NATS (JetStream)",
            *UNIT_USERS["nats"],
            port=PORTS["nats"],
            writes=(data / "nats",),
            loopback_only=True,
            values={
                "datadir": str(data / "nats"),
                "monitor_port": str(PORTS["nats-monitor"]),
                "credentials": str(nats_credentials(layout)),
            },
        ),
    ]
    found = list(modules if modules is not None else discover_modules())
    names = tuple(m.name for m in found)
    for m in found:
        specs.append(_service_spec(layout, m, code, (pg, nats), names))
    return specs


def ip_keys_file(layout: Layout) -> Path:
    """Identity's address keys (libs/events/periods.py), in a folder of their own: identity
    writes it, the firewall reads the private file, every service the public one."""
    return layout.data / "ip-keys" / "ip-keys.json"


def mail_root(layout: Layout) -> Path:
    """The mail servers' folder (the mail unit's HP_DATA_DIR is `<data>/mail`, its mail root
    `mail` in it: services/mail/config.py): its store, its snapshots for the backups."""
    return layout.data / "mail" / "mail"


def _hidden(layout: Layout, name: str, names: Sequence[str]) -> tuple[Path, ...]:
    """What unit `name` may not even see (InaccessiblePaths=): see the module's docstring."""
    data, keyring = layout.data, layout.data / "keyring"
    out = [data / "postgres", data / "postgres-addons", data / "nats"]
    out += [layout.etc / "database", layout.admin_env_file]
    out += [nats_credentials(layout) / u for u in SERVICE_USERS if u != name]
    if name == "backup":  # it backs up every service's folder and keyring
        return tuple(out)
    if name in KEYRING_OWNERS:
        out += [keyring / owner for owner in KEYRING_OWNERS if owner != name]
    else:
        out.append(keyring)
    # nginx serves certs' certificates, Postfix and Dovecot the mail host's
    reads = {"certs"} if name in ("gateway", "mail") else set()
    out += [data / other for other in names if other not in (name, *reads)]
    return tuple(out)


def _root_hidden(layout: Layout) -> tuple[Path, ...]:
    """What a root unit may not see besides what every unit may not (`_ROOT_HIDDEN`, the
    installer's database passwords, the edge's and the addon server's folders, identity's
    private address keys)."""
    etc, data = layout.etc, layout.data
    secrets = [etc / "database-password", etc / "addon-database-password", etc / "database-roles"]
    folders = [data / "edge", data / ADDON_PG_HBA_DIR, ip_keys_file(layout)]
    return (*_ROOT_HIDDEN, *secrets, *folders)


def _service_spec(
    layout: Layout, m: Module, code: Path, servers: tuple[str, ...], names: Sequence[str]
) -> UnitSpec:
    data = layout.data
    own = data / m.name
    keyring = data / "keyring"
    # its keyring folder, writable (the file is replaced whole, libs/events/sealing.py); the
    # others' folders hidden (the whole keyring folder from a service that does not seal)
    keys = (keyring / m.name,) if m.name in KEYRING_OWNERS else ()
    relay = unit_name("relay")
    env = {
        "HP_HTTP_HOST": "127.0.0.1",
        "HP_HTTP_PORT": str(service_port(m.name)),
        "HP_DATA_DIR": str(own),
        # identity's address keys; the others seal with their public file beside it
        "HP_IP_KEYS": str(ip_keys_file(layout)),
    }
    if keys:
        env["HP_KEYRING"] = str(keyring_file(keyring, m.name))
    if m.name in SERVICE_USERS:  # its NATS password (deploy/nats_config.py: its user's, 0600)
        env["HP_NATS_CREDENTIALS"] = str(nats_credentials(layout) / m.name)
    base = {
        "name": m.name,
        "template": "service.service",
        "description": f"Homeport {m.name}",
        "user": unit_user(m.name),
        "groups": unit_groups(m.name),
        "module": m.module,
        "port": service_port(m.name),
        "after": servers if m.name == "relay" else (*servers, relay),
        "requires": servers,
        "wants": () if m.name == "relay" else (relay,),
        "writes": (own, *keys),
        "hidden": _hidden(layout, m.name, names),
        "loopback_only": True,
        "environment": env,
    }
    extra: dict[str, object] = {}
    if m.name == "gateway":
        env |= {
            "HP_EDGE": "true",
            "HP_EDGE_DIR": str(data / "edge"),
            "HP_EDGE_HTTP_PORT": "80",
            "HP_EDGE_HTTPS_PORT": "443",
            "HP_ACME_DIR": str(data / "certs" / "acme"),
            "HP_CERTS_DIR": str(data / "certs" / "live"),
        }
        # nginx is its child: it binds 80/443 and reads the certificates certs writes.
        extra = {"writes": (own, data / "edge"), "capabilities": ("CAP_NET_BIND_SERVICE",)}
        extra["loopback_only"] = False
        extra["syscall_deny"] = ("@privileged",)  # nginx raises its open-files limit
    elif m.name == "firewall":
        mail_apps = ("sendmail=2525", "mailclient=2525", "mailclient=1143", "mailclient=4191")
        env |= {
            "HP_FIREWALL_APPLY": "true",
            "HP_FIREWALL_SSH_LOG": "journal",
            "HP_FIREWALL_EDGE_PORTS": "80,443",
            # what apps may reach on the services network's address, per addon (rules.py)
            "HP_FIREWALL_SERVICES_GATEWAY": SERVICES_GATEWAY,
            "HP_FIREWALL_ADDON_PORTS": ",".join(
                (
                    f"postgresql={PORTS['addon-postgres']}",
                    f"ldap={PORTS['ldap']}",
                    *mail_apps,  # the mail service's defaults for apps (HP_MAIL_APPS_*)
                )
            ),
        }
        extra = {
            "capabilities": ("CAP_NET_ADMIN",),
            "families": ("AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"),
        }
    elif m.name == "certs":
        env |= {
            "HP_ACME_DIR": str(data / "certs" / "acme"),
            "HP_CERTS_DIR": str(data / "certs" / "live"),
        }
        extra = {"writes": (own, *keys, data / "certs"), "loopback_only": False}
    elif m.name == "dns":
        extra = {"loopback_only": False}  # DNS providers' APIs and nameservers
    elif m.name == "notify":
        # alerts on the file systems of the data and of the system; pushes reach services on
        # the internet (ntfy, Gotify, webhooks: apprise)
        env |= {"HP_NOTIFY_DISK_PATHS": f"{data},/"}
        extra = {"loopback_only": False}
    elif m.name == "mail":
        # the servers as its children, as root (see the module's docstring): the mail ports on
        # every address; apps send (and their mail clients read) on the services network's
        env |= {"HP_MAIL_LISTEN": "0.0.0.0", "HP_MAIL_APPS_LISTEN": SERVICES_GATEWAY}  # noqa: S104
        extra = {
            "capabilities": MAIL_CAPABILITIES,
            "families": ("AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"),
            "loopback_only": False,
            "umask": "0022",
            "memory_deny_write_execute": False,
            "syscall_deny": ("@resources",),  # setuid, setgroups, chown: @privileged
            "syscall_allow": ("chroot",),
            "hidden": (*_hidden(layout, m.name, names), *_root_hidden(layout)),
            # stopping, the service stops the servers itself (Postfix first; systemd would
            # signal them all at once, and the service's supervisor restart them meanwhile)
            "values": {"kill_mode": "KillMode=mixed\n"},
        }
    elif m.name == "identity":
        # the LDAP endpoint for apps listens on the services network's gateway address
        env |= {"HP_LDAP_HOST": f"127.0.0.1,{SERVICES_GATEWAY}", "HP_LDAP_PORT": str(PORTS["ldap"])}
        # it writes the address keys (the firewall and every sealer read them)
        extra = {"loopback_only": False, "writes": (own, *keys, ip_keys_file(layout).parent)}
    elif m.name == "backup":
        env |= {
            "HP_BACKUP_DIR": str(own),
            "HP_APPS_DIR": str(data / "apps"),
            "HP_CERTS_DIR": str(data / "certs" / "live"),
            # the mail service's snapshots of its store, in every full backup
            "HP_MAIL_DIR": str(mail_root(layout)),
        }
        # reads app snapshots whatever uid owns their files; restores snapshots there.
        extra = {
            "writes": (own, *keys, data / "apps" / "snapshots"),
            # a local target is a mounted disk: where Debian mounts them (if present)
            "writes_outside": LOCAL_TARGET_ROOTS,
            "capabilities": ("CAP_DAC_READ_SEARCH",),
            "loopback_only": False,  # S3 targets
        }
    elif m.module == APPS_MODULE:
        env |= {
            "HP_DOCKER_HOST": "unix:///run/docker.sock",
            "HP_APPS_DIR": str(data / "apps"),
            "HP_BASE_CACHE": str(data / "base-cache"),
            "HP_SERVICES_NETWORK": SERVICES_NETWORK,
            "HP_SERVICES_SUBNET": SERVICES_SUBNET,
            "HP_ADDON_PG_HBA": str(data / ADDON_PG_HBA_DIR / "pg_hba.conf"),
            "HP_ADDON_PG_PORT": str(PORTS["addon-postgres"]),
            "HP_LDAP_HOST": f"127.0.0.1,{SERVICES_GATEWAY}",
            "HP_LDAP_PORT": str(PORTS["ldap"]),
            "HP_EDGE_HTTPS_PORT": "443",
        }
        extra = {
            # after the addon server (stopped before it), not wanting it: it runs on demand
            # after the firewall: it keeps the container egress floor (libs/egress.py)
            "after": (
                *servers,
                relay,
                unit_name("addon-postgres"),
                unit_name("firewall"),
                "docker.service",
            ),
            "requires": (*servers, "docker.service"),
            "wants": (relay, unit_name("firewall")),
            "writes": (
                own,
                *keys,
                data / "apps",
                data / "base-cache",
                data / ADDON_PG_HBA_DIR,
            ),
            # volumes keep their files' owners and modes (chown, fowner, dac_override); the
            # egress rules are the firewall's now, so no packet-filter capability here
            "capabilities": ("CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_OVERRIDE"),
            "families": ("AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"),
            "loopback_only": False,
            # the runtime sets up a new volume's folder (owner, mode) where dockerd keeps it
            "writes_outside": (DOCKER_VOLUMES,),
            "umask": "0027",  # the addon server (group homeport) reads the pg_hba.conf
            "syscall_deny": ("@resources",),
        }
    return UnitSpec(**{**base, **extra})  # type: ignore[arg-type]


def directories(layout: Layout) -> dict[Path, tuple[str, str, int]]:
    """{directory: (owner, group, mode)} the installer creates before the first start: every
    ReadWritePaths= of every unit (systemd refuses to start a unit whose path is missing)."""
    data = layout.data
    out: dict[Path, tuple[str, str, int]] = {data: ("root", "root", 0o755)}
    for spec in unit_specs(layout):
        for path in spec.writes:
            out.setdefault(path, (spec.user, spec.user, 0o700))
    # each sealing service's folder in it is its own: passable, not listable
    out[data / "keyring"] = ("root", "root", 0o711)
    # the servers' users pass through the mail unit's folder to the mail root in it
    out[data / "mail"] = ("root", "root", 0o711)
    # folders one service writes and another reads: a group both are in (see above)
    apps, certs = unit_user("apps"), unit_user("certs")
    out[data / ADDON_PG_HBA_DIR] = (apps, PLATFORM_GROUP, 0o750)
    out[data / "apps" / "snapshots"] = (apps, unit_user("backup"), 0o770)
    out[ip_keys_file(layout).parent] = (unit_user("identity"), "homeport-ipkeys", 0o2751)
    # certs writes these; the gateway (and its nginx) only reads them, so they must exist
    # before the gateway's first start (its file system is read-only there). The ACME
    # challenge tokens are public (services/certs/store.py keeps that folder 0755).
    out[data / "certs"] = (certs, "homeport-tls", 0o710)
    out[data / "certs" / "live"] = (certs, "homeport-tls", 0o2750)
    out[data / "certs" / "acme"] = (certs, "homeport-tls", 0o755)
    return out


# -- rendering -----------------------------------------------------------------------------


def _template(name: str) -> Template:
    return Template((TEMPLATES / name).read_text(encoding="utf-8"))


def _hardening(spec: UnitSpec) -> str:
    lines = [(TEMPLATES / "hardening.conf").read_text(encoding="utf-8").rstrip()]
    if spec.syscall_allow:
        lines.append("SystemCallFilter=" + " ".join(spec.syscall_allow))
    if spec.syscall_deny:
        lines.append("SystemCallFilter=~" + " ".join(spec.syscall_deny))
    caps = " ".join(spec.capabilities)
    lines.append(f"CapabilityBoundingSet={caps}")
    # root gets its bounding set at start anyway; ambient ones would outlive a change of user
    lines.append(f"AmbientCapabilities={caps if spec.user != 'root' else ''}")
    lines.append("RestrictAddressFamilies=" + " ".join(spec.families))
    if spec.loopback_only:
        lines += ["IPAddressDeny=any", "IPAddressAllow=localhost"]
    lines.append(f"MemoryDenyWriteExecute={'yes' if spec.memory_deny_write_execute else 'no'}")
    lines.append(f"UMask={spec.umask}")
    lines += [f"ReadWritePaths={p}" for p in spec.writes]
    lines += [f"ReadWritePaths=-{p}" for p in spec.writes_outside]
    lines += [f"InaccessiblePaths=-{p}" for p in spec.hidden]
    return "\n".join(lines)


def _render(spec: UnitSpec, layout: Layout) -> str:
    after = "".join(f" {u}" for u in spec.after)
    requires = "".join(f"Requires={u}\n" for u in spec.requires)
    requires += "".join(f"Wants={u}\n" for u in spec.wants)
    env = " ".join(f"{k}={v}" for k, v in sorted(spec.environment.items()))
    values = {
        "description": spec.description,
        "user": spec.user,
        "group": spec.user,
        "groups": f"SupplementaryGroups={' '.join(spec.groups)}\n" if spec.groups else "",
        "after": after,
        "requires": requires,
        "port": str(spec.port),
        "syslog": f"homeport-{spec.name}",
        "hardening": _hardening(spec),
        "limits": "",
        "postgres": POSTGRES_BIN,
        "nats": NATS_BIN,
        "code": str(layout.current),
        "python": str(layout.current / "venv" / "bin" / "python"),
        "module": spec.module,
        "optimize": OPTIMIZE_FLAG,  # deploy/bytecode.py: -OO, byte code from `bytecode`
        "bytecode": str(layout.current / "bytecode"),
        "env_file": str(layout.env_file),
        "environment": f"Environment={env}" if env else "",
        # its own database role (after homeport.env: a later file's value wins)
        "database_env": (
            f"EnvironmentFile={layout.database_env_file(spec.name)}\n"
            if spec.module and spec.name in SERVICE_ROLES
            else ""
        ),
        "stop_seconds": "30",
        "kill_mode": "",  # a KillMode= line: systemd signals every process of the unit
        **spec.values,
    }
    text = _template(spec.template).substitute(values)
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip() + "\n"


def nats_credentials(layout: Layout) -> Path:
    """`/etc/homeport/nats`: a NATS password per service, each file 0600 and owned by the user
    its unit runs as (deploy/nats_config.py)."""
    return layout.etc / "nats"


def unit_user(name: str) -> str:
    """The system user unit `name` runs as: `homeport-<name>` unless `UNIT_USERS` says."""
    if name in UNIT_USERS:
        return UNIT_USERS[name][0]
    unit_name(name)  # a bad name raises ValueError naming it
    return f"homeport-{name}"


def unit_groups(name: str) -> tuple[str, ...]:
    """The supplementary groups of unit `name`'s user."""
    if name in UNIT_USERS:
        return UNIT_USERS[name][1]
    readers = (g for g, members in READER_GROUPS.items() if name in members)
    return (PLATFORM_GROUP, *readers, *SYSTEM_GROUPS.get(name, ()))


def restore_marker(layout: Layout) -> Path:
    """`/var/lib/homeport.restore-running`: a restore is replacing the data dir (while it is
    there, homeport-restore-recover.service puts the old data back before the units start)."""
    return layout.data.with_name(f"{layout.data.name}.restore-running")


def render_units(layout: Layout, modules: Sequence[Module] | None = None) -> dict[str, str]:
    """{unit file name: its text} for every unit and `homeport.target`."""
    specs = unit_specs(layout, modules)
    out = {s.unit: _render(s, layout) for s in specs}
    addon = unit_name("addon-postgres")  # on demand: its path unit is wanted instead
    wants = [s.unit for s in specs if s.unit != addon] + list(ADDON_UNITS)
    out[TARGET] = _template(TARGET).substitute(code=str(layout.current), wants=" ".join(wants))
    for name in ADDON_UNITS:
        out[name] = _template(name).substitute(
            code=str(layout.current), flag=str(layout.data / ADDON_PG_HBA_DIR / ADDON_WANTED)
        )
    for name in UPDATE_UNITS:  # the nightly `homeport update --scheduled` (as root)
        out[name] = _template(name).substitute(
            code=str(layout.current),
            python=str(layout.current / "venv" / "bin" / "python"),
            prefix=str(layout.prefix),
            opt=str(layout.opt),
        )
    for name in RESTORE_UNITS:  # deploy/server_restore.py
        out[name] = _template(name).substitute(
            code=str(layout.current),
            python=str(layout.current / "venv" / "bin" / "python"),
            prefix=str(layout.prefix),
            var_lib=str(layout.data.parent),
            request=str(layout.data / "backup" / "restore-request.json"),
            marker=str(restore_marker(layout)),
        )
    return out


def write_units(
    layout: Layout, unit_dir: Path, modules: Sequence[Module] | None = None
) -> list[Path]:
    """Write the units into `unit_dir` (`/etc/systemd/system` on a server); idempotent: a file
    whose text is unchanged is not touched. Returns the files written or already right."""
    unit_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in render_units(layout, modules).items():
        path = unit_dir / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        paths.append(path)
    return paths


# -- talking to systemd (`homeport status/logs/restart` on a server install) -----------------

SHOW_PROPERTIES = (
    "Id", "LoadState", "ActiveState", "SubState", "MainPID", "NRestarts", "TriggeredBy",
)  # fmt: skip


def unit_ok(unit: dict[str, str]) -> bool:
    """Running, or idle until a path unit starts it (the addon Postgres before any app needs a
    database): what `homeport status` and the updater's health check count as fine."""
    state = unit.get("ActiveState")
    return state == "active" or (state == "inactive" and bool(unit.get("TriggeredBy", "").strip()))


def installed_units(layout: Layout) -> list[str]:
    """The unit names of this install's parts, servers first, as `render_units` makes them."""
    return [s.unit for s in unit_specs(layout)]


def status_argv(units: Sequence[str]) -> list[str]:
    """`systemctl show` of the units' state: one block of KEY=value lines per unit."""
    return ["systemctl", "show", "--no-pager", "--property=" + ",".join(SHOW_PROPERTIES), *units]


def parse_show(text: str) -> list[dict[str, str]]:
    """The blocks of `systemctl show` output (separated by blank lines) as dicts, in order."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
            current = {}
            continue
        key, sep, value = line.partition("=")
        if sep:
            current[key] = value
    if current:
        blocks.append(current)
    return blocks


def unit_for(name: str) -> str:
    """The unit of a part named on the command line: `gateway` or `homeport-gateway.service`."""
    return unit_name(name.removesuffix(".service").removeprefix("homeport-"))


def logs_argv(unit: str, lines: int, follow: bool) -> list[str]:
    """`journalctl` of one unit: its last `lines` lines, then on with `follow`."""
    argv = ["journalctl", "--no-pager", "-u", unit, "-n", str(lines), "-o", "short-iso"]
    return [*argv, "-f"] if follow else argv


def restart_argv(unit: str) -> list[str]:
    """`systemctl restart` of one unit."""
    return ["systemctl", "restart", unit]
