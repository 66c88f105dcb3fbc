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
  (its `sendmail` addon) its own sender, unless that address is someone's;
- a mailbox with forwarding maps to its targets (and to itself with `keep_copy`: an address
  that maps to itself is delivered, as Postfix has it). Postfix expands virtual aliases
  recursively, so everything that reaches the mailbox (its own address on every domain, its
  aliases, lists and catch-alls) goes on too. A mailbox whose forwarding leads back to itself
  through mailboxes that keep no copy (a loop Postfix would defer mail in) keeps a copy: the
  message then reaches every target of the loop once (`_on_cycles`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.mail.model import MESSAGE_LIMIT, DkimKey, Mailbox, MailDomain, MailModel, Relay
from services.mail.people import People, Person

__all__ = ["ROLE_ADDRESSES", "AddressRow", "DomainRow", "ForwardingRow", "decide"]

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


@dataclass(frozen=True, slots=True)
class ForwardingRow:
    """A mailbox's forwarding as the read model has it, its addresses already unsealed."""

    user_id: str
    to: tuple[str, ...]  # lower-case addresses, here or elsewhere
    keep_copy: bool = False


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
    forwarding: Sequence[ForwardingRow] = (),
    usage: Mapping[str, int] | None = None,
) -> MailModel:
    """The model for `domains` (enabled, first = primary) and everything else given; `usage`
    is the bytes each mailbox (by address) holds, None when Dovecot cannot say."""
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
    catches: dict[str, str] = {}  # domain -> the mailbox its unknown addresses go to
    for d in domains:
        for role in ROLE_ADDRESSES:
            address = f"{role}@{d.domain}"
            if address not in explicit and address not in owners and admins:
                aliases[address] = tuple(boxes[p.user_id].address for p in admins)
        catch = boxes[d.catch_all].address if d.catch_all in boxes else None
        if catch is not None:
            catches[d.domain] = catch
        out.append(
            MailDomain(
                name=d.domain,
                dkim=DkimKey(selector=d.selector, private_pem=d.dkim_pem),
                catch_all=catch,
            )
        )
    aliases.update(_forwarded(forwarding, boxes, aliases, catches))
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
        quota_checked=near_quota(boxes.values(), usage),
    )


def near_quota(boxes: Iterable[Mailbox], usage: Mapping[str, int] | None) -> tuple[str, ...]:
    """The mailboxes with a quota that one message could fill: less than MESSAGE_LIMIT free,
    or their usage unknown. Asking Dovecot at RCPT for the others would cost every message a
    look-up (bench/mail.py) to refuse what cannot happen; a mailbox filled between two rounds
    by several messages still refuses at delivery (LMTP), with a bounce."""
    near = []
    for b in boxes:
        if b.quota_bytes is None:
            continue
        used = None if usage is None else usage.get(b.address)
        if used is None or b.quota_bytes - used < MESSAGE_LIMIT:
            near.append(b.address)
    return tuple(sorted(near))


def _forwarded(
    forwarding: Sequence[ForwardingRow],
    boxes: Mapping[str, Mailbox],
    aliases: Mapping[str, tuple[str, ...]],
    catches: Mapping[str, str],
) -> dict[str, tuple[str, ...]]:
    """The alias of each mailbox that forwards: its targets, itself first when it keeps a
    copy or when its forwarding comes back to it through mailboxes that keep none."""
    rules = {boxes[f.user_id].address: f for f in forwarding if f.user_id in boxes and f.to}
    if not rules:
        return {}
    mailboxes = {b.address for b in boxes.values()}

    def reached(target: str) -> Iterable[str]:
        """The mailboxes Postfix's next look-up of `target` gives."""
        if target in mailboxes:
            return (target,)
        if target in aliases:  # aliases, lists, own addresses on other domains: mailboxes
            return aliases[target]
        catch = catches.get(target.rpartition("@")[2])
        return (catch,) if catch is not None else ()  # else elsewhere, or refused here

    # a mailbox that keeps a copy maps to itself: Postfix stops there, so loops go through
    # mailboxes that keep none only
    graph = {
        address: sorted(
            {
                box
                for t in rule.to
                for box in reached(t)
                if box in rules and not rules[box].keep_copy
            }
        )
        for address, rule in rules.items()
        if not rule.keep_copy
    }
    looped = _on_cycles(graph)
    out: dict[str, tuple[str, ...]] = {}
    for address, rule in sorted(rules.items()):
        keep = rule.keep_copy or address in looped
        if address in looped:
            log.warning("forwarding of %s comes back to it: it keeps a copy", address)
        out[address] = tuple(dict.fromkeys([*([address] if keep else []), *rule.to]))
    return out


def _on_cycles(graph: Mapping[str, Sequence[str]]) -> set[str]:
    """The nodes of `graph` (node -> successors, all nodes) on a cycle: those of its strongly
    connected components with more than one node or an edge to itself (Tarjan's, without
    recursion: a chain of a thousand forwardings is no stack overflow)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[str] = set()

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)

    for root in sorted(graph):
        if root in index:
            continue
        visit(root)
        work = [(root, iter(graph[root]))]
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    visit(nxt)
                    work.append((nxt, iter(graph[nxt])))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    if len(component) > 1 or node in graph[node]:
                        found.update(component)
    return found
