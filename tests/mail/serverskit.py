"""The mail servers (services/mail/servers.py) for tests: `MailStack` runs Postfix, Dovecot and
rspamd on free loopback ports with a stand-in for the mail service's auth endpoint, and talks to
them as mail clients do (smtplib, imaplib, `ManageSieve`). tests/mail/conftest.py makes the
fixtures.

The servers and the auth stand-in run on an event loop of their own in a thread (they outlive
each test's loop, and the clients here block).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import imaplib
import re
import secrets
import shutil
import smtplib
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from deploy.embedded import free_ports
from services.mail.model import DkimKey, Mailbox, MailDomain, MailModel, ServersSettings
from services.mail.render import RenderedFile, render
from services.mail.servers import MailServers

__all__ = [
    "ALICE",
    "BOB",
    "CAROL",
    "CAROL_QUOTA",
    "DOMAIN",
    "LISTED_IP",
    "OTHER",
    "SELECTOR",
    "Account",
    "MailStack",
    "ManageSieve",
    "SieveResponse",
    "client_tls",
    "message",
    "servers_missing",
]

T = TypeVar("T")

DOMAIN = "example.test"
OTHER = "other.test"  # its unknown addresses go to bob (catch-all)
LISTED_IP = "127.0.0.2"  # in the DNSBL zone; every other client is not
SELECTOR = "hp1"


@dataclass(frozen=True)
class Account:
    login: str
    password: str
    address: str


ALICE = Account("alice", 'alice "s\\ecret" pass', f"alice@{DOMAIN}")
BOB = Account("bob", "bob's password", f"bob@{DOMAIN}")
CAROL = Account("carol", "carol's password", f"carol@{DOMAIN}")  # a small quota
CAROL_QUOTA = 12_000


@dataclass
class AuthStandIn:
    """What the mail service's auth endpoint answers Dovecot: 200 `user=<address>` for a right
    password, 403 otherwise; every call is recorded (without the password)."""

    token: str
    accounts: dict[str, Account]
    calls: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        if request.headers.get("x-homeport-auth") != self.token:
            return web.Response(status=401)
        body = await request.json()
        self.calls.append({k: str(body.get(k)) for k in ("user", "ip", "service")})
        account = self.accounts.get(str(body.get("user")))
        if account is None or body.get("password") != account.password:
            return web.Response(status=403)
        return web.Response(text=f"user={account.address}")


class Renderer:
    """`render`, with a test's edit of the files on top (a hand-broken configuration)."""

    def __init__(self) -> None:
        self.edit: Callable[[dict[str, RenderedFile]], None] | None = None

    def __call__(
        self, model: MailModel, settings: ServersSettings, gen: Path
    ) -> dict[str, RenderedFile]:
        files = render(model, settings, gen)
        if self.edit is not None:
            self.edit(files)
        return files


def dkim_key() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def base_model(dkim_pem: str, dnsbl: str) -> MailModel:
    """Two domains, three mailboxes, an alias of two people, a catch-all, a DNSBL zone."""
    boxes = (
        Mailbox(ALICE.address, ALICE.login, "u-alice"),
        Mailbox(BOB.address, BOB.login, "u-bob"),
        Mailbox(CAROL.address, CAROL.login, "u-carol", quota_bytes=CAROL_QUOTA),
    )
    return MailModel(
        hostname=f"mail.{DOMAIN}",
        domains=(
            MailDomain(DOMAIN, dkim=DkimKey(SELECTOR, dkim_pem)),
            MailDomain(OTHER, catch_all=BOB.address),
        ),
        mailboxes=boxes,
        aliases={
            f"sales@{DOMAIN}": (ALICE.address, BOB.address),
            f"alice@{OTHER}": (ALICE.address,),
        },
        senders={
            ALICE.address: ("alice",),
            BOB.address: ("bob",),
            CAROL.address: ("carol",),
            f"sales@{DOMAIN}": ("alice", "bob"),
            f"alice@{OTHER}": ("alice",),
        },
        dnsbl=(dnsbl,),
    )


def client_tls() -> ssl.SSLContext:
    """TLS to the servers' self-signed certificate: encrypted, not verified."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def message(
    sender: str, to: str, subject: str | None = None, body: str = "hello\n"
) -> EmailMessage:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject or f"test {uuid.uuid4().hex}"
    m["Date"] = formatdate()
    m["Message-ID"] = make_msgid(domain="client.test")
    m.set_content(body)
    return m


class MailStack:
    """The three servers and the auth stand-in on their own loop, and a mail client's view."""

    def __init__(
        self,
        root: Path,
        nameserver: str,
        dnsbl: str,
        *,
        apps_listen: tuple[str, ...] = (),
        client_networks: tuple[str, ...] = (),
    ) -> None:
        ports = free_ports(10)
        self.host = "127.0.0.1"
        self.auth = AuthStandIn(
            token=secrets.token_urlsafe(32),
            accounts={a.login: a for a in (ALICE, BOB, CAROL)},
        )
        self.auth_port = ports[6]
        self.settings = ServersSettings(
            root=root,
            listen=(self.host,),
            smtp_port=ports[0],
            submission_port=ports[1],
            submissions_port=ports[2],
            imaps_port=ports[3],
            managesieve_port=ports[4],
            milter_port=ports[5],
            auth_url=f"http://127.0.0.1:{self.auth_port}/auth",
            auth_token=self.auth.token,
            nameservers=(nameserver,),
            auth_failure_delay=0,  # a wrong password answered at once, not in 2 s
            apps_port=ports[7],
            apps_imap_port=ports[8],
            apps_sieve_port=ports[9],
        )
        self.dkim_pem = dkim_key()
        self.model = replace(
            base_model(self.dkim_pem, dnsbl),
            apps_listen=apps_listen,
            client_networks=client_networks,
        )
        self.renderer = Renderer()
        self.servers = MailServers(self.settings, renderer=self.renderer)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mail-stack")
        self._exit = contextlib.AsyncExitStack()

    # -- running it --

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 180) -> T:
        """Run `coro` on the stack's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        from tests.support.mail import seed_hyperscan

        seed_hyperscan(self.settings.root)
        self._thread.start()
        self.run(self._start())

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/auth", self.auth.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._exit.push_async_callback(runner.cleanup)
        await web.TCPSite(runner, "127.0.0.1", self.auth_port).start()
        await self._exit.enter_async_context(self.servers)
        await self.servers.apply(self.model)

    def stop(self) -> None:
        from tests.support.mail import keep_hyperscan

        try:
            self.run(self._exit.aclose(), timeout=120)
            keep_hyperscan(self.settings.root)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
            self._loop.close()

    def apply(self, model: MailModel) -> Path:
        """Apply `model` to the servers; the live generation after."""
        self.run(self.servers.apply(model))
        live = self.servers.live
        assert live is not None
        return live

    def ready(self) -> bool:
        return self.run(self.servers.ready())

    # -- a mail client --

    def smtp(self, port: int, source: str | None = None) -> smtplib.SMTP:
        return smtplib.SMTP(
            self.host,
            port,
            local_hostname="client.test",
            timeout=30,
            source_address=(source, 0) if source else None,
        )

    def submit(
        self, account: Account, msg: EmailMessage, *, password: str | None = None
    ) -> dict[str, tuple[int, bytes]]:
        """Send as a signed-in person on the submission port (STARTTLS, AUTH)."""
        with self.smtp(self.settings.submission_port) as s:
            s.starttls(context=client_tls())
            s.login(account.login, password or account.password)
            return s.send_message(msg)

    def inbound(
        self, msg: EmailMessage, *, source: str = "127.0.0.1", sender: str | None = None
    ) -> dict[str, tuple[int, bytes]]:
        """Send as another mail server does: port 25, no AUTH (STARTTLS when offered); the
        envelope sender is `sender`, or the From: address."""
        with self.smtp(self.settings.smtp_port, source) as s:
            s.ehlo()
            if s.has_extn("starttls"):
                s.starttls(context=client_tls())
            return s.send_message(msg, from_addr=sender)

    def imap(self, account: Account) -> imaplib.IMAP4_SSL:
        box = imaplib.IMAP4_SSL(
            self.host, self.settings.imaps_port, ssl_context=client_tls(), timeout=30
        )
        box.login(account.login, account.password)
        return box

    def managesieve(self, source: str | None = None) -> ManageSieve:
        """A ManageSieve connection, greeted, before STARTTLS."""
        return ManageSieve(self.host, self.settings.managesieve_port, source)

    def fetch(self, account: Account, subject: str, deadline: float = 30) -> list[bytes]:
        """The messages with `subject` in the account's INBOX, waiting until there is one."""
        end = time.monotonic() + deadline
        box = self.imap(account)
        try:
            while True:
                box.select("INBOX")
                _, found = box.search(None, "SUBJECT", f'"{subject}"')
                ids = found[0].split()
                if ids:
                    out = []
                    for i in ids:
                        _, data = box.fetch(i, "(RFC822)")
                        part = data[0]
                        assert isinstance(part, tuple)
                        out.append(part[1])
                    return out
                if time.monotonic() > end:
                    raise AssertionError(
                        f"no message {subject!r} for {account.address} within {deadline:.0f} s;"
                        f" postfix says:\n{self.servers.log_tail('postfix', 30)}"
                    )
                time.sleep(0.2)
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                box.logout()

    def absent(self, account: Account, subject: str, wait: float = 3.0) -> bool:
        """Whether no message with `subject` reached the account's INBOX within `wait` s."""
        try:
            self.fetch(account, subject, deadline=wait)
        except AssertionError:
            return True
        return False


class _Atom(str):
    """A bare word of a ManageSieve line (OK, NO, BYE, ACTIVE), not a string."""


@dataclass(frozen=True)
class SieveResponse:
    """A ManageSieve answer: its data lines, then OK, NO or BYE with a code and a text."""

    status: str
    code: str
    text: str
    lines: list[list[str]]


class ManageSieve:
    """A ManageSieve client (RFC 5804), one command at a time; every answer parsed."""

    _TOKEN = re.compile(rb'"((?:[^"\\\r\n]|\\.)*)"|\{(\d+)\+?\}\r\n$|([()])|([^\s"(){}]+)')

    def __init__(self, host: str, port: int, source: str | None = None) -> None:
        self._sock = socket.create_connection(
            (host, port), 30, source_address=(source, 0) if source else None
        )
        self._file = self._sock.makefile("rb")
        self.capabilities = self._capabilities(self.read())

    def __enter__(self) -> ManageSieve:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    # -- the protocol --

    def command(self, name: str, *args: str | bytes) -> SieveResponse:
        """Send `name` with `args` (str quoted, bytes as a literal) and read the answer."""
        out = name.encode()
        for a in args:
            if isinstance(a, bytes):
                out += b" {%d+}\r\n" % len(a) + a
            else:
                out += b' "' + a.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'
        self._sock.sendall(out + b"\r\n")
        return self.read()

    def read(self) -> SieveResponse:
        """Lines up to the one that starts with OK, NO or BYE."""
        lines: list[list[str]] = []
        while True:
            tokens = self._tokens()
            if tokens and isinstance(tokens[0], _Atom) and tokens[0] in ("OK", "NO", "BYE"):
                code, rest = "", tokens[1:]
                if rest[:1] == ["("] and ")" in rest:
                    end = rest.index(")")
                    code, rest = " ".join(rest[1:end]), rest[end + 1 :]
                return SieveResponse(tokens[0], code, " ".join(rest), lines)
            lines.append(tokens)

    def _tokens(self) -> list[str]:
        tokens: list[str] = []
        line = self._line()
        pos = 0
        while pos < len(line):
            if line[pos : pos + 1] in (b" ", b"\r", b"\n"):
                pos += 1
                continue
            m = self._TOKEN.match(line, pos)
            if m is None:
                raise AssertionError(f"not ManageSieve: {line!r}")
            quoted, literal, paren, atom = m.groups()
            if quoted is not None:
                tokens.append(re.sub(rb"\\(.)", rb"\1", quoted).decode())
            elif literal is not None:
                data = self._file.read(int(literal))
                assert len(data) == int(literal), "connection closed in a literal"
                tokens.append(data.decode())
                line, pos = self._line(), 0  # the rest of the line after the literal
                continue
            else:
                tokens.append(paren.decode() if paren else _Atom(atom.decode()))
            pos = m.end()
        return tokens

    def _line(self) -> bytes:
        line = self._file.readline()
        if not line.endswith(b"\r\n"):
            raise AssertionError(f"connection closed or line cut short: {line!r}")
        return line

    @staticmethod
    def _capabilities(answer: SieveResponse) -> dict[str, str]:
        assert answer.status == "OK", answer
        return {t[0].upper(): " ".join(t[1:]) for t in answer.lines}

    # -- commands --

    def starttls(self, ctx: ssl.SSLContext) -> None:
        """STARTTLS, then the capabilities the server sends again over TLS."""
        answer = self.command("STARTTLS")
        assert answer.status == "OK", answer
        self._file.close()
        self._sock = ctx.wrap_socket(self._sock)
        self._file = self._sock.makefile("rb")
        self.capabilities = self._capabilities(self.read())

    def authenticate(self, login: str, password: str) -> SieveResponse:
        """SASL PLAIN with the initial response as a string."""
        plain = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
        return self.command("AUTHENTICATE", "PLAIN", plain)

    def putscript(self, name: str, script: str) -> SieveResponse:
        return self.command("PUTSCRIPT", name, script.encode())

    def scripts(self) -> dict[str, bool]:
        """LISTSCRIPTS: each script's name, and whether it is the active one."""
        answer = self.command("LISTSCRIPTS")
        assert answer.status == "OK", answer
        return {t[0]: t[1:] == ["ACTIVE"] for t in answer.lines}

    def getscript(self, name: str) -> str:
        answer = self.command("GETSCRIPT", name)
        assert answer.status == "OK", answer
        [[script]] = answer.lines
        return script

    def logout(self) -> SieveResponse:
        try:
            return self.command("LOGOUT")
        finally:
            self.close()


def servers_missing() -> str | None:
    """Why the servers cannot run here, or None."""
    for prog in ("postfix", "dovecot", "doveconf", "rspamd", "rspamadm"):
        if shutil.which(prog, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            return f"{prog} not found (deploy/install-system-deps.sh)"
    return None
