"""The server units (deploy/units.py): rendered into a temp Layout, checked by systemd's own
`systemd-analyze verify` and `systemd-analyze security --offline=yes`; and the systemctl /
journalctl calls of `homeport status/logs/restart` on a server install.

The host is a container without systemd as PID 1, so units are not started here: the
installer test (next) runs them in a Debian container with systemd.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli.main import main
from deploy.install import InstallError, sshd_ports
from deploy.layout import Layout
from deploy.planning import discover_modules
from deploy.units import (
    MAIL_CAPABILITIES,
    READER_GROUPS,
    RESTORE_RECOVER,
    RESTORE_UNITS,
    ROOT_UNITS,
    TARGET,
    UPDATE_UNITS,
    directories,
    logs_argv,
    parse_show,
    render_units,
    restart_argv,
    status_argv,
    unit_for,
    unit_groups,
    unit_name,
    unit_ok,
    unit_user,
    write_units,
)
from libs.events.nats_access import SERVICE_USERS
from libs.events.sealing import KEYRING_OWNERS, keyring_file
from tests.support.servers import need_server
from tests.support.unitfiles import directives

REPO = Path(__file__).resolve().parents[2]
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze missing: run deploy/install-system-deps.sh"
)

# Exposure bound per unit (systemd-analyze security: 0 = locked down, 10 = unprotected). The
# scores measured when written are in the comments; a change that loosens a unit fails here.
EXPOSURE_MAX = {
    "homeport-postgres.service": 1.5,  # 1.4
    "homeport-addon-postgres.service": 1.6,  # 1.5
    "homeport-nats.service": 1.4,  # 1.3
    "homeport-relay.service": 1.4,  # 1.3
    "homeport-identity.service": 1.5,  # 1.4
    "homeport-dns.service": 1.5,  # 1.4
    "homeport-certs.service": 1.5,  # 1.4
    "homeport-firewall.service": 1.7,  # 1.6: CAP_NET_ADMIN, netlink
    "homeport-backup.service": 1.8,  # 1.7: CAP_DAC_READ_SEARCH, any address (S3)
    "homeport-gateway.service": 1.8,  # 1.7: CAP_NET_BIND_SERVICE, any address (80/443)
    "homeport-apps.service": 2.4,  # 2.3 with iptables; docker group, chown/fowner/dac_override
    # root, as Postfix's and Dovecot's masters need (deploy/units.py says why, item by item):
    # setuid/setgid, chown/fowner/dac_override, kill, chroot; any address; W+X (rspamd's LuaJIT)
    "homeport-mail.service": 3.0,  # 2.9 (2.7 under systemd 252 in the box)
    # the root oneshots: the nightly update (writes /opt/homeport), the wizard's restore
    # (writes /var/lib, becomes homeport-postgres for initdb) and the recovery after a cut-off one
    "homeport-update.service": 2.6,  # 2.3
    "homeport-restore.service": 3.2,  # 2.9
    "homeport-restore-recover.service": 1.8,  # 1.5: renames files only, no network
}
DEFAULT_MAX = 2.0  # a service added later starts from the plain service unit (1.3-1.4)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Layout, Path]:
    """Units for a Layout under a temp dir, with the venv python they run in place."""
    root = tmp_path_factory.mktemp("root")
    layout = Layout(root)
    bin_dir = layout.current / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    unit_dir = root / "etc" / "systemd" / "system"
    write_units(layout, unit_dir)
    return layout, unit_dir


def _service_files(unit_dir: Path) -> list[Path]:
    """The platform's units (the nightly update's are tested in test_update_events.py, the
    restore's in test_server_restore.py)."""
    others = (*UPDATE_UNITS, *RESTORE_UNITS)
    return sorted(p for p in unit_dir.glob("*.service") if p.name not in others)


def test_every_service_has_a_unit(rendered: tuple[Layout, Path]) -> None:
    _, unit_dir = rendered
    mains = sorted(p.parent.name for p in (REPO / "services").glob("*/__main__.py"))
    assert mains, "no services/*/__main__.py found"
    names = {p.name for p in unit_dir.iterdir()}
    for svc in mains:
        assert unit_name(svc) in names, f"services/{svc} has no unit"
    for part in ("postgres", "nats", "relay"):
        assert unit_name(part) in names
    target = (unit_dir / TARGET).read_text()
    assert "WantedBy=multi-user.target" in target
    for f in _service_files(unit_dir):
        text = f.read_text()
        assert "PartOf=homeport.target" in text, f.name
        # nothing starts before the recovery of a cut-off restore has run (or been skipped)
        after = directives(text)["After"][0].split()
        assert RESTORE_RECOVER in after and f"Requires={RESTORE_RECOVER}" in text, f.name
        on_demand = f.with_suffix(".path").name  # the addon server: through its path unit
        assert re.search(rf"\b({re.escape(f.name)}|{re.escape(on_demand)})\b", target), f.name
    assert len(discover_modules()) + 3 == len(_service_files(unit_dir))


def test_hardening_and_users(rendered: tuple[Layout, Path]) -> None:
    layout, unit_dir = rendered
    for f in _service_files(unit_dir):
        d = directives(f.read_text())
        mail = f.name == "homeport-mail.service"  # its own test below
        for key, value in {
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "NoNewPrivileges": "yes",
            "PrivateDevices": "yes",
            "ProtectKernelTunables": "yes",
            "ProtectKernelModules": "yes",
            "ProtectKernelLogs": "yes",
            "LockPersonality": "yes",
            "MemoryDenyWriteExecute": "no" if mail else "yes",
            "Restart": "on-failure",
        }.items():
            assert d.get(key) == [value], f"{f.name}: {key}={d.get(key)}"
        assert "@system-service" in d["SystemCallFilter"], f.name
        assert d["RestrictAddressFamilies"], f.name
        assert d["UMask"][0] in (("0022",) if mail else ("0077", "0027")), f.name
        # logs go to the journal
        assert d["StandardOutput"] == ["journal"] and d["StandardError"] == ["journal"], f.name
        # writes only under the data dir, in folders the installer is told to make
        for p in d["ReadWritePaths"]:
            if f.name == "homeport-apps.service" and p == "-/var/lib/docker/volumes":
                continue  # new volumes' folders (owner, mode), where dockerd keeps them
            if f.name == "homeport-backup.service" and p in ("-/mnt", "-/media", "-/srv"):
                continue  # local backup targets: mounted disks
            assert Path(p).is_relative_to(layout.data), f"{f.name} writes {p}"
            assert Path(p) in directories(layout), f"{f.name}: {p} is not in directories()"
        user = d["User"][0]
        root = f.name.removeprefix("homeport-").removesuffix(".service") in ROOT_UNITS
        assert (user == "root") == root, f"{f.name} runs as {user}"
        caps = d["CapabilityBoundingSet"][0].split()
        expected = {
            "homeport-gateway.service": ["CAP_NET_BIND_SERVICE"],
            "homeport-firewall.service": ["CAP_NET_ADMIN"],
            "homeport-backup.service": ["CAP_DAC_READ_SEARCH"],
            "homeport-mail.service": list(MAIL_CAPABILITIES),
        }
        if f.name == "homeport-apps.service":
            assert "CAP_SYS_ADMIN" not in caps and "docker" in d["SupplementaryGroups"][0]
        else:
            assert caps == expected.get(f.name, []), f"{f.name}: {caps}"
    assert list(ROOT_UNITS) == ["mail"]
    gw = directives((unit_dir / "homeport-gateway.service").read_text())
    assert "HP_EDGE_HTTPS_PORT=443" in gw["Environment"][1]
    fw = directives((unit_dir / "homeport-firewall.service").read_text())
    assert "HP_FIREWALL_APPLY=true" in fw["Environment"][1]
    pg = (unit_dir / "homeport-postgres.service").read_text()
    assert f"-D {layout.data}/postgres/pgdata -p 7432 -h 127.0.0.1 " in pg  # not Debian's 5432
    svc = (unit_dir / "homeport-identity.service").read_text()
    assert "Requires=homeport-postgres.service" in svc and "Requires=homeport-nats.service" in svc
    assert re.search(r"^After=.*homeport-relay\.service", svc, re.M)
    assert f"EnvironmentFile={layout.env_file}" in svc


def test_the_addon_server_starts_only_once_an_app_asks_for_it(
    rendered: tuple[Layout, Path],
) -> None:
    """Issue 15 (idle memory): the target wants the path unit, never the addon server itself;
    the path unit starts it once the apps service's flag exists; nothing else pulls it in."""
    layout, unit_dir = rendered
    server, path = "homeport-addon-postgres.service", "homeport-addon-postgres.path"
    target = directives((unit_dir / TARGET).read_text())
    wanted = " ".join(target["Wants"]).split()
    assert path in wanted and server not in wanted
    d = directives((unit_dir / path).read_text())
    flag = layout.data / "addon-pg-hba" / "wanted"
    assert d["PathExists"] == [str(flag)] and d["Unit"] == [server]
    assert d["PartOf"] == ["homeport.target"] and d["WantedBy"] == ["homeport.target"]
    # the apps unit may write the flag, orders itself after the server, and does not want it
    apps = directives((unit_dir / "homeport-apps.service").read_text())
    assert str(flag.parent) in apps["ReadWritePaths"]
    assert server in " ".join(apps["After"]) and server not in " ".join(apps.get("Wants", []))
    for f in unit_dir.iterdir():
        if f.name not in (path, server):
            assert not re.search(rf"^(Wants|Requires)=.*{re.escape(server)}", f.read_text(), re.M)
    assert "PartOf=homeport.target" in (unit_dir / server).read_text()


def test_write_units_is_idempotent(rendered: tuple[Layout, Path]) -> None:
    layout, unit_dir = rendered
    before = {p.name: p.stat().st_mtime_ns for p in unit_dir.iterdir()}
    write_units(layout, unit_dir)
    assert {p.name: p.stat().st_mtime_ns for p in unit_dir.iterdir()} == before
    assert render_units(layout) == {p.name: p.read_text() for p in unit_dir.iterdir()}


@needs_analyze
def test_systemd_analyze_verify(rendered: tuple[Layout, Path]) -> None:
    _, unit_dir = rendered
    for f in sorted(unit_dir.iterdir()):
        r = subprocess.run(
            [str(ANALYZE), "verify", str(f)], capture_output=True, text=True, timeout=30
        )
        assert r.returncode == 0 and r.stderr.strip() == "", f"{f.name}: {r.stderr}"


@needs_analyze
def test_systemd_analyze_security_scores(rendered: tuple[Layout, Path]) -> None:
    _, unit_dir = rendered
    scores = {}
    oneshots = [unit_dir / u for u in (*UPDATE_UNITS, *RESTORE_UNITS) if u.endswith(".service")]
    assert len(oneshots) == 3, oneshots
    for f in [*_service_files(unit_dir), *oneshots]:
        r = subprocess.run(
            [str(ANALYZE), "security", "--offline=yes", "--no-pager", str(f)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
        assert m, f"{f.name}: no exposure level in {r.stdout[-300:]!r} {r.stderr!r}"
        scores[f.name] = float(m.group(1))
    print("exposure:", scores)
    for name, score in scores.items():
        assert score <= EXPOSURE_MAX.get(name, DEFAULT_MAX), f"{name}: exposure {score}"


# -- status / logs / restart against systemd ------------------------------------------------

# `systemctl show --property=Id,LoadState,ActiveState,SubState,MainPID,NRestarts a b c` as
# systemd 252 prints it (captured on Debian 12): properties in systemd's order, not ours.
SHOW_OUTPUT = """\
MainPID=812
NRestarts=0
Id=homeport-postgres.service
LoadState=loaded
ActiveState=active
SubState=running

MainPID=0
NRestarts=3
Id=homeport-gateway.service
LoadState=loaded
ActiveState=failed
SubState=failed

MainPID=0
NRestarts=0
Id=homeport-nosuch.service
LoadState=not-found
ActiveState=inactive
SubState=dead
"""


def test_status_parses_systemctl_show() -> None:
    units = parse_show(SHOW_OUTPUT)
    assert [u["Id"] for u in units] == [
        "homeport-postgres.service",
        "homeport-gateway.service",
        "homeport-nosuch.service",
    ]
    assert units[0]["MainPID"] == "812" and units[1]["NRestarts"] == "3"
    assert units[1]["ActiveState"] == "failed" and units[2]["LoadState"] == "not-found"
    argv = status_argv(["homeport-postgres.service"])
    assert argv[:2] == ["systemctl", "show"] and argv[-1] == "homeport-postgres.service"
    assert "--property=Id,LoadState,ActiveState,SubState,MainPID,NRestarts,TriggeredBy" in argv
    # running is fine, failed or missing is not; idle is fine only when a path unit starts it
    assert [unit_ok(u) for u in units] == [True, False, False]
    idle = {"Id": "homeport-addon-postgres.service", "ActiveState": "inactive"}
    assert not unit_ok(idle)
    assert unit_ok({**idle, "TriggeredBy": "homeport-addon-postgres.path"})


def test_logs_and_restart_argv() -> None:
    assert (
        unit_for("gateway") == unit_for("homeport-gateway.service") == ("homeport-gateway.service")
    )
    assert logs_argv("homeport-dns.service", 50, True) == [
        "journalctl",
        "--no-pager",
        "-u",
        "homeport-dns.service",
        "-n",
        "50",
        "-o",
        "short-iso",
        "-f",
    ]
    assert restart_argv("homeport-dns.service") == ["systemctl", "restart", "homeport-dns.service"]
    for bad in ("../etc", "gate way", "-x", "", "a;b"):
        with pytest.raises(ValueError, match="service name"):
            unit_for(bad)


def test_cli_on_a_server_install_talks_to_systemd(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With homeport.env present the CLI runs the real systemctl/journalctl; this host has
    no systemd as PID 1, so they fail, and the CLI says so instead of using the local stack."""
    layout = Layout(tmp_path)
    layout.env_file.parent.mkdir(parents=True)
    layout.env_file.write_text("HP_LOG_LEVEL=INFO\n")
    code = main(["status", "--prefix", str(tmp_path), "--data-dir", str(tmp_path / "none")])
    err = capsys.readouterr().err
    if shutil.which("systemctl") is None:
        assert "cannot run systemctl" in err
    else:
        assert "systemctl show failed" in err
    assert code == 1
    assert main(["restart", "--prefix", str(tmp_path), "../x"]) == 2
    assert "service name '../x'" in capsys.readouterr().err


def test_cli_restart_without_a_server_install(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["restart", "--prefix", str(tmp_path), "gateway"]) == 2
    assert "server install" in capsys.readouterr().err


def test_cli_logs_of_the_local_stack(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "dns.log").write_text("".join(f"line {i}\n" for i in range(10)))
    assert (
        main(["logs", "--prefix", str(tmp_path), "--data-dir", str(tmp_path), "-n", "2", "dns"])
        == 0
    )
    assert capfd.readouterr().out == "line 8\nline 9\n"
    assert main(["logs", "--prefix", str(tmp_path), "--data-dir", str(tmp_path), "nosuch"]) == 2
    assert "no log of 'nosuch'" in capfd.readouterr().err


_MDWE_PROBE = """
import ctypes, importlib, mmap, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux >= 6.3)
    sys.exit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit("W+X memory was allowed: the probe does not work")
except OSError:
    pass
for m in sys.argv[1:]:
    importlib.import_module(m)
from argon2 import PasswordHasher
PasswordHasher().hash("a password")
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
Ed25519PrivateKey.generate().sign(b"x")
print("ok")
"""


def test_services_run_without_writable_executable_memory() -> None:
    """MemoryDenyWriteExecute=yes is on every unit: the kernel's own W^X switch (prctl
    PR_SET_MDWE, what the unit setting enforces) set, every service's __main__ still imports
    and the native parts (argon2, cryptography) still work."""
    modules = [
        f"{m.module}.__main__" if m.name != "relay" else m.module for m in discover_modules()
    ]
    r = subprocess.run(
        [sys.executable, "-c", _MDWE_PROBE, *modules],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    if r.returncode == 77:
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_each_service_its_own_user_and_only_its_own_keys(rendered: tuple[Layout, Path]) -> None:
    """Issue 16, Keys: every service and the relay runs as a user of its own; a unit may write
    only its own keyring folder and cannot even see the others' (InaccessiblePaths, which holds
    for apps too, whose CAP_DAC_OVERRIDE passes file modes), nor the other services' folders,
    NATS passwords, the database passwords or the servers' data. Backup alone sees every
    service's folder and keyring (it backs them up)."""
    layout, unit_dir = rendered
    data, keyring, etc = layout.data, layout.data / "keyring", layout.etc
    names = [m.name for m in discover_modules()]
    users = {}
    for name in names:
        d = directives((unit_dir / unit_name(name)).read_text())
        users[name] = d["User"][0]
        assert d["Group"] == [d["User"][0]], name
        # the group that may pass into /etc/homeport (root, the mail unit's user, owns it)
        assert name in ROOT_UNITS or "homeport" in d["SupplementaryGroups"][0].split(), name
        hidden = {p.removeprefix("-") for p in d.get("InaccessiblePaths", [])}
        writes = set(d["ReadWritePaths"])
        secrets = {str(etc / "database"), str(etc / "admin.env"), str(data / "postgres")}
        assert secrets <= hidden, f"{name}: {hidden}"
        others = {str(etc / "nats" / o) for o in names if o != name and o in SERVICE_USERS}
        assert others <= hidden and str(etc / "nats" / name) not in hidden, name
        for owner in KEYRING_OWNERS:
            own = str(keyring / owner)
            if owner == name:
                assert own in writes and own not in hidden, name
                env = " ".join(d["Environment"])
                assert f"HP_KEYRING={keyring_file(keyring, name)}" in env, env
            else:
                assert own not in writes, f"{name} may write {owner}'s keys"
                seen = name == "backup" or (str(keyring) not in hidden and own not in hidden)
                assert seen == (name == "backup"), f"{name} sees {owner}'s keyring folder"
        for other in names:
            hides = str(data / other) in hidden
            reads = (name, other) in (("gateway", "certs"), ("mail", "certs"))
            expected = other != name and name != "backup" and not reads
            assert hides == expected, f"{name} hides {other}'s folder: {hides}"
    assert users == {n: "root" if n in ROOT_UNITS else f"homeport-{n}" for n in names}
    assert unit_user("apps") == "homeport-apps" and "docker" in unit_groups("apps")
    # the folders shared with a reader: its group, setgid (what the writer makes gets it)
    dirs = directories(layout)
    assert dirs[data / "certs" / "live"] == ("homeport-certs", "homeport-tls", 0o2750)
    assert dirs[data / "ip-keys"] == ("homeport-identity", "homeport-ipkeys", 0o2751)
    assert dirs[data / "apps" / "snapshots"] == ("homeport-apps", "homeport-backup", 0o770)
    for group, members in READER_GROUPS.items():
        for member in members:
            assert group in unit_groups(member), (group, member)
    assert not [g for g in unit_groups("apps") if g in READER_GROUPS]
    assert dirs[keyring] == ("root", "root", 0o711)
    for owner in KEYRING_OWNERS:
        assert dirs[keyring / owner] == (unit_user(owner), unit_user(owner), 0o700)


def test_the_mail_unit_runs_the_servers_as_root_with_only_what_they_need(
    rendered: tuple[Layout, Path],
) -> None:
    """Issue 17: the mail service runs Postfix, Dovecot and rspamd as its children on a server
    install too, so its unit is root's, bounded: the capabilities the servers need and no
    other, no ambient ones, no new privileges; the chroot call (Dovecot's logins) but not
    @resources; netlink (Postfix's getifaddrs), W+X memory (rspamd's LuaJIT), umask 022 (the
    servers' users read the configuration); it writes only its folder and keyring, reads certs'
    (the mail host's certificate) and cannot see what would take root out of its sandbox.
    Stopping it stops the servers through the service (KillMode=mixed). The mail ports listen
    on every address, apps send on the services network's. The other units are unchanged."""
    layout, unit_dir = rendered
    data, etc = layout.data, layout.etc
    text = (unit_dir / "homeport-mail.service").read_text()
    d = directives(text)
    assert d["User"] == ["root"] and d["Group"] == ["root"] and "SupplementaryGroups" not in d
    assert unit_user("mail") == "root" and "mail" in ROOT_UNITS
    assert d["CapabilityBoundingSet"][0].split() == [
        "CAP_NET_BIND_SERVICE",
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_CHOWN",
        "CAP_FOWNER",
        "CAP_DAC_OVERRIDE",
        "CAP_KILL",
        "CAP_SYS_CHROOT",
    ]
    assert d["AmbientCapabilities"] == [""]
    for key, value in {
        "NoNewPrivileges": "yes",
        "RestrictSUIDSGID": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectProc": "invisible",
        "MemoryDenyWriteExecute": "no",
        "UMask": "0022",
        "KillMode": "mixed",
    }.items():
        assert d[key] == [value], f"{key}={d[key]}"
    assert d["SystemCallFilter"] == ["@system-service", "chroot", "~@resources"]
    assert d["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    assert "IPAddressDeny" not in d  # mail comes from anywhere and goes anywhere
    assert d["ReadWritePaths"] == [str(data / "mail"), str(data / "keyring" / "mail")]
    hidden = {p.removeprefix("-") for p in d["InaccessiblePaths"]}
    for path in (
        "/run/docker.sock",
        "/run/containerd",
        "/run/dbus/system_bus_socket",
        "/run/systemd/private",
        "/etc/shadow",
        etc / "database-password",
        etc / "database-roles",
        etc / "database",
        etc / "admin.env",
        etc / "nats" / "identity",
        data / "identity",
        data / "keyring" / "identity",
        data / "postgres",
        data / "edge",
        data / "ip-keys" / "ip-keys.json",
    ):
        assert str(path) in hidden, path
    for path in (data / "certs", data / "mail", etc / "nats" / "mail", etc / "homeport.env"):
        assert str(path) not in hidden, path
    env = " ".join(d["Environment"]).split()
    assert "HP_MAIL_LISTEN=0.0.0.0" in env and "HP_MAIL_APPS_LISTEN=10.213.0.1" in env, env
    assert "HP_MAIL_SERVERS=false" not in text
    # the servers' users pass through its folder (0711) to the mail root in it
    assert directories(layout)[data / "mail"] == ("root", "root", 0o711)
    assert directories(layout)[data / "keyring" / "mail"] == ("root", "root", 0o700)
    for f in _service_files(unit_dir):
        if f.name != "homeport-mail.service":
            other = directives(f.read_text())
            assert "KillMode" not in other or f.name.endswith("postgres.service"), f.name
            assert "chroot" not in other["SystemCallFilter"], f.name


def test_the_installer_keeps_open_the_ports_sshd_listens_on(tmp_path: Path) -> None:
    """An admin's sshd on another port than 22 stays reachable once the firewall applies its
    default drop: the installer writes sshd's own ports into homeport.env."""
    config = _sshd_config(tmp_path, "Port 2202\nPort 22")
    assert sshd_ports(config) == (22, 2202)
    config = _sshd_config(tmp_path, "Port 2202")
    assert sshd_ports(config) == (2202,)
    assert sshd_ports(config, sshd=str(tmp_path / "no-sshd")) == (22,)  # none installed


def _sshd_config(tmp_path: Path, text: str) -> Path:
    if not Path("/usr/sbin/sshd").exists():
        need_server("sshd", FileNotFoundError("/usr/sbin/sshd (openssh-server) is not installed"))
    key = tmp_path / "host_key"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    config = tmp_path / "sshd_config"
    config.write_text(f"{text}\nHostKey {key}\n")
    return config


def test_sshd_ports_are_read_on_a_machine_whose_sshd_has_not_started(tmp_path: Path) -> None:
    """`sshd -T` refuses to run until sshd's unit made /run/sshd (a fresh machine, or sshd
    started by socket): the installer makes it, as the unit would, instead of guessing 22.
    Run in a mount namespace of the test's own with an empty /run."""
    config = _sshd_config(tmp_path, "Port 2202")
    script = (
        "import os, sys; from pathlib import Path; from deploy.install import sshd_ports; "
        "assert not Path('/run/sshd').exists(); "
        f"print(sshd_ports(Path({str(config)!r})), oct(os.stat('/run/sshd').st_mode & 0o777))"
    )
    mounted = f'mount -t tmpfs hp-test-run /run && exec {sys.executable} -c "{script}"'
    run = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", mounted],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["(2202,)", "0o755"]


def test_sshd_ports_refuse_to_guess_when_sshd_refuses_its_configuration(tmp_path: Path) -> None:
    config = _sshd_config(tmp_path, "Port twenty-two")
    with pytest.raises(InstallError, match="Badly formatted port") as e:
        sshd_ports(config)
    assert "sshd -t" in str(e.value)  # what to do
