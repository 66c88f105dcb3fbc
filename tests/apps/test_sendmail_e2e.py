"""The sendmail and mailclient addons for real: an app installed with sendmail gets an account
of the mail service and sends, from inside its container over the services network, to a
person's mailbox; the account works only from the app's network and only with the app's own
sender. An app installed with mailclient (webmail) signs people in to their own mailboxes over
IMAP there, naming the person's address, which Dovecot takes from that app's network only."""

from __future__ import annotations

import asyncio
import base64
import imaplib
import json
import shutil
import smtplib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.embedded import free_port
from tests.apps.addonkit import AddonServer
from tests.apps.appskit import STATIC, Apps, apps_env, running_apps, static_catalog
from tests.mail.serverskit import client_tls
from tests.support.mail import World, mail_world
from tests.support.pdns import PdnsServer, PdnsZone

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.xdist_group("addon_postgresql"),
]

KIM_PASSWORD = "kim's long password 1"
MAIL_CLIENT = "1.1.1"  # the static app with the sendmail and mailclient addons
EVERYONE = {"all_users": True, "user_ids": [], "groups": []}


@dataclass
class Both:
    w: World
    apps: Apps
    port: int
    host: str
    imap_port: int


def _with_mail_client(catalog: Path) -> Path:
    """The catalog with MAIL_CLIENT: the static app's 1.1.0 (sendmail) with mailclient too."""
    src = catalog / STATIC / "1.1.0"
    dest = catalog / STATIC / MAIL_CLIENT
    shutil.copytree(src, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["version"] = MAIL_CLIENT
    manifest["addons"] = {**manifest["addons"], "mailclient": {}}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return catalog


@pytest.fixture
async def both(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    docker_host: str,
    uniq: str,
    pdns: PdnsServer,
    pdns_zone: PdnsZone,
    addon_server: AddonServer,
) -> AsyncIterator[Both]:
    port, imap_port, sieve_port = free_port(), free_port(), free_port()
    host = addon_server.host  # the services network's gateway, where apps send
    async with mail_world(
        monkeypatch,
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path / "world",
        zone=pdns_zone,
        servers=True,
        nameservers=(f"127.0.0.1:{pdns.dns_port}",),
        env={
            "HP_MAIL_APPS_LISTEN": host,
            "HP_MAIL_APPS_PORT": str(port),
            "HP_MAIL_APPS_IMAP_PORT": str(imap_port),
            "HP_MAIL_APPS_SIEVE_PORT": str(sieve_port),
        },
    ) as w:
        await w.mail.cmd("enable_domain", {"domain": w.domain})
        status = await w.mail.ask("status", {"wait": True})
        assert status["running"] and status["last_error"] is None, status
        services = addon_server.services_net
        env = apps_env(
            dsn=dsn,
            nats_url=nats_url,
            tmp_path=tmp_path / "apps",
            docker_host=docker_host,
            prefix=f"m{uniq[:8]}",
            catalog=_with_mail_client(static_catalog(tmp_path / "catalog")),
            extra={"HP_SERVICES_NETWORK": services.name, "HP_SERVICES_SUBNET": services.subnet},
        )
        async with running_apps(monkeypatch, env, mail=False) as apps:
            yield Both(w, apps, port, host, imap_port)


# A client for busybox `nc -e` in the app's container: the greeting, then each command (its
# argument) sent once the answer to the one before is complete (SMTP: the line `NNN text`;
# IMAP: the line of the command's tag), every line the server says on stderr, and what it says
# after the last command until it hangs up. Never ahead of the server, and never waiting on
# a clock: a slow answer (a password checked) is waited for, a quick one not.
_CLIENT = r"""
answer() {
  while IFS= read -r line; do
    echo "$line" >&2
    case $line in $1) return 0 ;; esac
  done
  return 1
}
smtp='[0-9][0-9][0-9][ ]*'
mode=$1; shift
if [ "$mode" = smtp ]; then answer "$smtp" || exit 1; else answer '[*][ ]*' || exit 1; fi
for command in "$@"; do
  printf '%s\r\n' "$command"
  if [ "$mode" = smtp ]; then end=$smtp; else end="${command%% *}[ ]*"; fi
  answer "$end" || exit 1
done
cat >&2
"""


def _conversation(host: str, port: str, mode: str, lines: list[str]) -> list[str]:
    """The argv, for the app's container, of a conversation with `host:port` (`_CLIENT`)."""
    client = ["/bin/sh", "-c", _CLIENT, "client", mode, *lines]
    return ["timeout", "60", "nc", host, port, "-e", *client]


def _dialogue(env: dict[str, str], sender: str, to: str, subject: str) -> list[str]:
    """An SMTP conversation of the app (its account, `sender`, to `to`), each command sent
    once the server answered the one before."""
    plain = base64.b64encode(
        f"\0{env['HOMEPORT_MAIL_SMTP_USERNAME']}\0{env['HOMEPORT_MAIL_SMTP_PASSWORD']}".encode()
    ).decode()
    lines = [
        "EHLO app.test",
        f"AUTH PLAIN {plain}",
        f"MAIL FROM:<{sender}>",
        f"RCPT TO:<{to}>",
        "DATA",
        f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nsent by an app\r\n.",
        "QUIT",
    ]
    server, port = env["HOMEPORT_MAIL_SMTP_SERVER"], env["HOMEPORT_MAIL_SMTP_PORT"]
    return _conversation(server, port, "smtp", lines)


def _inbox_subjects(w: World) -> list[str]:
    assert w.mail.ports is not None
    with imaplib.IMAP4_SSL(
        "127.0.0.1", w.mail.ports.imaps, ssl_context=client_tls(), timeout=30
    ) as m:
        m.login("kim", KIM_PASSWORD)
        m.select("INBOX", readonly=True)
        _, found = m.search(None, "ALL")
        out = []
        for num in found[0].split():
            _, data = m.fetch(num, "(BODY[HEADER.FIELDS (SUBJECT)])")
            part = data[0]
            assert isinstance(part, tuple)
            out.append(bytes(part[1]).decode().split(":", 1)[1].strip())
        return out


async def test_an_app_sends_to_a_persons_mailbox_as_itself_only(both: Both) -> None:
    w, apps = both.w, both.apps
    reply = await apps.cmd(
        "install",
        {"manifest_id": STATIC, "version": "1.1.0", "location": "blog", "access": EVERYONE},
    )
    app_id = reply["app_id"]
    end = await apps.wait_task(reply["task_id"])
    assert end["type"] == "TaskSucceeded", end
    container = apps.container(app_id)
    env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
    assert env["HOMEPORT_MAIL_SMTP_SERVER"] == both.host
    assert env["HOMEPORT_MAIL_SMTP_PORT"] == str(both.port)
    sender = env["HOMEPORT_MAIL_FROM"]
    to = f"kim@{w.domain}"

    def send(from_: str, subject: str) -> str:
        out = container.exec_run(_dialogue(env, from_, to, subject))
        return bytes(out.output).decode(errors="replace")

    status = await w.mail.ask("status", {"wait": True})
    assert status["last_error"] is None, status
    said = await asyncio.to_thread(send, sender, "from the blog")
    assert "235" in said and "250 2.0.0 Ok: queued" in said, said
    deadline = time.monotonic() + 30
    while "from the blog" not in await asyncio.to_thread(_inbox_subjects, w):
        assert time.monotonic() < deadline, "the app's message never reached kim"
        await asyncio.sleep(0.3)
    # another sender is refused, whoever it claims to be
    said = await asyncio.to_thread(send, f"kim@{w.domain}", "as kim")
    assert "553" in said and "not owned by user" in said, said

    # the account is no use outside the app's network (here: the host itself): refused (535),
    # not a temporary failure. In a thread: the mail service that answers Dovecot's check of
    # the password runs on this test's event loop (blocked, Dovecot gave up after 10 s: 454).
    def from_the_host() -> None:
        with smtplib.SMTP(both.host, both.port, timeout=30) as s:
            s.ehlo()
            s.login(env["HOMEPORT_MAIL_SMTP_USERNAME"], env["HOMEPORT_MAIL_SMTP_PASSWORD"])

    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        await asyncio.to_thread(from_the_host)
    assert refused.value.smtp_code == 535, refused.value
    # uninstalled: the account ends
    done = await apps.cmd("uninstall", {"app_id": app_id})
    assert (await apps.wait_task(done["task_id"]))["type"] == "TaskSucceeded"
    rows = await w.mail.store.pool.fetch("SELECT removed FROM mail.apps WHERE app_id = $1", app_id)
    assert [r["removed"] for r in rows] == [True]


async def test_a_mail_client_app_signs_people_in_naming_their_address(both: Both) -> None:
    w, apps = both.w, both.apps
    reply = await apps.cmd(
        "install",
        {"manifest_id": STATIC, "version": MAIL_CLIENT, "location": "webmail", "access": EVERYONE},
    )
    app_id = reply["app_id"]
    end = await apps.wait_task(reply["task_id"])
    assert end["type"] == "TaskSucceeded", end
    container = apps.container(app_id)
    env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
    assert env["HOMEPORT_MAIL_IMAP_HOST"] == both.host
    assert env["HOMEPORT_MAIL_IMAP_PORT"] == str(both.imap_port)
    assert env["HOMEPORT_MAIL_SUBMISSION_PORT"] == str(both.port)
    assert env["HOMEPORT_MAIL_DOMAIN"] == w.domain
    status = await w.mail.ask("status", {"wait": True})
    assert status["last_error"] is None, status

    def imap(lines: list[str]) -> str:
        cmd = _conversation(both.host, env["HOMEPORT_MAIL_IMAP_PORT"], "imap", lines)
        out = container.exec_run(cmd)
        return bytes(out.output).decode(errors="replace")

    # from the app's network: the person's own account, their address named first
    said = await asyncio.to_thread(
        imap,
        [
            'a ID ("x-originating-ip" "203.0.113.5")',
            'b LOGIN "kim" "not kim\'s password"',
            f'c LOGIN "kim" "{KIM_PASSWORD}"',
            "d LOGOUT",
        ],
    )
    assert "b NO" in said and "c OK" in said, said
    rows = await w.mail.store.pool.fetch(
        "SELECT data FROM events.events WHERE type = 'LoginFailed' ORDER BY position"
    )
    failures = [json.loads(r["data"]) for r in rows]
    assert [w.ident.address(f["ip"]) for f in failures] == ["203.0.113.5"], failures
    # from anywhere else (the host on the services network): no sign-in without TLS
    with imaplib.IMAP4(both.host, both.imap_port, timeout=30) as m:
        with pytest.raises(imaplib.IMAP4.error):
            m.login("kim", KIM_PASSWORD)
    # uninstalled: the network is no longer trusted, nor served
    done = await apps.cmd("uninstall", {"app_id": app_id})
    assert (await apps.wait_task(done["task_id"]))["type"] == "TaskSucceeded"
    rows = await w.mail.store.pool.fetch(
        "SELECT removed FROM mail.clients WHERE app_id = $1", app_id
    )
    assert [r["removed"] for r in rows] == [True]
    status = await w.mail.ask("status", {"wait": True})
    with pytest.raises(OSError):
        imaplib.IMAP4(both.host, both.imap_port, timeout=5)


async def test_an_app_whose_mail_account_is_gone_gets_it_back_with_its_password(
    both: Both,
) -> None:
    """An app installed before the mail service kept accounts (or whose account was lost)
    sends again once its settings are saved: the credentials it has are registered again."""
    w, apps = both.w, both.apps
    reply = await apps.cmd(
        "install",
        {"manifest_id": STATIC, "version": "1.1.0", "location": "shop", "access": EVERYONE},
    )
    app_id = reply["app_id"]
    assert (await apps.wait_task(reply["task_id"]))["type"] == "TaskSucceeded"
    await w.mail.cmd("remove_app", {"app_id": app_id})  # as if never registered
    container = apps.container(app_id)
    env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
    to = f"kim@{w.domain}"

    def send(subject: str) -> str:
        out = container.exec_run(_dialogue(env, env["HOMEPORT_MAIL_FROM"], to, subject))
        return bytes(out.output).decode(errors="replace")

    await w.mail.ask("status", {"wait": True})
    said = await asyncio.to_thread(send, "before the repair")
    assert "535" in said, said  # no account: the app cannot sign in
    before = len(await w.mail.events(f"mailapp-{app_id}"))
    done = await apps.cmd("configure", {"app_id": app_id, "memory_bytes": 64 << 20})
    assert (await apps.wait_task(done["task_id"]))["type"] == "TaskSucceeded"
    container = apps.container(app_id)
    again = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
    assert again["HOMEPORT_MAIL_SMTP_PASSWORD"] == env["HOMEPORT_MAIL_SMTP_PASSWORD"]
    await w.mail.ask("status", {"wait": True})
    said = await asyncio.to_thread(send, "after the repair")
    assert "235" in said and "250 2.0.0 Ok: queued" in said, said
    deadline = time.monotonic() + 30
    while "after the repair" not in await asyncio.to_thread(_inbox_subjects, w):
        assert time.monotonic() < deadline, "the repaired app's message never reached kim"
        await asyncio.sleep(0.3)
    # saving again changes nothing in mail: the same account records no new event
    events = await w.mail.events(f"mailapp-{app_id}")
    assert len(events) == before + 1
    done = await apps.cmd("configure", {"app_id": app_id, "memory_bytes": 72 << 20})
    assert (await apps.wait_task(done["task_id"]))["type"] == "TaskSucceeded"
    assert await w.mail.events(f"mailapp-{app_id}") == events
