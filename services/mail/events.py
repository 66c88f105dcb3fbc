"""The events of the mail service.

Streams: `mailapp-<app_id>` holds an app's sending account (its `sendmail` addon);
`maildomain-<domain>` holds one mail domain's life (on, off, its DKIM keys, catch-all,
aliases and group lists); `mailbox-<user_id>` what the mail service keeps of one person (quota,
app passwords, forwarding); `mail-settings` the platform's DNS block lists. Never a message, a
subject or an address-book entry. DKIM private keys are sealed with the key of subject
`maildomain-<domain>`; an app password is kept only as the SHA-256 of its 256 random bits, its
label sealed like a key; forwarding addresses are sealed the same way (one outside is personal
data).
Summaries are stored in clear: they name domains, local parts and ids, never a person's name.
"""

from __future__ import annotations

from dataclasses import dataclass

from libs.events.registry import REGISTRY

__all__ = [
    "APP_CATEGORY",
    "DOMAIN_CATEGORY",
    "MAILBOX_CATEGORY",
    "SETTINGS_STREAM",
    "MailAddressRemoved",
    "MailAddressSet",
    "MailAppPasswordCreated",
    "MailAppPasswordRevoked",
    "MailAppRegistered",
    "MailAppRemoved",
    "MailCatchAllSet",
    "MailDkimKeyActivated",
    "MailDkimKeyAdded",
    "MailDkimKeyRetired",
    "MailDnsblSet",
    "MailDomainDisabled",
    "MailDomainEnabled",
    "MailForwardingCleared",
    "MailForwardingSet",
    "MailQuotaSet",
    "MailRelayCleared",
    "MailRelaySet",
    "app_stream",
    "domain_stream",
    "mailbox_stream",
]

APP_CATEGORY = "mailapp"
DOMAIN_CATEGORY = "maildomain"
MAILBOX_CATEGORY = "mailbox"
SETTINGS_STREAM = "mail-settings"


def domain_stream(domain: str) -> str:
    """`maildomain-example.org`; also the subject its DKIM key is sealed for."""
    return f"{DOMAIN_CATEGORY}-{domain}"


def app_stream(app_id: str) -> str:
    return f"{APP_CATEGORY}-{app_id}"


def mailbox_stream(user_id: str) -> str:
    return f"{MAILBOX_CATEGORY}-{user_id}"


@REGISTRY.event("MailDomainEnabled")
@dataclass(frozen=True, slots=True, kw_only=True)
class MailDomainEnabled:
    domain: str
    selector: str  # DKIM selector: <selector>._domainkey.<domain>
    dkim_key: str  # the RSA private key (PKCS#8 PEM), sealed
    dkim_public: str  # base64 of the public key (SubjectPublicKeyInfo DER): the record's p=

    def summary(self) -> str:
        return f"mail turned on for {self.domain} (DKIM selector {self.selector})"


@REGISTRY.event("MailDomainDisabled")
@dataclass(frozen=True, slots=True, kw_only=True)
class MailDomainDisabled:
    domain: str

    def summary(self) -> str:
        return f"mail turned off for {self.domain}"


@REGISTRY.event("MailDkimKeyAdded")
@dataclass(frozen=True, slots=True, kw_only=True)
class MailDkimKeyAdded:
    """A rotation's next DKIM key: its record is published beside the signing key's; it signs
    once the domain's nameservers serve that record (MailDkimKeyActivated)."""

    domain: str
    selector: str  # a new one: <selector>._domainkey.<domain>
    dkim_key: str  # the RSA private key (PKCS#8 PEM), sealed
    dkim_public: str  # base64 of the public key (SubjectPublicKeyInfo DER): the record's p=

    def summary(self) -> str:
        return f"new DKIM key {self.selector} of {self.domain} published, not signing yet"


@REGISTRY.event("MailDkimKeyActivated")
@dataclass(frozen=True, slots=True, kw_only=True)
class MailDkimKeyActivated:
    """The next key signs from now on; the key it replaces is retiring: its record stays
    published a while (mail in flight still verifies), then MailDkimKeyRetired."""

    domain: str
    selector: str  # the next key's
    served: bool  # the nameservers served its record (False: the wait for them ran out)

    def summary(self) -> str:
        why = "DNS serves it" if self.served else "DNS did not say it serves it within the wait"
        return f"DKIM key {self.selector} of {self.domain} signs from now on ({why})"


@REGISTRY.event("MailDkimKeyRetired")
@dataclass(frozen=True, slots=True, kw_only=True)
class MailDkimKeyRetired:
    """A replaced key's record was removed from DNS."""

    domain: str
    selector: str

    def summary(self) -> str:
        return f"old DKIM key {self.selector} of {self.domain} removed from DNS"


@REGISTRY.event("MailCatchAllSet")
@dataclass(frozen=True, slots=True, kw_only=True)
class MailCatchAllSet:
    domain: str
    user_id: str | None  # whose mailbox receives mail to unknown addresses; None: refused

    def summary(self) -> str:
        if self.user_id is None:
            return f"catch-all of {self.domain} turned off"
        return f"catch-all of {self.domain} delivers to account {self.user_id[:8]}"


@REGISTRY.event("MailAddressSet")
@dataclass(frozen=True, slots=True, kw_only=True)
class MailAddressSet:
    """An extra address: an alias to accounts, or a list that delivers to a group's members."""

    domain: str
    local_part: str
    kind: str  # "alias" or "list"
    user_ids: list[str]  # alias: who receives (and may send as it)
    group_id: str | None  # list: the group whose members receive (and may send as it)

    def summary(self) -> str:
        if self.kind == "list":
            return f"{self.local_part}@{self.domain} delivers to the members of a group"
        n = len(self.user_ids)
        return f"{self.local_part}@{self.domain} delivers to {n} account{'s' if n != 1 else ''}"


@REGISTRY.event("MailAddressRemoved")
@dataclass(frozen=True, slots=True, kw_only=True)
class MailAddressRemoved:
    domain: str
    local_part: str

    def summary(self) -> str:
        return f"{self.local_part}@{self.domain} removed"


@REGISTRY.event("MailQuotaSet")
@dataclass(frozen=True, slots=True, kw_only=True)
class MailQuotaSet:
    user_id: str
    quota_bytes: int | None  # None: no limit

    def summary(self) -> str:
        limit = "no limit" if self.quota_bytes is None else f"{self.quota_bytes} bytes"
        return f"mailbox quota of account {self.user_id[:8]}: {limit}"


@REGISTRY.event("MailAppPasswordCreated")
@dataclass(frozen=True, slots=True, kw_only=True)
class MailAppPasswordCreated:
    user_id: str
    password_id: str
    label: str  # sealed
    hash: str  # sha256 hex of the password (256 random bits: a slow hash would add nothing)

    def summary(self) -> str:
        return f"app password {self.password_id[:8]} created for account {self.user_id[:8]}"


@REGISTRY.event("MailForwardingSet")
@dataclass(frozen=True, slots=True, kw_only=True)
class MailForwardingSet:
    """Mail to the mailbox goes on to `to` (its own addresses on every domain, its aliases,
    lists and catch-alls included); with `keep_copy` the mailbox keeps each message too."""

    user_id: str
    to: list[str]  # the addresses, each sealed with the key of subject `mailbox-<user_id>`
    keep_copy: bool

    def summary(self) -> str:
        n = len(self.to)
        kept = ", a copy kept" if self.keep_copy else ""
        where = f"{n} address{'es' if n != 1 else ''}"
        return f"mail of account {self.user_id[:8]} forwarded to {where}{kept}"


@REGISTRY.event("MailForwardingCleared")
@dataclass(frozen=True, slots=True, kw_only=True)
class MailForwardingCleared:
    user_id: str

    def summary(self) -> str:
        return f"mail of account {self.user_id[:8]} no longer forwarded"


@REGISTRY.event("MailAppPasswordRevoked")
@dataclass(frozen=True, slots=True, kw_only=True)
class MailAppPasswordRevoked:
    user_id: str
    password_id: str

    def summary(self) -> str:
        return f"app password {self.password_id[:8]} of account {self.user_id[:8]} revoked"


@REGISTRY.event("MailDnsblSet")
@dataclass(frozen=True, slots=True, kw_only=True)
class MailDnsblSet:
    zones: list[str]  # DNS block list zones: a client they list is refused

    def summary(self) -> str:
        return "DNS block lists: " + (", ".join(self.zones) if self.zones else "none")


@REGISTRY.event("MailAppRegistered")
@dataclass(frozen=True, slots=True, kw_only=True)
class MailAppRegistered:
    """An app may send as `sender`, signing in from `network` only; again: a new password."""

    app_id: str
    sender: str  # the envelope sender the app must use
    network: str  # the app's Docker network (CIDR): the only place its password is taken from
    hash: str  # sha256 hex of the password (256 random bits)

    def summary(self) -> str:
        return f"app {self.app_id[:8]} may send mail as {self.sender}"


@REGISTRY.event("MailClientRegistered")
@dataclass(frozen=True, slots=True, kw_only=True)
class MailClientRegistered:
    """An app is a mail client for people (webmail): it reaches IMAP, submission and
    ManageSieve from `network`, each person signing in with their own account."""

    app_id: str
    network: str  # the app's Docker network (CIDR), trusted to forward the person's address

    def summary(self) -> str:
        return f"app {self.app_id[:8]} may sign people in to their mailboxes"


@REGISTRY.event("MailAppRemoved")
@dataclass(frozen=True, slots=True, kw_only=True)
class MailAppRemoved:
    app_id: str

    def summary(self) -> str:
        return f"app {self.app_id[:8]} may no longer send mail or sign people in"


@REGISTRY.event("MailRelaySet")
@dataclass(frozen=True, slots=True, kw_only=True)
class MailRelaySet:
    """Mail to other domains leaves through this smart host (checked before it was kept)."""

    host: str
    port: int
    tls: str  # "starttls" or "tls"
    username: str | None
    password: str | None  # sealed
    spf: str | None = None  # added to every mail domain's SPF record (the provider's include)

    def summary(self) -> str:
        return f"outgoing mail relayed through {self.host}:{self.port}"


@REGISTRY.event("MailRelayCleared")
@dataclass(frozen=True, slots=True, kw_only=True)
class MailRelayCleared:
    def summary(self) -> str:
        return "outgoing mail delivered directly (no relay)"
