"""Mail service configuration, read once from HP_* environment variables.

The ports default to the standard ones of a server; the local stack gives high loopback ports
(deploy/planning.py). Nothing secret lives here: DKIM keys and relay passwords are sealed in the
events, app passwords are kept as hashes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from libs.contracts.mail import LOCAL_PART_PATTERN, RECIPIENT_PATTERN
from libs.events.relay import DEFAULT_PREFIX
from libs.service.config import ServiceConfig, check

__all__ = ["MailConfig"]


def _delay(v: float) -> bool:
    return 0 <= v <= 60


def _positive(v: float) -> bool:
    return v > 0


def _not_negative(v: float) -> bool:
    return v >= 0


def _port(v: int) -> bool:
    return 0 <= v <= 65535


def _user(v: str) -> bool:
    return re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", v) is not None


def _local_part(v: str) -> bool:
    return re.fullmatch(LOCAL_PART_PATTERN, v) is not None


def _address(v: str) -> bool:
    return len(v) <= 254 and re.fullmatch(RECIPIENT_PATTERN, v) is not None


@dataclass(frozen=True)
class MailConfig(ServiceConfig):
    """Where the mail servers listen and keep their state, and how the service follows changes."""

    events_prefix: str = DEFAULT_PREFIX
    # State of the servers: generations of configuration, queue, mail store (default
    # <data_dir>/mail).
    mail_dir: Path | None = None
    # Run Postfix, Dovecot and rspamd (they need root); off: only decide and record.
    mail_servers: bool = True
    mail_listen: tuple[str, ...] = ("127.0.0.1",)
    mail_smtp_port: int = field(default=25, metadata=check(_port, "a port 0-65535"))
    mail_submission_port: int = field(default=587, metadata=check(_port, "a port 0-65535"))
    mail_submissions_port: int = field(default=465, metadata=check(_port, "a port 0-65535"))
    mail_imaps_port: int = field(default=993, metadata=check(_port, "a port 0-65535"))
    mail_managesieve_port: int = field(default=4190, metadata=check(_port, "a port 0-65535"))
    mail_milter_port: int = field(default=11332, metadata=check(_port, "a port 0-65535"))
    # Dovecot asks the service about every password here (loopback; 0: any free port).
    mail_auth_port: int = field(default=0, metadata=check(_port, "a port 0-65535"))
    # Seconds Dovecot waits before it answers a wrong password (slows guessing; tests: 0).
    # 0 also turns off its growing wait for an address that keeps failing (up to 15 s).
    mail_auth_failure_delay: float = field(default=2.0, metadata=check(_delay, "seconds 0-60"))
    # Where apps send (their `sendmail` addon): the services network's address(es), served
    # while present on this host; and the port.
    mail_apps_listen: tuple[str, ...] = ()
    mail_apps_port: int = field(default=2525, metadata=check(_port, "a port 0-65535"))
    # Where mail clients among the apps (webmail, the `mailclient` addon) reach IMAP and
    # ManageSieve on those addresses (plain: the host's own bridge; people sign in there).
    mail_apps_imap_port: int = field(default=1143, metadata=check(_port, "a port 0-65535"))
    mail_apps_sieve_port: int = field(default=4191, metadata=check(_port, "a port 0-65535"))
    # Where an outbound relay may be (CIDRs); none: anywhere but this server's own, link-local
    # and metadata addresses. Tests give loopback only (nothing leaves the machine).
    mail_relay_networks: tuple[str, ...] = ()
    # The platform's own mail (invitations, alerts: services/mail/outbound.py) is sent as
    # <mail_platform_sender>@<first mail domain> while mail is on; through the relay otherwise,
    # as mail_platform_from when set, else the relay's username when it is an address, else
    # <mail_platform_sender>@<this host's name>.
    mail_platform_sender: str = field(
        default="noreply", metadata=check(_local_part, "a local part, e.g. noreply")
    )
    mail_platform_from: str | None = field(
        default=None, metadata=check(_address, "an address, e.g. homeport@example.org")
    )
    # rspamd's resolvers ("127.0.0.1:53"); none: the system's.
    mail_nameservers: tuple[str, ...] = ()
    mail_vmail_user: str = field(default="mail", metadata=check(_user, "a system user name"))
    # The servers' name when no domain has mail yet (then mail.<first domain>).
    mail_hostname: str = "mail.localhost"
    # A change is applied at once; this is the safety net for a missed nudge.
    mail_interval: float = field(default=60.0, metadata=check(_positive, "seconds > 0"))
    mail_debounce: float = field(default=0.2, metadata=check(_positive, "seconds > 0"))
    # How long what DNS serves of a domain's records is kept for its view (0: asked each time).
    mail_found_cache: float = field(default=30.0, metadata=check(_not_negative, "seconds >= 0"))
    identity_timeout: float = field(default=10.0, metadata=check(_positive, "seconds > 0"))

    @property
    def mail_root(self) -> Path:
        return self.mail_dir if self.mail_dir is not None else self.data_dir / "mail"
