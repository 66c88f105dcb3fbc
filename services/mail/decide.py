"""What the mail servers must know, decided from the read model and the people: `MailModel`.

A pure function of its inputs, so the same records give the same configuration (replay) and the
rules can be tried on any input (tests/mail/test_decide.py):
- every account gets a mailbox at `username@<primary domain>` (the domain mail was turned on
  for first), and `username@<other domain>` for each other mail domain, delivering to it;
- an alias delivers to the mailboxes of its accounts, a list to its group's members; an
  account's own address always wins over an extra address of the same name (an account
  created after the alias takes the address: the alias is left out and logged);
- `postmaster@` and `abuse@` (RFC 2142) deliver to the administrators unless set otherwise;
- a catch-all delivers mail to unknown addresses of its domain to one mailbox;
- who may send as an address: its owner, an alias's accounts, a list's members, and an app
  (its `sendmail` addon) its own sender, unless that address is someone's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.mail.model import DkimKey, Mailbox, MailDomain, MailModel, Relay
from services.mail.people import People, Person

__all__ = ["ROLE_ADDRESSES", "AddressRow", "DomainRow", "decide"]

log = logging.getLogger(__name__)

ROLE_ADDRESSES = ("postmaster", "abuse")


@dataclass(frozen=True, slots=True)
class DomainRow:
    """A mail domain as the read model has it, its DKIM key already unsealed."""

    domain: str
    selector: str
    dkim_pem: str
    catch_all: str | None = None  # a user id


@dataclass(frozen=True, slots=True)
class AddressRow:
    domain: str
    local_part: str
    kind: str  # "alias" or "list"
    user_ids: tuple[str, ...] = ()
    group_id: str | None = None


def decide(
    *,
    hostname: str,
    domains: Sequence[DomainRow],
    addresses: Sequence[AddressRow],
    people: People,
    quotas: Mapping[str, int | None],
    dnsbl: Sequence[str] = (),
    tls: tuple[Path, Path] | None = None,
    apps: Sequence[tuple[str, str]] = (),
    apps_listen: tuple[str, ...] = (),
    client_networks: Sequence[str] = (),
    relay: Relay | None = None,
) -> MailModel:
    """The model for `domains` (enabled, first = primary) and everything else given."""
    app_senders = {sender: (login,) for sender, login in apps}
    # mail clients reach the servers only where apps do
    clients = tuple(sorted(set(client_networks))) if apps_listen else ()
    if not domains:
        return MailModel(
            hostname=hostname,
            dnsbl=tuple(dnsbl),
            senders=app_senders,
            apps_listen=apps_listen,
            client_networks=clients,
            relay=relay,
        )
    primary = domains[0].domain
    boxes: dict[str, Mailbox] = {}  # user id -> mailbox
    for p in sorted(people.persons, key=lambda p: p.username):
        boxes[p.user_id] = Mailbox(
            address=f"{p.username}@{primary}",
            login=p.username,
            folder=p.user_id,
            quota_bytes=quotas.get(p.user_id),
        )
    owners: dict[str, Person] = {}  # every account's own address on every domain
    aliases: dict[str, tuple[str, ...]] = {}
    senders: dict[str, tuple[str, ...]] = {}
    for d in domains:
        for p in people.persons:
            address = f"{p.username}@{d.domain}"
            owners[address] = p
            senders[address] = (p.username,)
            if d.domain != primary:
                aliases[address] = (boxes[p.user_id].address,)
    by_id = people.by_id()
    explicit: set[str] = set()
    for a in addresses:
        address = f"{a.local_part}@{a.domain}"
        if address in owners:
            log.warning("%s is an account's own address: the extra address is left out", address)
            continue
        ids = a.user_ids if a.kind == "alias" else people.groups.get(a.group_id or "", ())
        members = [by_id[i] for i in ids if i in by_id]
        explicit.add(address)
        if not members:
            continue  # nobody to deliver to: the address is refused like an unknown one
        aliases[address] = tuple(boxes[m.user_id].address for m in members)
        senders[address] = tuple(sorted({m.username for m in members}))
    for sender, login in app_senders.items():
        if sender in senders:
            log.warning("%s is taken by an account or address: the app may not send as it", sender)
        else:
            senders[sender] = login
    admins = [p for p in people.persons if p.is_admin and not p.disabled]
    out: list[MailDomain] = []
    for d in domains:
        for role in ROLE_ADDRESSES:
            address = f"{role}@{d.domain}"
            if address not in explicit and address not in owners and admins:
                aliases[address] = tuple(boxes[p.user_id].address for p in admins)
        catch = boxes[d.catch_all].address if d.catch_all in boxes else None
        out.append(
            MailDomain(
                name=d.domain,
                dkim=DkimKey(selector=d.selector, private_pem=d.dkim_pem),
                catch_all=catch,
            )
        )
    return MailModel(
        hostname=hostname,
        domains=tuple(out),
        mailboxes=tuple(boxes.values()),
        aliases=dict(sorted(aliases.items())),
        senders=dict(sorted(senders.items())),
        dnsbl=tuple(dnsbl),
        tls_cert=tls[0] if tls else None,
        tls_key=tls[1] if tls else None,
        apps_listen=apps_listen,
        client_networks=clients,
        relay=relay,
    )
