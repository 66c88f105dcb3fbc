"""The platform's own mail (invitations, password resets, alerts): built here, and sent through
the local Postfix when mail is on, otherwise straight to the outgoing relay.

Local (`via: "local"`): while the servers run with a mail domain on, the message goes to
Postfix's platform listener, a UNIX socket in its private folder that only root (this service)
and Postfix can reach (render.py `PLATFORM_SERVICE`): STARTTLS, then the platform's sign-in
(`PLATFORM_LOGIN`, a password made at each start and known only to this process; the auth
endpoint takes it from loopback and for SMTP only). So rspamd signs it with the domain's DKIM
key as it signs people's mail, and Postfix delivers it, to mailboxes here or out (through the
relay when one is set). The sender is `<platform sender>@<first mail domain>` (noreply@...).

Relay (`via: "relay"`): with no mail on, smtplib talks to the relay set on the Email page as
Postfix would (TLS at once or STARTTLS, AUTH with the unsealed password). The sender is
HP_MAIL_PLATFORM_FROM when set, else the relay's username when it is an address (providers
take mail from the account's own address), else `<platform sender>@<this host's name>`.

Neither: `unavailable`. Recipients and bodies are never logged: the message id and the route.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import re
import secrets
import smtplib
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

import asyncpg

from libs.contracts.mail import RECIPIENT_PATTERN
from libs.events.sealing import Keyring, SealingError
from services.mail.errors import InvalidRequest, MailServersError
from services.mail.model import MailModel
from services.mail.queries import read_settings

__all__ = [
    "NO_WAY",
    "PLATFORM_LOGIN",
    "Outbound",
    "PlatformLogin",
    "RelayTarget",
    "build_message",
    "check_relay",
    "relay_address",
    "relay_sender",
    "relay_session",
]

log = logging.getLogger(__name__)

# The platform's SASL login at its Postfix listener: no platform username begins with "_"
# (libs/contracts/identity.py USERNAME_PATTERN), so it is nobody's.
PLATFORM_LOGIN = "_homeport"
NO_WAY = "no way to send mail: turn on mail for a domain or set an outgoing relay on the Email page"
TEST_SUBJECT = "Homeport: your outgoing relay works"
_TEST_TEXT = (
    "This message was sent through the outgoing relay you set on the Email page.\n"
    "Homeport keeps the relay now, and sends its own mail through it while no mail domain"
    " is on.\n"
)
_RELAY_DEADLINE = 8.0  # seconds: connecting to a relay and each answer of its
_SEND_DEADLINE = 30.0  # seconds: each answer while a message is sent
_HEADER_BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
# Where a relay may never be: this server itself, link-local and cloud metadata, nowhere.
_NOT_A_RELAY = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "::1/128",
        "0.0.0.0/8",
        "::/128",
        "169.254.0.0/16",
        "fe80::/10",
        "fd00:ec2::254/128",
        "224.0.0.0/4",
        "ff00::/8",
    )
)


@dataclass(frozen=True, slots=True)
class PlatformLogin:
    """The platform's sign-in at its Postfix listener: a password made for this run only."""

    password: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)

    def check(self, password: str, ip: str | None, protocol: str) -> bool:
        """Whether a sign-in as PLATFORM_LOGIN is the platform's own: the password, over SMTP,
        from loopback (Postfix names a UNIX socket's client 127.0.0.1)."""
        given = password.encode("utf-8", "surrogatepass")
        right = hmac.compare_digest(given, self.password.encode())
        return right and protocol == "smtp" and ip is not None and _loopback(ip)


def _loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


# -- the relay -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelayTarget:
    """An outgoing relay as Postfix uses it (the password in clear: never logged)."""

    host: str
    port: int
    tls: str  # "starttls" or "tls" (at once)
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def relay_address(host: str, port: int, networks: Sequence[str] = ()) -> str:
    """The address to try `host` at, once every address it resolves to may be a relay: inside
    `networks` when given (an operator's, or tests': loopback only), else none of this server's
    own, link-local, metadata or multicast ones. InvalidRequest naming `host` otherwise."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except UnicodeError:  # a name the IDNA codec refuses (an empty label...)
        raise InvalidRequest(f"{host} is not a host name", field="host") from None
    except OSError:
        raise InvalidRequest(f"{host} does not resolve: check the host", field="host") from None
    allowed = [ipaddress.ip_network(n, strict=False) for n in networks]
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found]
    for a in addresses:
        ok = any(a in n for n in allowed) if allowed else not any(a in n for n in _NOT_A_RELAY)
        if not ok:
            raise InvalidRequest(f"{host} ({a}) cannot be a mail relay", field="host")
    return str(addresses[0])


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@contextmanager
def relay_session(relay: RelayTarget, networks: Sequence[str] = ()) -> Iterator[smtplib.SMTP]:
    """A connection to the relay as Postfix makes it (TLS at once or STARTTLS, then AUTH when
    given), ready for a message; InvalidRequest naming the setting that failed. The certificate
    is not verified (Postfix sends with `encrypt`, not `secure`: a relay known by address has
    no name to check)."""
    host, port, tls = relay.host, relay.port, relay.tls
    address = relay_address(host, port, networks)
    context = _unverified()
    try:
        if tls == "tls":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                address, port, timeout=_RELAY_DEADLINE, context=context
            )
        else:
            client = smtplib.SMTP(address, port, timeout=_RELAY_DEADLINE)
    except ssl.SSLError as e:
        raise InvalidRequest(
            f"no TLS at once at {host}:{port} ({e.reason}): choose starttls, or another port",
            field="tls",
        ) from None
    except (OSError, smtplib.SMTPException) as e:
        raise InvalidRequest(
            f"could not reach a mail server at {host}:{port} ({e}): check the host and port",
            field="host",
        ) from None
    with client:
        try:
            client.ehlo()
            if tls == "starttls":
                if not client.has_extn("starttls"):
                    raise InvalidRequest(
                        f"{host}:{port} offers no STARTTLS: choose tls, or another port",
                        field="tls",
                    )
                client.starttls(context=context)
                client.ehlo()
        except (OSError, smtplib.SMTPException) as e:
            raise InvalidRequest(f"TLS with {host}:{port} failed: {e}", field="tls") from None
        if relay.username is not None and relay.password is not None:
            try:
                client.login(relay.username, relay.password)
            except smtplib.SMTPAuthenticationError:
                raise InvalidRequest(
                    f"{host} refused the sign-in: check the username and password",
                    field="password",
                ) from None
            except (OSError, smtplib.SMTPException) as e:
                raise InvalidRequest(
                    f"{host} did not take a sign-in: {e}", field="username"
                ) from None
        client.timeout = _SEND_DEADLINE  # a message's DATA may take a relay longer
        if client.sock is not None:
            client.sock.settimeout(_SEND_DEADLINE)
        yield client


def check_relay(
    host: str,
    port: int,
    tls: str,
    username: str | None,
    password: str | None,
    networks: Sequence[str] = (),
) -> None:
    """Connect to the relay as Postfix will, and leave; InvalidRequest naming the setting that
    failed (relay_session)."""
    with relay_session(RelayTarget(host, port, tls, username, password), networks):
        pass


def relay_sender(
    configured: str | None, username: str | None, local_part: str, host_name: Callable[[], str]
) -> str:
    """The sender of the platform's mail through the relay: `configured` (HP_MAIL_PLATFORM_FROM),
    else the relay's username when it is an address, else `<local_part>@<this host's name>`."""
    if configured:
        return configured
    if username is not None and re.fullmatch(RECIPIENT_PATTERN, username):
        return username
    return f"{local_part}@{host_name()}"


# -- the message -----------------------------------------------------------------------------


def _one_line(value: str, name: str) -> str:
    """`value` as a header may hold it: InvalidRequest naming `name` for a line break or any
    other control character (the contract refuses them first; this is the last guard)."""
    if _HEADER_BREAKS.search(value):
        raise InvalidRequest(f"{name} must be one line without control characters", field=name)
    return value


def build_message(
    *,
    sender: str,
    to: Sequence[str],
    subject: str,
    text: str,
    html: str | None = None,
    from_name: str | None = None,
    now: float | None = None,
) -> EmailMessage:
    """The message: plain text, or multipart/alternative with `html`; From, To, Subject, Date,
    Message-ID (at the sender's domain) and `Auto-Submitted: auto-generated` (RFC 3834: no
    auto-replies to it)."""
    for i, address in enumerate(to):
        if not re.fullmatch(RECIPIENT_PATTERN, address):
            raise InvalidRequest(f"to.{i} is not a mail address", field=f"to.{i}")
    msg = EmailMessage()
    msg["From"] = Address(display_name=_one_line(from_name or "", "from_name"), addr_spec=sender)
    msg["To"] = [Address(addr_spec=a) for a in to]
    msg["Subject"] = _one_line(subject, "subject")
    msg["Date"] = formatdate(now, usegmt=True)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2])
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg


# -- sending ---------------------------------------------------------------------------------


class _SocketSMTP(smtplib.SMTP):
    """SMTP over a UNIX socket (Postfix's platform listener)."""

    def __init__(self, path: Path, timeout: float) -> None:
        self._path = path
        super().__init__(local_hostname="localhost", timeout=timeout)
        self._host = "localhost"  # the TLS server name (smtplib takes it from __init__ only)

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        return sock


def _send(client: smtplib.SMTP, msg: EmailMessage, sender: str, to: Sequence[str]) -> list[str]:
    """Send `msg`; the recipients refused (SMTPRecipientsRefused when all were)."""
    refused = client.send_message(msg, from_addr=sender, to_addrs=list(to))
    return [a for a in to if a in refused]


def _answer(code: int, text: bytes | str) -> str:
    """A server's answer, its first line, without the addresses it may repeat."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    line = text.splitlines()[0] if text else ""
    return f"{code} {re.sub(r'<[^>]*>', '<...>', line)}"[:300]


def _refusal(e: smtplib.SMTPResponseException) -> str:
    return _answer(e.smtp_code, e.smtp_error)


@contextmanager
def _translated(who: str, sender: str, to: Sequence[str]) -> Iterator[None]:
    """What went wrong while `who` was sent a message, as the mail service's errors: every
    recipient refused is InvalidRequest naming the first (`to.N`); anything else is
    MailServersError (unavailable: the caller may try again later)."""
    try:
        yield
    except smtplib.SMTPRecipientsRefused as e:
        name, answer = _first_refused(e, to)
        raise InvalidRequest(
            f"{who} refused every recipient, {name} first ({answer}): check the addresses",
            field=name,
        ) from None
    except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as e:
        raise MailServersError(f"{who} refused the message from {sender} ({_refusal(e)})") from None
    except InvalidRequest as e:  # the relay kept before no longer answers as it did then
        raise MailServersError(f"{who} failed: {e.message} (the Email page)") from None
    except (OSError, smtplib.SMTPException) as e:
        raise MailServersError(
            f"{who} did not take the message ({e}): look at the mail status on the Email page"
        ) from None


def _first_refused(e: smtplib.SMTPRecipientsRefused, to: Sequence[str]) -> tuple[str, str]:
    """(field, answer) of the first recipient in `e`."""
    for i, address in enumerate(to):
        if address in e.recipients:
            return f"to.{i}", _answer(*e.recipients[address])
    return "to.0", "refused"


@dataclass
class Outbound:
    """Sends the platform's mail by the route there is (see the module's docstring)."""

    pool: asyncpg.Pool
    keyring: Keyring
    login: PlatformLogin
    applied: Callable[[], MailModel | None]  # what the running servers were configured with
    listener: Path | None  # the servers' platform listener; None: no servers run here
    local_part: str = "noreply"  # HP_MAIL_PLATFORM_SENDER
    relay_from: str | None = None  # HP_MAIL_PLATFORM_FROM
    relay_networks: tuple[str, ...] = ()
    host_name: Callable[[], str] = socket.getfqdn
    now: Callable[[], float] = time.time

    def local_domain(self) -> str | None:
        """The first mail domain while the servers run with mail on, else None."""
        model = self.applied()
        if self.listener is None or model is None or not model.domains:
            return None
        return model.domains[0].name

    async def relay(self) -> RelayTarget | None:
        """The relay set on the Email page, its password unsealed; None when there is none."""
        r = (await read_settings(self.pool)).relay
        if r is None:
            return None
        password = r.get("password")
        if password is not None:
            try:
                password = await asyncio.to_thread(self.keyring.unseal_str, password)
            except SealingError as e:
                raise MailServersError(
                    f"the relay's password cannot be read ({e}): set the relay again"
                ) from None
        return RelayTarget(r["host"], int(r["port"]), r["tls"], r.get("username"), password)

    def relay_sender(self, relay: RelayTarget) -> str:
        return relay_sender(self.relay_from, relay.username, self.local_part, self.host_name)

    async def send(
        self,
        *,
        to: Sequence[str],
        subject: str,
        text: str,
        html: str | None = None,
        from_name: str | None = None,
    ) -> dict[str, Any]:
        """Send by the local servers, else the relay; `{via, message_id, refused}` (the
        recipients refused while others took it). InvalidRequest naming `to.N` when every
        recipient was refused; MailServersError (unavailable) when nothing could send it."""
        domain = self.local_domain()
        relay = None if domain is not None else await self.relay()
        if domain is not None:
            via, sender = "local", f"{self.local_part}@{domain}"
        elif relay is not None:
            via, sender = "relay", await asyncio.to_thread(self.relay_sender, relay)
        else:
            raise MailServersError(NO_WAY)
        msg = build_message(
            sender=sender,
            to=to,
            subject=subject,
            text=text,
            html=html,
            from_name=from_name,
            now=self.now(),
        )
        message_id = str(msg["Message-ID"])
        if relay is None:
            refused = await asyncio.to_thread(self._local, msg, sender, to)
        else:
            refused = await asyncio.to_thread(self._relay, relay, msg, sender, to)
        log.info(
            "platform mail %s sent via %s (%d recipients, %d refused)",
            message_id,
            via,
            len(to),
            len(refused),
        )
        return {"via": via, "message_id": message_id, "refused": refused}

    @contextmanager
    def _platform_session(self) -> Iterator[smtplib.SMTP]:
        """Signed in on the local servers' platform listener (STARTTLS, then `_homeport`)."""
        if self.listener is None:
            raise MailServersError("no mail servers run here")
        with _SocketSMTP(self.listener, _SEND_DEADLINE) as client:
            client.connect("localhost")
            client.ehlo()
            client.starttls(context=_unverified())
            client.ehlo()
            client.login(PLATFORM_LOGIN, self.login.password)
            yield client

    def _local(self, msg: EmailMessage, sender: str, to: Sequence[str]) -> list[str]:
        with _translated("the local mail server", sender, to), self._platform_session() as client:
            return _send(client, msg, sender, to)

    def submit_raw(self, sender: str, to: Sequence[str], raw: bytes) -> list[str]:
        """A message as it is (a Sieve reply or redirect, services/mail/sieve_send.py) through
        the local servers' platform listener, from `sender` ("" for the null sender); the
        recipients refused. Errors as `send`'s (MailServersError: try again later)."""
        with (
            _translated("the local mail server", sender or "<>", to),
            self._platform_session() as client,
        ):
            refused = client.sendmail(sender, list(to), raw)
            return [a for a in to if a in refused]

    def _relay(
        self, relay: RelayTarget, msg: EmailMessage, sender: str, to: Sequence[str]
    ) -> list[str]:
        with (
            _translated(f"the relay {relay.host}", sender, to),
            relay_session(relay, self.relay_networks) as client,
        ):
            return _send(client, msg, sender, to)

    async def test_relay(self, relay: RelayTarget, to: str) -> str:
        """Check the relay and send it the test message for `to`; its message id.
        InvalidRequest naming the setting, or `test_to` when the message was refused."""
        sender = await asyncio.to_thread(self.relay_sender, relay)
        msg = build_message(
            sender=sender,
            to=[to],
            subject=TEST_SUBJECT,
            text=_TEST_TEXT,
            from_name="Homeport",
            now=self.now(),
        )
        await asyncio.to_thread(self._test, relay, msg, sender, to)
        log.info("relay test message %s sent via relay", msg["Message-ID"])
        return str(msg["Message-ID"])

    def _test(self, relay: RelayTarget, msg: EmailMessage, sender: str, to: str) -> None:
        with relay_session(relay, self.relay_networks) as client:
            try:
                client.send_message(msg, from_addr=sender, to_addrs=[to])
            except smtplib.SMTPRecipientsRefused as e:
                _, answer = _first_refused(e, [to])
                raise InvalidRequest(
                    f"{relay.host} refused the test message to test_to ({answer}): check the"
                    " address, or what the relay lets this account send",
                    field="test_to",
                ) from None
            except smtplib.SMTPSenderRefused as e:
                raise InvalidRequest(
                    f"{relay.host} refused {sender} as the sender ({_refusal(e)}): use an"
                    " address as the username, or set HP_MAIL_PLATFORM_FROM",
                    field="username",
                ) from None
            except smtplib.SMTPDataError as e:
                raise InvalidRequest(
                    f"{relay.host} refused the test message ({_refusal(e)})", field="test_to"
                ) from None
            except (OSError, smtplib.SMTPException) as e:
                raise InvalidRequest(
                    f"{relay.host} did not take the test message ({e})", field="test_to"
                ) from None
