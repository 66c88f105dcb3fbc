"""The rules that turn the mail read model and identity's accounts into the servers' model
(services/mail/decide.py), tried on any input: properties over generated accounts, groups,
domains and extra addresses, plus the cases a reader would ask about."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from services.mail.decide import ROLE_ADDRESSES, AddressRow, DomainRow, decide
from services.mail.people import People, Person

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
