"""deploy/install.sh on a Debian 12 "server" with systemd as PID 1 (tests/support/systemd_box.py):
every unit active, the dashboard on 443, setup through the printed link (the box's own
address, opened from the tests' host as from a person's computer), an app answering
through the edge, everything back after the box restarts, and a second run changing nothing.
Also the `systemd-analyze security` score of every unit under the real systemd.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from cli.main import main
from deploy.planning import ADDON_WANTED
from deploy.release import load_private_key, public_key_text
from deploy.units import ADDON_PG_HBA_DIR, PORTS, unit_name, unit_user
from libs.events.sealing import KEYRING_OWNERS
from tests.support.docker import find_docker_host
from tests.support.pdns import PdnsServer, PdnsZone
from tests.support.servers import need_server
from tests.support.systemd_box import (
    BOX_RELEASES,
    BOX_SRC,
    BOX_WHEELS,
    Boxes,
    SystemdBox,
    host_relay,
)
from tests.support.systemd_box import box_api as _api
from tests.support.systemd_box import box_curl as _curl
from tests.support.systemd_box import box_units as _units
from tests.support.systemd_box import checkout as _checkout
from tests.support.systemd_box import until as _until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500), pytest.mark.xdist_group("systemd-box")]

REPO = Path(__file__).resolve().parents[2]
SRC = BOX_SRC
RELEASES = BOX_RELEASES  # the host's release directory, served from the box's loopback
RELEASE_PORT = 8765
PASSWORD = "correct horse battery staple"  # a test account's
DASHBOARD = "my.localhost"
# holds the gateway's port before the install
SQUAT = (
    "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', 7410)); s.listen();"
    " time.sleep(600)"
)


NATS_PROBE = """
import asyncio
from nats.aio.client import Client
async def probe():
    nc = Client()
    try:
        await nc.connect("nats://127.0.0.1:7422", allow_reconnect=False, connect_timeout=2)
        print("connected without credentials")
    except Exception as e:
        print(e)
    finally:
        await nc.close()
asyncio.run(probe())
"""


@pytest.fixture(scope="module")
def box(boxes: Boxes) -> Iterator[SystemdBox]:
    """A fresh box for this file's tests (in order: the first installs); left installed to the
    server restore test (test_server_restore.py) when they passed and every unit is active."""
    try:
        b = boxes.fresh(find_docker_host())
    except docker.errors.DockerException as e:
        need_server("dockerd", e)
    b.releases = boxes.releases  # type: ignore[attr-defined]
    try:
        yield b
    finally:
        if not b.ok:
            print(b.diagnose())
    running = False
    if b.ok:
        with contextlib.suppress(AssertionError, docker.errors.DockerException):
            units = _units(b)
            running = bool(units) and all(p["ActiveState"] == "active" for p in units.values())
    if running:
        boxes.keep(b)
    else:
        boxes.done(b)


def _install(box: SystemdBox) -> str:
    started = time.monotonic()
    out = box.run("bash", f"{SRC}/deploy/install.sh", "--wheels", BOX_WHEELS)
    print(f"install.sh took {time.monotonic() - started:.0f} s:\n{out}")
    return out


def _tcp_from_host(address: str, port: int) -> str:
    """What a TCP client on the tests' host sees at the box's address: open, refused, dropped."""
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((address, port))
        return "open"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "dropped"
    finally:
        s.close()


def _from_host(
    url: str, method: str = "GET", body: object = None, cookie: str = ""
) -> tuple[int, dict[str, str], str]:
    """A request from the tests' host (a person's computer) to the box, accepting the
    self-signed certificate as that person does once; (status, headers, body)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    origin = url.split("/", 3)
    headers = {"Origin": f"{origin[0]}//{origin[2]}"} if method != "GET" else {}
    if cookie:
        headers["Cookie"] = cookie
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode(errors="replace")


def _fingerprint(box: SystemdBox) -> dict[str, str]:
    """What a second install must leave as it is: unit PIDs, config and unit file hashes, the
    users, the Postgres clusters, the keyring."""
    script = (
        # every file and enablement link of ours (a .wants folder holds links), sorted
        "find /etc/homeport /etc/systemd/system -path '*homeport*' \\( -type f -o -type l \\)"
        " -printf '%p -> %l\\n' | sort; "
        "find /etc/homeport /etc/systemd/system -path '*homeport*' -type f | sort"
        " | xargs sha256sum /var/lib/homeport/keyring/*/keyring.json"
        " /etc/apt/apt.conf.d/20auto-upgrades; "
        "grep homeport /etc/passwd /etc/group; "
        "ls -d /var/lib/homeport/*/pgdata; "
        "echo debian postgresql: $(systemctl is-enabled postgresql)"
        " $(systemctl is-active postgresql); "
        "for d in /var/lib/homeport/*/pgdata; do "
        "  /usr/lib/postgresql/15/bin/pg_controldata -D $d | grep 'system identifier'; done"
    )
    pids = {u: p["MainPID"] for u, p in _units(box).items()}
    return {"files": box.sh(script), "pids": json.dumps(pids, sort_keys=True)}


def _keys_kept_apart(box: SystemdBox) -> None:
    """Issue 16, Keys, on the running install: each service runs as its own user, and its
    key file is readable only by it; a unit cannot even see the other keyring folders (apps,
    whose CAP_DAC_OVERRIDE passes file modes, included) nor the others' NATS passwords."""
    keyring = "/var/lib/homeport/keyring"
    for owner in KEYRING_OWNERS:
        user = box.run("systemctl", "show", "-p", "User", "--value", unit_name(owner)).strip()
        assert user == unit_user(owner), user  # homeport-<owner>; root for mail (ROOT_UNITS)
        files = box.sh(f"stat -c '%U %a %n' {keyring}/{owner} {keyring}/{owner}/keyring.json")
        assert files.strip().split("\n") == [
            f"{user} 700 {keyring}/{owner}",
            f"{user} 600 {keyring}/{owner}/keyring.json",
        ], files
    code, out = box.status(
        "runuser", "-u", unit_user("gateway"), "--", "cat", f"{keyring}/identity/keyring.json"
    )
    assert code != 0 and "Permission denied" in out, out
    # inside the apps unit's own mount namespace (as root there: more than apps may): the
    # hidden folders and files are empty stand-ins; its own keyring is there
    pid = box.run("systemctl", "show", "-p", "MainPID", "--value", unit_name("apps")).strip()
    assert pid.isdigit() and pid != "0", pid

    def in_apps(command: str) -> str:
        return box.sh(f"nsenter --target {pid} --mount -- {command}").strip()

    assert in_apps(f"ls -A {keyring}/identity") == ""
    assert "keyring.json" in in_apps(f"ls -A {keyring}/apps").split()
    assert in_apps("ls -A /etc/homeport/database") == ""
    assert box.sh("ls -A /etc/homeport/database").strip() != ""
    for user, size in (("identity", "0"), ("apps", box.sh("wc -c < /etc/homeport/nats/apps"))):
        assert in_apps(f"sh -c 'wc -c < /etc/homeport/nats/{user}'") == size.strip(), user
    assert box.sh("wc -c < /etc/homeport/nats/identity").strip() != "0"


def _compiled_at_start(box: SystemdBox, service: str) -> list[str]:
    """The modules `homeport-<service>` would compile from source at start (none: the release's
    -OO byte code, warmed by the installer or the update, has them), as its user and with its
    unit's environment."""
    current = "/opt/homeport/current"
    user = unit_user(service)
    env = f"PYTHONDONTWRITEBYTECODE=1 PYTHONPYCACHEPREFIX={current}/bytecode"
    script = (
        f"cd {current} && runuser -u {user} -- env {env} {current}/venv/bin/python -OO -v "
        f"-c 'import services.{service}.__main__' 2>&1"
    )
    log = box.sh(script)
    assert "opt-2.pyc" in log, log[-2000:]
    return re.findall(r"^# code object from (\S+\.py)$", log, re.M)


def test_install_setup_app_restart_and_second_run(box: SystemdBox) -> None:
    install = ("bash", f"{SRC}/deploy/install.sh", "--wheels", BOX_WHEELS)
    # clear errors: not root; a port taken, named with what holds it (the run stops there,
    # the next one carries on)
    box.run("install", "-m", "755", f"{SRC}/deploy/install.sh", "/tmp/install.sh")
    code, out = box.status("runuser", "-u", "nobody", "--", "bash", "/tmp/install.sh")
    assert code != 0 and "run as root" in out, out
    box.run("systemd-run", "--unit=squatter", "python3", "-c", SQUAT)
    code, out = box.status(*install)
    assert code != 0, out
    assert "port 7410 (for Homeport's gateway) is taken by" in out and "python3" in out, out
    box.run("systemctl", "stop", "squatter")

    out = _install(box)
    # every unit active
    units = _units(box)
    # the addon Postgres starts on demand (its path unit waits for an app's database)
    assert len(units) >= 10, units
    assert box.run("systemctl", "is-active", "homeport-addon-postgres.path").strip() == "active"
    inactive = {u: p["ActiveState"] for u, p in units.items() if p["ActiveState"] != "active"}
    assert not inactive, inactive
    assert box.run("systemctl", "is-enabled", "homeport-update.timer").strip() == "enabled"
    # trust domains: no unit reads a password the others can; each service's database role and
    # NATS user are its own (the gateway's role reads no identity table; NATS wants a user)
    assert "postgres:" not in box.run("cat", "/etc/homeport/homeport.env")
    modes = box.sh("stat -c '%a %U' /etc/homeport/admin.env /etc/homeport/database/gateway.env")
    assert modes.split() == ["600", "root", "600", "root"], modes
    as_gateway = box.sh(
        "set -a; . /etc/homeport/database/gateway.env; set +a;"
        ' psql "$HP_DATABASE_URL" -Atc "SELECT count(*) FROM identity.users" 2>&1',
        check=False,
    )
    assert "permission denied for schema identity" in as_gateway, as_gateway
    anonymous = box.sh(f"cd /tmp && /opt/homeport/current/venv/bin/python -c '{NATS_PROBE}'")
    assert "Authorization Violation" in anonymous, anonymous
    listing = box.run("homeport", "status")  # against systemd
    assert "homeport-gateway.service" in listing and "active" in listing, listing
    show = box.run("systemctl", "show", "-p", "ExecStart", "homeport-gateway.service")
    assert "python -OO -m services.gateway" in show, show
    assert _compiled_at_start(box, "gateway") == []
    # the dashboard on 443
    status, page = _curl(box, DASHBOARD, "/")
    assert status == 200 and "<html" in page.lower(), (status, page[:300])
    # the printed setup link names the box's own address (no tunnel, no name needed): opened
    # from the tests' host, the dashboard answers with the self-signed fallback certificate
    m = re.search(r"Setup: +https://([0-9.]+)/#/setup\?token=([A-Za-z0-9_-]+)", out)
    assert m and m.group(1) == box.address, (box.address, out)
    assert f"https://my.localhost/#/setup?token={m.group(2)}" in out, out  # on the server
    site = f"https://{box.address}"
    status, headers, page = _from_host(f"{site}/")
    assert status == 200 and "<html" in page.lower(), (status, page[:300])
    assert "frame-ancestors 'none'" in headers.get("Content-Security-Policy", ""), headers
    # the firewall's table is in force: inbound drops by default; the Postgres of the addons
    # listens on the services network's address, which the host reaches only as an app would
    table = box.run("nft", "list", "table", "inet", "homeport")
    assert "hook input priority filter; policy drop;" in table, table
    assert "tcp dport { 80, 443 } accept" in table, table
    assert _tcp_from_host(box.address, 443) == "open"
    assert _tcp_from_host(box.address, PORTS["nats"]) == "dropped"  # loopback-only anyway
    status, _, _ = _from_host(f"{site}/metrics")
    assert status == 404
    setup = {"username": "owner", "email": "owner@example.test", "password": PASSWORD}
    status, _, text = _from_host(f"{site}/api/v1/setup", "POST", setup)
    assert status in (400, 403) and "setup_token" in text, text  # the token is needed
    setup["setup_token"] = m.group(2)
    status, _, text = _from_host(f"{site}/api/v1/setup", "POST", setup)
    assert status == 201, text
    login = {"username": "owner", "password": PASSWORD}
    status, headers, text = _from_host(f"{site}/api/v1/session", "POST", login)
    assert status == 200, text
    cookie = headers["Set-Cookie"].split(";", 1)[0]
    assert cookie.startswith("__Host-hp_session="), headers
    status, _, text = _from_host(f"{site}/api/v1/profile", cookie=cookie)
    assert status == 200 and json.loads(text)["username"] == "owner", text
    # plain HTTP to the address: to https on the same address
    conn = http.client.HTTPConnection(box.address, 80, timeout=30)
    try:
        conn.request("GET", "/some/where")
        resp = conn.getresponse()
        assert resp.status == 301, resp.status
        assert resp.getheader("Location") == f"{site}/some/where"
    finally:
        conn.close()
    status, answer = _api(
        box, "POST", "/api/v1/session", {"username": "owner", "password": PASSWORD}
    )
    assert status == 200, answer
    # an app installs and answers through the edge
    body = {"manifest_id": "org.homeport.static", "version": "1.0.0", "location": "site"}
    status, answer = _api(box, "POST", "/api/v1/apps", body)
    assert status == 202, answer

    def installed() -> bool:
        _, apps = _api(box, "GET", "/api/v1/apps")
        states = [a["state"] for a in apps["items"]] if isinstance(apps, dict) else []
        assert "error" not in states, apps
        return states == ["installed"]

    _until("the static website app installed", installed, 180)

    def site_answers() -> bool:
        status, text = _curl(box, "site.localhost", "/")
        return status == 200 and "Static website" in text

    _until("https://site.localhost/ answering", site_answers, 60)
    _keys_kept_apart(box)

    # the apps' addon Postgres sleeps until the apps service asks for it (its flag file, as the
    # apps service's user writes it before an app's first database), then its path unit starts it
    def addon_state() -> str:
        return box.run(
            "systemctl", "is-active", "homeport-addon-postgres.service", check=False
        ).strip()

    assert addon_state() == "inactive"
    flag = f"/var/lib/homeport/{ADDON_PG_HBA_DIR}/{ADDON_WANTED}"
    box.run("runuser", "-u", unit_user("apps"), "--", "touch", flag)
    _until("the addon Postgres started by its path unit", lambda: addon_state() == "active", 90)
    port = str(PORTS["addon-postgres"])

    def addon_answers() -> bool:
        out = box.run("pg_isready", "-h", "127.0.0.1", "-p", port, check=False)
        return "accepting connections" in out

    _until("the addon Postgres accepting connections", addon_answers, 60)

    # the box restarted: every unit active again, the app answers, without help
    box.restart()
    box.wait_booted(180)
    _until(
        "every unit active after the restart",
        lambda: all(p["ActiveState"] == "active" for p in _units(box).values()),
        180,
    )
    _until("the app answering after the restart", site_answers, 120)
    # the same units, and the addon Postgres again (its flag is still there)
    assert set(_units(box)) == {*units, "homeport-addon-postgres.service"}

    # a second run changes nothing
    before = _fingerprint(box)
    again = _install(box)
    assert "Setup is done" in again, again
    after = _fingerprint(box)
    assert after["pids"] == before["pids"]
    assert after["files"] == before["files"]
    # one cluster each (Debian's default one is not there), never initdb'd again
    assert after["files"].count("/pgdata\n") == 2, after["files"]
    assert "debian postgresql: disabled inactive" in after["files"], after["files"]
    assert site_answers()
    box.ok = True


# IMAPS on the box's loopback: the TLS version, the served certificate's SHA-256, the greeting
# and the answer to LOGIN (the platform account, through Dovecot's auth and the mail service)
IMAPS_PROBE = r"""
import hashlib, socket, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE  # whose certificate is compared below, with certs' file
with socket.create_connection(("127.0.0.1", 993), timeout=10) as raw:
    with ctx.wrap_socket(raw) as tls:
        f = tls.makefile("rwb")
        greeting = f.readline().decode().strip()
        f.write(b'a LOGIN owner "' + sys.argv[1].encode() + b'"\r\n')
        f.flush()
        line = f.readline()
        while line and not line.startswith(b"a "):
            line = f.readline()
        print(tls.version())
        print(hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest())
        print(greeting)
        print(line.decode().strip())
"""
# The SHA-256 of the first certificate of a PEM chain (certs' file for the mail host).
PEM_DIGEST = (
    "import hashlib, ssl, sys; end = '-----END CERTIFICATE-----';"
    " pem = open(sys.argv[1]).read().split(end)[0] + end + chr(10);"
    " print(hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest())"
)
# (user, command) of every process in the mail unit's cgroup
MAIL_PROCESSES = """
import os, pwd
seen = set()
for p in filter(str.isdigit, os.listdir("/proc")):
    try:
        if "homeport-mail.service" in open(f"/proc/{p}/cgroup").read():
            comm = open(f"/proc/{p}/comm").read().strip()
            seen.add(f"{pwd.getpwuid(os.stat(f'/proc/{p}').st_uid).pw_name} {comm}")
    except OSError:
        pass
print(chr(10).join(sorted(seen)))
"""
MAIL_PORTS = (25, 465, 587, 993, 4190)


def _listening(box: SystemdBox, ports: tuple[int, ...] = MAIL_PORTS) -> set[int]:
    """Which of `ports` something listens on in the box (TCP, any address)."""
    found = set()
    for line in box.run("ss", "-Hltn").splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[3].rpartition(":")[2].isdigit():
            found.add(int(fields[3].rpartition(":")[2]))
    return found & set(ports)


def _mail_status(box: SystemdBox) -> dict[str, Any]:
    """GET /api/v1/mail/status (whether the servers run, the last error)."""
    status, answer = _api(box, "GET", "/api/v1/mail/status")
    assert status == 200 and isinstance(answer, dict), (status, answer)
    return answer


def _admin_session(box: SystemdBox) -> None:
    """The cookie jar signed in as the administrator: made at setup (the first test), or made
    here with identity's one-time token when this test runs alone."""
    token = box.sh("cat /var/lib/homeport/identity/setup-token 2>/dev/null", check=False).strip()
    if token:
        body = {"username": "owner", "email": "owner@example.test", "password": PASSWORD}
        status, answer = _api(box, "POST", "/api/v1/setup", {**body, "setup_token": token})
        assert status == 201, answer
    _signs_in(box, {"username": "owner", "password": PASSWORD})


def test_mail_servers_run_in_the_root_mail_unit(
    box: SystemdBox, pdns: PdnsServer, pdns_zone: PdnsZone
) -> None:
    """Issue 17 on a server install: Debian's own mail servers stay stopped and disabled (also
    after the box restarted), no mail port is taken; a domain added with its DNS host (a
    PowerDNS on the tests' host, reached over the box's network) and mail turned on for it
    through the API: the mail unit, root's, runs Postfix, Dovecot and rspamd as its children
    under their own users; IMAPS on 993 answers with TLS and the certificate certs made for the
    mail host, and the administrator signs in over it; SMTP answers on 25; the status has no
    error, and the MX record is at the DNS host. Mail off again: the ports are free."""
    if not _units(box):
        _install(box)
    for unit in ("postfix.service", "dovecot.service", "dovecot.socket", "rspamd.service"):
        assert box.run("systemctl", "is-enabled", unit, check=False).strip() == "disabled", unit
        assert box.run("systemctl", "is-active", unit, check=False).strip() == "inactive", unit
    assert _listening(box) == set()
    mail = unit_name("mail")
    assert box.run("systemctl", "show", "-p", "User", "--value", mail).strip() == "root"
    _admin_session(box)
    state = _mail_status(box)
    assert not state["running"] and state["last_error"] is None, state

    zone, host = pdns_zone.name, box.host_address
    with host_relay(host, (pdns.dns_port, pdns.api_port)):
        provider = {
            "kind": "powerdns",
            "api_url": f"http://{host}:{pdns.api_port}",
            "api_key": pdns.api_key,
            "zone": zone,
            "nameservers": [f"{host}:{pdns.dns_port}"],
        }
        body = {"domain": zone, "provider": provider, "server_ipv4": box.address}
        status, answer = _api(box, "POST", "/api/v1/domains", body)
        assert status == 201, answer
        started = time.monotonic()
        status, answer = _api(box, "POST", "/api/v1/mail/domains", {"domain": zone})
        assert status == 201, answer

        def running() -> bool:
            state = _mail_status(box)
            assert state["last_error"] is None, state
            return bool(state["running"])

        _until("the mail servers running", running, 180)  # rspamd compiles its cache first
        print(f"mail on to the servers running: {time.monotonic() - started:.0f} s")
        assert box.run("systemctl", "is-active", mail).strip() == "active"
        state = _mail_status(box)
        assert state["domains"] == [zone] and state["hostname"] == f"mail.{zone}", state
        assert "not run" not in json.dumps(state), state
        assert _listening(box) == set(MAIL_PORTS)
        # the servers are the unit's children, their workers under their own users
        processes = set(box.run("python3", "-c", MAIL_PROCESSES).splitlines())
        for expected in ("root python", "root master", "postfix qmgr", "root dovecot",
                         "root rspamd", "_rspamd rspamd"):  # fmt: skip
            assert expected in processes, processes
        # IMAPS answers with TLS, serving the certificate certs wrote for the mail host (read
        # through the unit's file system), and the administrator signs in
        live = f"/var/lib/homeport/certs/live/mail.{zone}/fullchain.pem"

        def imaps_with_certs_certificate() -> bool:
            code, _ = box.status("test", "-f", live)
            if code != 0:
                return False
            lines = box.run("python3", "-c", IMAPS_PROBE, PASSWORD).splitlines()
            return lines[1] == box.run("python3", "-c", PEM_DIGEST, live).strip()

        _until(
            "IMAPS serving certs' certificate for the mail host", imaps_with_certs_certificate, 90
        )
        version, _, greeting, login = box.run("python3", "-c", IMAPS_PROBE, PASSWORD).splitlines()
        assert version in ("TLSv1.2", "TLSv1.3"), version
        assert greeting.startswith("* OK"), greeting
        assert login.startswith("a OK") and "Logged in" in login, login
        banner = box.run(
            "python3", "-c", "import socket; s = socket.create_connection(('127.0.0.1', 25), 10);"
            " print(s.recv(200).decode().strip()); s.sendall(b'QUIT\\r\\n')",
        )  # fmt: skip
        assert banner.startswith(f"220 mail.{zone} "), banner

        # what mail needs from DNS, published at the domain's DNS host through dns
        def mx_published() -> bool:
            found = pdns.api("GET", f"/api/v1/servers/localhost/zones/{zone}.")
            return any(r["type"] == "MX" and r["name"] == f"{zone}." for r in found["rrsets"])

        _until("the MX record at the DNS host", mx_published, 60)

        # mail off: the servers stop, their ports are free; the domain goes again (the tests
        # after this one find the box as before)
        status, answer = _api(box, "DELETE", f"/api/v1/mail/domains/{zone}")
        assert status == 204, answer
        _until("the mail ports free again", lambda: _listening(box) == set(), 60)
        assert box.run("systemctl", "is-active", mail).strip() == "active"
        status, answer = _api(box, "DELETE", f"/api/v1/domains/{zone}")
        assert status in (200, 204), answer
    box.ok = True


def test_units_security_scores_under_real_systemd(box: SystemdBox) -> None:
    if not _units(box):
        _install(box)
    from tests.deploy.test_units import DEFAULT_MAX, EXPOSURE_MAX

    scores: dict[str, float] = {}
    for unit in sorted(_units(box)):
        out = box.run("systemd-analyze", "security", "--no-pager", unit)
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
        assert m, out[-500:]
        scores[unit] = float(m.group(1))
    print("systemd-analyze security:", json.dumps(scores, indent=1))
    worse = {u: s for u, s in scores.items() if s > EXPOSURE_MAX.get(u, DEFAULT_MAX)}
    assert not worse, worse
    box.ok = True


def _signs_in(box: SystemdBox, login: dict[str, str]) -> None:
    """The administrator made at setup signs in (what identity recorded if refused). The
    tests of this file run in order on one box (xdist_group): setup happened in the first."""
    status, answer = _api(box, "POST", "/api/v1/session", login)
    assert status == 200, (answer, _why_refused(box))


def _why_refused(box: SystemdBox) -> str:
    """For a refused sign-in's assertion: the reasons identity recorded (its LoginFailed events)
    and its journal's end."""
    env = "set -a; . /etc/homeport/admin.env; set +a"
    sql = (
        "SELECT position, recorded_at, data->>'reason' FROM events.events"
        " WHERE type = 'LoginFailed' ORDER BY position DESC LIMIT 5"
    )
    failed = box.sh(f'{env}; psql "$HP_DATABASE_URL" -Atc "{sql}"', check=False)
    journal = box.sh(
        "journalctl -b --no-pager -n 60 -u homeport-identity -u homeport-gateway | cut -c1-300",
        check=False,
    )
    return f"LoginFailed: {failed}\n{journal}"


def _release(repo: Path, version: str, key: Path, out: Path) -> None:
    """`homeport release build` of `repo` (a git checkout) as `version` into `out`."""
    code = main(["release", "build", "--repo", str(repo), "--version", version,
                 "--key", str(key), "--out", str(out)])  # fmt: skip
    assert code == 0


def test_update_under_systemd_and_roll_back(box: SystemdBox, tmp_path: Path) -> None:
    """Release N installed -> `homeport update` to a signed N+1 with a migration: it runs, with
    its data and the migration applied; an N+2 whose identity service cannot start -> rolled
    back to N+1 by itself."""
    if not _units(box):
        _install(box)
    out: Path = box.releases  # type: ignore[attr-defined]
    key = tmp_path / "release.key"
    assert main(["release", "keygen", "--out", str(key)]) == 0
    pub = out / "release.pub"
    pub.write_text(public_key_text(load_private_key(key)))
    repo = _checkout(tmp_path / "repo")
    # N+1 brings a migration of the event store's schema (run by the update before it switches)
    (repo / "libs" / "events" / "migrations" / "0099_update_probe.sql").write_text(
        "CREATE TABLE events.update_probe (release text NOT NULL);\n"
        "INSERT INTO events.update_probe VALUES ('0.2.0');\n"
    )
    # ... and a change to its unit files, which the update applies before restarting
    template = repo / "deploy" / "systemd" / "service.service"
    stamp = "# Rendered by deploy/units.py: ${description}\n"
    template.write_text(template.read_text().replace(stamp, stamp + "# release 0.2.0\n", 1))
    subprocess.run(["git", "init", "-q", str(repo)], check=True, timeout=30)
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True, timeout=60)
    _release(repo, "0.2.0", key, out)
    # the release server on the box's loopback; pip of the new venv from the wheelhouse
    box.run("systemd-run", "--unit=release-server", "python3", "-m", "http.server",
            "--bind", "127.0.0.1", "--directory", RELEASES, str(RELEASE_PORT))  # fmt: skip
    box.put("/etc/pip.conf", f"[global]\nno-index = true\nfind-links = {BOX_WHEELS}\n".encode())
    url = f"http://127.0.0.1:{RELEASE_PORT}"
    again = box.run("bash", f"{SRC}/deploy/install.sh", "--wheels", BOX_WHEELS,
                    "--release-key", f"{RELEASES}/release.pub", "--release-url", url)  # fmt: skip
    assert "pinned the release key" in again, again
    started = time.monotonic()
    update = box.run("homeport", "update", check=False)
    print(f"homeport update to 0.2.0 took {time.monotonic() - started:.0f} s:\n{update}")
    assert box.run("readlink", "/opt/homeport/current").strip() == "0.2.0", update
    assert box.run("readlink", "/opt/homeport/previous").strip() == "0.1.0", update
    assert _compiled_at_start(box, "identity") == []  # 0.2.0's byte code, warmed by the update
    assert "event store: 1 migration(s) applied [99]" in update, update
    probe = "SELECT release FROM events.update_probe"
    env = "set -a; . /etc/homeport/admin.env; set +a"
    assert box.sh(f'{env}; psql "$HP_DATABASE_URL" -Atc "{probe}"').strip() == "0.2.0"
    units = _units(box)
    assert all(p["ActiveState"] == "active" for p in units.values()), units
    unit_file = "/etc/systemd/system/homeport-identity.service"
    assert "# release 0.2.0" in box.run("cat", unit_file), update
    # its data: the administrator made at setup signs in
    login = {"username": "owner", "password": PASSWORD}
    _signs_in(box, login)

    # N+2: identity exits at start -> unhealthy -> back to 0.2.0 by itself
    main_py = repo / "services" / "identity" / "__main__.py"
    main_py.write_text("raise SystemExit('broken on purpose')\n" + main_py.read_text())
    template.write_text(template.read_text().replace("# release 0.2.0", "# release 0.3.0"))
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True, timeout=60)
    _release(repo, "0.3.0", key, out)
    started = time.monotonic()
    failed = box.run("homeport", "update", "--health-timeout", "25", check=False)
    print(f"homeport update to 0.3.0 took {time.monotonic() - started:.0f} s:\n{failed}")
    assert "rolled back" in failed, failed
    assert box.run("readlink", "/opt/homeport/current").strip() == "0.2.0", failed
    assert box.sh("test -e /opt/homeport/0.3.0 && echo there || echo gone").strip() == "gone"
    _until(
        "every unit active after the roll-back",
        lambda: all(p["ActiveState"] == "active" for p in _units(box).values()),
        120,
    )
    # 0.3.0's unit files were applied, then 0.2.0's again
    units_text = box.run("cat", unit_file)
    assert "# release 0.2.0" in units_text and "# release 0.3.0" not in units_text, failed
    status, answer = _api(box, "POST", "/api/v1/session", login)
    assert status == 200, (answer, _why_refused(box))
    box.ok = True


def test_an_install_from_before_per_service_users_is_moved_over(box: SystemdBox) -> None:
    """An install whose services all ran as the one user `homeport`, with the keyrings as
    `keyring/<service>.json` and the address keys in identity's folder: install.sh run again
    gives each service's files to its own user, moves the keys into their folders byte for
    byte, and the platform comes back with its data (the administrator signs in)."""
    if not _units(box):
        _install(box)
    data, keyring = "/var/lib/homeport", "/var/lib/homeport/keyring"
    rings = {
        o: box.read("sha256sum", f"{keyring}/{o}/keyring.json").split()[0] for o in KEYRING_OWNERS
    }
    ip_keys = box.read("sha256sum", f"{data}/ip-keys/ip-keys.json").split()[0]
    box.run("systemctl", "stop", "homeport.target")
    # what the release before this one left
    box.sh("id homeport >/dev/null 2>&1 || useradd --system --gid homeport homeport")
    folders = " ".join(
        f"{data}/{n}" for n in ("identity", "apps", "backup", "certs", "dns", "edge")
    )
    box.sh(f"chown -R homeport:homeport {folders} {keyring}/* {data}/ip-keys")
    for owner in KEYRING_OWNERS:
        box.sh(
            f"mv {keyring}/{owner}/keyring.json {keyring}/{owner}.json && rm -rf {keyring}/{owner}"
        )
    box.sh(f"mv {data}/ip-keys/ip-keys.json {data}/ip-keys/ip-keys.pub.json {data}/identity/")

    again = _install(box)
    assert "files of user homeport given to the services' users" in again, again
    assert f"moved identity's address keys to {data}/ip-keys" in again, again
    assert box.sh(f"find {data} -user homeport | head -5").strip() == ""
    for owner in KEYRING_OWNERS:
        line = box.sh(f"stat -c '%U %a' {keyring}/{owner}/keyring.json").strip()
        assert line == f"{unit_user(owner)} 600", line
        assert box.read("sha256sum", f"{keyring}/{owner}/keyring.json").split()[0] == rings[owner]
        assert box.status("test", "-e", f"{keyring}/{owner}.json")[0] != 0
    line = box.sh(f"stat -c '%U %G %a' {data}/ip-keys/ip-keys.json").strip()
    assert line == "homeport-identity homeport-ipkeys 640", line
    assert box.read("sha256sum", f"{data}/ip-keys/ip-keys.json").split()[0] == ip_keys
    _until(
        "every unit active after the move",
        lambda: all(p["ActiveState"] == "active" for p in _units(box).values()),
        120,
    )
    _signs_in(box, {"username": "owner", "password": PASSWORD})
