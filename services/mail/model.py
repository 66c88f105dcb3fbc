"""What the mail servers are told: one frozen value, decided from the read models, rendered whole.

`MailModel` is everything Postfix, Dovecot and rspamd must know about domains and people; the
commands and projections decide it, `render.py` turns it into configuration files, `servers.py`
checks, swaps and reloads them. Where the servers listen, which users they run as and where they
keep their state is `ServersSettings`, fixed for the life of the process (from MailConfig).

Addresses are lower-case `local@domain`. Logins are what a person types to sign in (the platform
username); Dovecot's auth (through the mail service) turns a login into the mailbox's address,
which is the user name every server uses from then on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "MESSAGE_LIMIT",
    "DkimKey",
    "MailDomain",
    "MailModel",
    "Mailbox",
    "Relay",
    "ServersSettings",
]

# The largest message Postfix takes (bytes): also how close to its quota a mailbox must be for
# its quota to be asked at RCPT (no smaller message can take a mailbox further from that over).
MESSAGE_LIMIT = 25 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class DkimKey:
    """A domain's DKIM signing key: `selector._domainkey.<domain>` publishes its public half."""

    selector: str
    private_pem: str  # PKCS#8 PEM, RSA 2048; written 0600 for rspamd only, never logged


@dataclass(frozen=True, slots=True)
class MailDomain:
    """A domain mail is on for."""

    name: str
    dkim: DkimKey | None = None
    catch_all: str | None = None  # address that receives mail to unknown local parts


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One person's mailbox: where their mail is kept, and who may sign in to it."""

    address: str  # username@primary-domain: the name every server uses for it
    login: str  # the platform username (SASL/IMAP login, as typed, lower-cased)
    folder: str  # the folder name under the mail store (the user id: renames move nothing)
    quota_bytes: int | None = None  # None: no limit


@dataclass(frozen=True, slots=True)
class Relay:
    """An outbound smart host; all mail to other domains leaves through it."""

    host: str
    port: int
    tls: str  # "starttls" or "tls" (implicit)
    username: str | None = None
    password: str | None = None  # never logged; written 0600 for Postfix only


@dataclass(frozen=True, slots=True)
class MailModel:
    """Everything the servers are configured from; equal models render equal files."""

    hostname: str  # mail.<first domain>: Postfix's myhostname, the TLS certificate's name
    domains: tuple[MailDomain, ...] = ()
    mailboxes: tuple[Mailbox, ...] = ()
    # address -> the addresses it delivers to (extra addresses, aliases, lists, other domains'
    # username@ addresses); targets are mailbox addresses or outside addresses
    aliases: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # address -> the logins that may use it as sender (their own, their aliases, lists they
    # are in); an address of a local domain missing here may be used by nobody
    senders: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    dnsbl: tuple[str, ...] = ()  # DNS block list zones: a listed client is refused
    relay: Relay | None = None
    tls_cert: Path | None = None  # PEM chain for `hostname`; None: a self-signed fallback
    tls_key: Path | None = None
    # where apps send (their `sendmail` addon): the services network's address, while it is on
    # this host; AUTH there needs no TLS (the host's own bridge), only an app's account
    apps_listen: tuple[str, ...] = ()
    # the networks of apps that are mail clients for people (webmail): on `apps_listen` they
    # reach IMAP and ManageSieve too, and Dovecot trusts them to name the person's address
    client_networks: tuple[str, ...] = ()
    # the mailboxes (addresses) whose quota Postfix asks Dovecot about at RCPT: those whose free
    # space is below the largest message; None: every mailbox with a quota (usage unknown)
    quota_checked: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ServersSettings:
    """Where the servers run: fixed for the process (from MailConfig)."""

    root: Path  # state: generations/, conf -> generations/gN, queue, mail store, run dirs
    listen: tuple[str, ...] = ("127.0.0.1",)  # addresses every mail port binds
    smtp_port: int = 25  # MX: mail from the world, for local domains only
    submission_port: int = 587  # STARTTLS, AUTH required
    submissions_port: int = 465  # implicit TLS, AUTH required
    imaps_port: int = 993
    managesieve_port: int = 4190
    auth_url: str = "http://127.0.0.1:7480/auth"  # the mail service's endpoint for Dovecot
    auth_token: str = ""  # sent by Dovecot's auth with every check; 32+ random characters
    auth_failure_delay: float = 2.0  # seconds Dovecot waits before saying a password is wrong
    milter_port: int = 11332  # rspamd's proxy (milter) on 127.0.0.1
    apps_port: int = 2525  # on each of the model's `apps_listen` addresses
    apps_imap_port: int = 1143  # there too, for mail clients among the apps (webmail)
    apps_sieve_port: int = 4191
    nameservers: tuple[str, ...] = ()  # rspamd's DNS ("127.0.0.1:5300"); () = the system's
    vmail_user: str = "mail"  # owns the mail store; Dovecot delivers and reads as it
    # Sieve may send (away messages, redirects) through the mail service's endpoint
    # (services/mail/sieve_send.py at Layout.sieve_socket); off: such scripts are refused
    sieve_send: bool = False
    rspamd_user: str = "_rspamd"
