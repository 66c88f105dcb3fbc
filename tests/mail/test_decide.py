"""The rules that turn the mail read model and identity's accounts into the servers' model
(services/mail/decide.py), tried on any input: properties over generated accounts, groups,
domains and extra addresses, plus the cases a reader would ask about."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from services.mail.decide import (
    ROLE_ADDRESSES,
    AddressRow,
    DomainRow,
    ForwardingRow,
    decide,
    near_quota,
)
from services.mail.model import MESSAGE_LIMIT, Mailbox, MailModel, ServersSettings
from services.mail.people import People, Person
from services.mail.render import render

_NAMES = st.sampled_from(["ann", "bob", "cat", "dan", "eve", "info", "postmaster", "sales"])
_DOMAINS = st.lists(
    st.sampled_from(["example.org", "example.net", "mail.test", "b.example"]),
    unique=True,
    max_size=3,
)


def _id(n: int) -> str:
    return str(uuid.UUID(int=n + 1))


@st.composite
def _worlds(draw: st.DrawFn) -> tuple[People, list[DomainRow], list[AddressRow]]:
    names = draw(st.lists(_NAMES, unique=True, max_size=5))
    persons = tuple(
        Person(user_id=_id(i), username=n, is_admin=draw(st.booleans()))
        for i, n in enumerate(names)
    )
    ids = [p.user_id for p in persons]
    groups = {
        _id(100 + g): tuple(draw(st.lists(st.sampled_from(ids), unique=True)) if ids else ())
        for g in range(draw(st.integers(0, 2)))
    }
    domains = [
        DomainRow(
            domain=d, selector="hp1", dkim_pem="PEM", catch_all=draw(st.sampled_from([None, *ids]))
        )
        for d in draw(_DOMAINS)
    ]
    rows = []
    for d in domains:
        for local in draw(st.lists(_NAMES, unique=True, max_size=3)):
            if draw(st.booleans()) or not groups:
                members = draw(st.lists(st.sampled_from([*ids, _id(999)]), unique=True, max_size=3))
                rows.append(AddressRow(d.domain, local, "alias", user_ids=tuple(members)))
            else:
                rows.append(
                    AddressRow(
                        d.domain, local, "list", group_id=draw(st.sampled_from(list(groups)))
                    )
                )
    return People(persons=persons, groups=groups), domains, rows


@settings(max_examples=300, deadline=None)
@given(_worlds())
def test_every_address_delivers_to_mailboxes_and_own_addresses_win(
    world: tuple[People, list[DomainRow], list[AddressRow]],
) -> None:
    people, domains, rows = world
    model = decide(hostname="mail.x", domains=domains, addresses=rows, people=people, quotas={})
    if not domains:
        assert model.mailboxes == () and model.domains == () and not model.aliases
        return
    primary = domains[0].domain
    boxes = {m.address for m in model.mailboxes}
    # a mailbox per account, at the primary domain, in a folder named by the account id
    assert {(m.address, m.login, m.folder) for m in model.mailboxes} == {
        (f"{p.username}@{primary}", p.username, p.user_id) for p in people.persons
    }
    # every address delivers only into mailboxes
    for address, targets in model.aliases.items():
        assert targets, address
        assert set(targets) <= boxes, address
    own = {f"{p.username}@{d.domain}": p for p in people.persons for d in domains}
    for address, p in own.items():
        # an account's own address is never taken by an alias or list
        assert model.senders[address] == (p.username,)
        if address.endswith("@" + primary):
            assert address not in model.aliases
        else:
            assert model.aliases[address] == (f"{p.username}@{primary}",)
    by_id = people.by_id()
    for r in rows:
        address = f"{r.local_part}@{r.domain}"
        if address in own:
            continue
        ids = r.user_ids if r.kind == "alias" else people.groups.get(r.group_id or "", ())
        members = [by_id[i] for i in ids if i in by_id]
        if not members:
            assert address not in model.aliases
            continue
        assert set(model.aliases[address]) == {f"{m.username}@{primary}" for m in members}
        assert set(model.senders[address]) == {m.username for m in members}
    # the same records give the same model (replay decides the same configuration)
    again = decide(hostname="mail.x", domains=domains, addresses=rows, people=people, quotas={})
    assert again == model


def test_postmaster_and_abuse_reach_the_administrators_unless_set() -> None:
    admin = Person(user_id=_id(1), username="root", is_admin=True)
    user = Person(user_id=_id(2), username="kim")
    people = People(persons=(admin, user))
    domains = [DomainRow("example.org", "hp1", "PEM"), DomainRow("example.net", "hp1", "PEM")]
    model = decide(hostname="h", domains=domains, addresses=[], people=people, quotas={})
    for role in ROLE_ADDRESSES:
        for d in ("example.org", "example.net"):
            assert model.aliases[f"{role}@{d}"] == ("root@example.org",)
    mine = [AddressRow("example.net", "abuse", "alias", user_ids=(user.user_id,))]
    model = decide(hostname="h", domains=domains, addresses=mine, people=people, quotas={})
    assert model.aliases["abuse@example.net"] == ("kim@example.org",)
    assert model.aliases["abuse@example.org"] == ("root@example.org",)


def test_catch_all_quota_and_dnsbl_reach_the_model() -> None:
    kim = Person(user_id=_id(2), username="kim")
    domains = [DomainRow("example.org", "hp7", "PEM-TEXT", catch_all=kim.user_id)]
    model = decide(
        hostname="mail.example.org",
        domains=domains,
        addresses=[],
        people=People(persons=(kim,)),
        quotas={kim.user_id: 5 << 20},
        dnsbl=["bl.example"],
    )
    (d,) = model.domains
    assert d.catch_all == "kim@example.org"
    assert d.dkim is not None and (d.dkim.selector, d.dkim.private_pem) == ("hp7", "PEM-TEXT")
    assert model.mailboxes[0].quota_bytes == 5 << 20
    assert model.dnsbl == ("bl.example",)
    gone = [DomainRow("example.org", "hp7", "PEM", catch_all=_id(50))]  # account deleted since
    model = decide(
        hostname="h", domains=gone, addresses=[], people=People(persons=(kim,)), quotas={}
    )
    assert model.domains[0].catch_all is None


# -- forwarding --------------------------------------------------------------------------------

_PEM = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
_OUTSIDE = ("me@elsewhere.example", "you@far.example")


@st.composite
def _forwarding_worlds(
    draw: st.DrawFn,
) -> tuple[People, list[DomainRow], list[AddressRow], list[ForwardingRow]]:
    """A world whose people forward to anything: each other, their own addresses, aliases,
    lists, unknown addresses here (a catch-all's or nobody's) and addresses elsewhere."""
    people, domains, rows = draw(_worlds())
    domains = [replace(d, dkim_pem=_PEM) for d in domains]
    here = [f"{p.username}@{d.domain}" for p in people.persons for d in domains]
    here += [f"{r.local_part}@{r.domain}" for r in rows]
    here += [f"nobody@{d.domain}" for d in domains]
    targets = st.sampled_from(sorted({*here, *_OUTSIDE}))
    forwarding = [
        ForwardingRow(
            user_id=p.user_id,
            to=tuple(draw(st.lists(targets, min_size=1, max_size=5, unique=True))),
            keep_copy=draw(st.booleans()),
        )
        for p in people.persons
        if draw(st.booleans())
    ]
    return people, domains, rows, forwarding


def _postfix(model: MailModel) -> Callable[[str], set[str]]:
    """Where Postfix sends mail to an address: its virtual alias expansion over the rendered
    table (cleanup_map1n.c: in place, recursive, an address that maps to itself is expanded
    once; 1000 levels and Postfix defers the message, "4.6.0 Alias expansion error")."""
    files = render(
        model,
        ServersSettings(root=Path("/srv/hp-mail"), auth_token="t" * 32),
        Path("/srv/hp-mail/generations/g000001"),
    )
    table: dict[str, list[str]] = {}
    for line in files["postfix/aliases"].data.decode().splitlines():
        key, _, targets = line.partition(" ")
        table[key] = targets.split(", ")

    def lookup(address: str) -> list[str] | None:
        return table.get(address) or table.get("@" + address.rpartition("@")[2])

    def expand(address: str) -> set[str]:
        argv = [address]
        fixed: set[str] = set()
        arg = 0
        while arg < len(argv):
            assert len(argv) <= 1000, f"{address}: expansion too large"
            count = 0
            while argv[arg] not in fixed:
                assert count < 1000, f"{address}: alias loop, Postfix defers the message"
                found = lookup(argv[arg])
                if found is None:
                    break
                lhs = argv[arg]
                for i, t in enumerate(found):
                    if i == 0:
                        argv[arg] = t
                    else:
                        argv.append(t)
                    if t == lhs:
                        fixed.add(lhs)
                count += 1
            arg += 1
        return set(argv)

    return expand


def _comes_back(
    box: str,
    rules: dict[str, ForwardingRow],
    base: MailModel,
    catches: dict[str, str],
) -> bool:
    """Whether forwarding from `box` reaches `box` again through mailboxes that keep no copy
    (a search over the rules, apart from decide's own)."""
    seen: set[str] = set()
    todo = list(rules[box].to)
    while todo:
        a = todo.pop()
        if a in seen:
            continue
        seen.add(a)
        if a in rules:
            if a == box:
                return True
            if not rules[a].keep_copy:
                todo += rules[a].to
        elif a in base.aliases:
            todo += base.aliases[a]
        elif a.rpartition("@")[2] in catches and a not in {m.address for m in base.mailboxes}:
            todo.append(catches[a.rpartition("@")[2]])
    return False


@settings(max_examples=300, deadline=None)
@given(_forwarding_worlds())
def test_forwarding_keeps_the_copy_reaches_every_target_and_never_loops(
    world: tuple[People, list[DomainRow], list[AddressRow], list[ForwardingRow]],
) -> None:
    people, domains, rows, forwarding = world
    model = decide(
        hostname="mail.x",
        domains=domains,
        addresses=rows,
        people=people,
        quotas={},
        forwarding=forwarding,
    )
    base = decide(hostname="mail.x", domains=domains, addresses=rows, people=people, quotas={})
    if not domains:
        assert not model.aliases
        return
    postfix, before = _postfix(model), _postfix(base)
    boxes = {m.folder: m.address for m in model.mailboxes}
    rules = {boxes[f.user_id]: f for f in forwarding}
    catches = {d.name: d.catch_all for d in model.domains if d.catch_all}
    # every address mail may come to expands without a loop (Postfix would defer it)
    everything = {*model.aliases, *boxes.values(), *(f"nobody@{d.domain}" for d in domains)}
    everything |= {t for f in forwarding for t in f.to}
    reached = {a: postfix(a) for a in sorted(everything)}
    for box, rule in rules.items():
        mine = model.aliases[box]
        again = _comes_back(box, rules, base, catches)
        if rule.keep_copy or again:
            # kim@d -> kim@d, other@x: a mailbox that keeps a copy maps to itself first
            assert mine == tuple(dict.fromkeys((box, *rule.to))), (box, mine)
            assert box in reached[box]
        else:
            # without keep_copy the mailbox's address maps only to the targets
            assert mine == rule.to, (box, mine)
            assert box not in reached[box]
        # every address that reached the mailbox before reaches every target now, and the
        # mailbox too when it keeps a copy
        for address in sorted(everything):
            if box not in before(address):
                continue
            for t in rule.to:
                assert reached[t] <= postfix(address), (address, t)
            if rule.keep_copy:
                assert box in postfix(address), address
    # without forwarding nothing changes
    unforwarded = {a: t for a, t in model.aliases.items() if a not in rules}
    assert unforwarded == dict(base.aliases)


def test_forwarding_that_comes_back_keeps_a_copy_instead_of_looping() -> None:
    kim = Person(user_id=_id(1), username="kim")
    lee = Person(user_id=_id(2), username="lee")
    people = People(persons=(kim, lee))
    domains = [DomainRow("example.org", "hp1", _PEM), DomainRow("example.net", "hp1", _PEM)]
    rows = [AddressRow("example.org", "team", "alias", user_ids=(kim.user_id, lee.user_id))]

    def aliases(*forwarding: ForwardingRow) -> Mapping[str, tuple[str, ...]]:
        return decide(
            hostname="h",
            domains=domains,
            addresses=rows,
            people=people,
            quotas={},
            forwarding=forwarding,
        ).aliases

    out = ("me@elsewhere.example",)
    assert aliases(ForwardingRow(kim.user_id, out))["kim@example.org"] == out
    kept = aliases(ForwardingRow(kim.user_id, out, keep_copy=True))
    assert kept["kim@example.org"] == ("kim@example.org", *out)
    # kim -> lee@example.net -> lee -> kim: each keeps a copy, so each message reaches both
    both = aliases(
        ForwardingRow(kim.user_id, ("lee@example.net",)),
        ForwardingRow(lee.user_id, ("kim@example.org",)),
    )
    assert both["kim@example.org"] == ("kim@example.org", "lee@example.net")
    assert both["lee@example.org"] == ("lee@example.org", "kim@example.org")
    # to a list kim is on: she keeps hers, lee gets it too
    team = aliases(ForwardingRow(kim.user_id, ("team@example.org",)))
    assert team["kim@example.org"] == ("kim@example.org", "team@example.org")
    # lee keeps a copy: no loop through lee, and kim's mail is lee's only
    kept_by_lee = aliases(
        ForwardingRow(kim.user_id, ("lee@example.org",)),
        ForwardingRow(lee.user_id, ("kim@example.org",), keep_copy=True),
    )
    assert kept_by_lee["kim@example.org"] == ("lee@example.org",)
    # an account gone since keeps no forwarding; one with no mail domain has none either
    gone = ForwardingRow(_id(50), out)
    assert "kim@example.org" not in aliases(gone)


@given(
    quota=st.one_of(st.none(), st.integers(1 << 20, 1 << 42)),
    used=st.one_of(st.none(), st.integers(0, 1 << 43)),
    known=st.booleans(),
)
def test_a_quota_is_asked_at_rcpt_whenever_one_message_could_fill_the_mailbox(
    quota: int | None, used: int | None, known: bool
) -> None:
    box = Mailbox("kim@example.test", "kim", "u-kim", quota_bytes=quota)
    usage = ({box.address: used} if used is not None else {}) if known else None
    checked = near_quota([box], usage)
    could_fill = quota is not None and (used is None or not known or quota - used < MESSAGE_LIMIT)
    assert checked == ((box.address,) if could_fill else ())
