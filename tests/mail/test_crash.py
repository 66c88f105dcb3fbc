"""kill -9 of the mail service loses no configuration change: every change it answered is in
the log and the read model; started again, it takes its servers back (the ones the killed
process left running are stopped first: they hold the ports) and serves what was decided."""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest

from deploy.embedded import free_ports
from libs.events.bus import BusClient, BusError
from tests.dns.dnskit import dns_env, pdns_provider, running_dns
from tests.identity.kit import running_identity
from tests.mail.serverskit import client_tls
from tests.support.bus import ActorBus
from tests.support.mail import KIM, LEE, SYSTEM
from tests.support.pdns import PdnsServer, PdnsZone

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]


class MailProcess:
    """`python -m services.mail` as a child process, for a test that kills it."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = {**os.environ, **env}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "services.mail"],
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None


async def _status(bus: BusClient, *, wait: bool = True, within: float = 90) -> dict[str, Any]:
    """The mail service's status once it answers (it may be starting)."""
    deadline = time.monotonic() + within
    while True:
        try:
            reply: dict[str, Any] = await bus.query(
                "mail", "status", {"wait": wait}, ctx=SYSTEM, timeout=70
            )
            return reply
        except BusError:
            assert time.monotonic() < deadline, "the mail service never answered"
            await asyncio.sleep(0.5)


def _children_of(root: Path) -> list[int]:
    """Processes whose command line names the servers' folder (Postfix, Dovecot, rspamd)."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if str(root) in (p / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(p.name))
            except OSError:
                continue
    return found


@pytest.fixture
async def setting(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    pdns: PdnsServer,
    pdns_zone: PdnsZone,
) -> AsyncIterator[tuple[Any, str, dict[str, str]]]:
    async with running_identity(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path / "identity"
    ) as ident:
        admin = await ident.set_up()
        for who in (KIM, LEE):
            await ident.cmd("create_user", dict(who), actor=admin)
        env = dns_env(dsn=dsn, nats_url=nats_url, tmp_path=tmp_path / "dns")
        async with running_dns(monkeypatch, env) as dns_svc:
            await dns_svc.cmd(
                "add_domain", {"domain": pdns_zone.name, "provider": pdns_provider(pdns_zone)}
            )
            root = Path(tempfile.mkdtemp(prefix="hp-mail-"))
            root.chmod(0o755)
            smtp, sub, subs, imaps, sieve, milter = free_ports(6)
            mail_env = {
                "HP_DATABASE_URL": dsn,
                "HP_NATS_URL": nats_url,
                "HP_KEYRING": str(tmp_path / "mail-keyring.json"),
                "HP_DATA_DIR": str(tmp_path),
                "HP_HTTP_PORT": "0",
                "HP_DRAIN_SECONDS": "1",
                "HP_MAIL_DIR": str(root / "mail"),
                "HP_MAIL_SMTP_PORT": str(smtp),
                "HP_MAIL_SUBMISSION_PORT": str(sub),
                "HP_MAIL_SUBMISSIONS_PORT": str(subs),
                "HP_MAIL_IMAPS_PORT": str(imaps),
                "HP_MAIL_MANAGESIEVE_PORT": str(sieve),
                "HP_MAIL_MILTER_PORT": str(milter),
                "HP_MAIL_NAMESERVERS": f"127.0.0.1:{pdns.dns_port}",
                "HP_MAIL_DEBOUNCE": "0.05",
            }
            try:
                yield ident, pdns_zone.name, mail_env
            finally:
                for pid in _children_of(root):  # what a failed test may leave running
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                shutil.rmtree(root, ignore_errors=True)


async def test_kill_9_loses_no_change_and_the_servers_are_taken_back(
    setting: tuple[Any, str, dict[str, str]], nats_url: str, tmp_path: Path
) -> None:
    ident, domain, env = setting
    proc = MailProcess(env, tmp_path / "mail.log")
    nc = await nats.connect(nats_url)
    bus = ActorBus(nc, default_timeout=60)
    try:
        proc.start()
        await _status(bus, wait=False)
        await bus.command("mail", "enable_domain", {"domain": domain}, ctx=SYSTEM)
        users = await ident.ask("users", {})
        kim = next(u["user_id"] for u in users["items"] if u["username"] == "kim")
        await bus.command(
            "mail",
            "set_address",
            {"domain": domain, "local_part": "info", "kind": "alias", "user_ids": [kim]},
            ctx=SYSTEM,
        )
        status = await _status(bus)
        assert status["running"] and status["last_error"] is None, proc_log(tmp_path)
        # killed right after a change was answered, before the servers may have heard of it
        await bus.command(
            "mail",
            "set_address",
            {"domain": domain, "local_part": "hello", "kind": "alias", "user_ids": [kim]},
            ctx=SYSTEM,
        )
        proc.kill9()
        left = _children_of(Path(env["HP_MAIL_DIR"]).parent)
        assert left, "the servers should outlive the killed service (they are re-taken)"
        proc.start()
        status = await _status(bus)
        assert status["running"] and status["last_error"] is None, proc_log(tmp_path)
        box = await bus.query("mail", "mailbox", {"user_id": kim}, ctx=SYSTEM)
        assert box["addresses"] == [f"kim@{domain}", f"hello@{domain}", f"info@{domain}"]
        # the old servers are gone, new ones serve: kim signs in over IMAPS
        assert not set(left) & set(_children_of(Path(env["HP_MAIL_DIR"]).parent))

        def sign_in() -> None:
            port = int(env["HP_MAIL_IMAPS_PORT"])
            with imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=client_tls(), timeout=30) as m:
                m.login("kim", KIM["password"])

        await asyncio.to_thread(sign_in)
    finally:
        proc.stop()
        await nc.close()


def proc_log(tmp_path: Path) -> str:
    try:
        return "\n".join((tmp_path / "mail.log").read_text(errors="replace").splitlines()[-40:])
    except OSError:
        return ""
