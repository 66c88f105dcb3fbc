"""The mail service's commands and queries against the real identity and dns services (and the
test PowerDNS), its servers off: what an administrator and a person see, bad input, who may."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from libs.events.bus import BusError
from tests.support.mail import World, mail_world, resolve
from tests.support.pdns import PdnsZone


@pytest.fixture
async def world(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    pdns_zone: PdnsZone,
) -> AsyncIterator[World]:
    async with mail_world(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, zone=pdns_zone
    ) as w:
        yield w


async def _addresses(w: World, user_id: str) -> list[str]:
    """The addresses that deliver into the person's mailbox, as they see them."""
    box = await w.mail.ask("mailbox", {"user_id": user_id}, actor=user_id)
    return [str(a) for a in box["addresses"]]


async def _settled(w: World) -> dict[str, Any]:
    """The servers' state after a round of the sync that began after every change so far."""
    status: dict[str, Any] = await w.mail.ask("status", {"wait": True})
    assert status["last_error"] is None, status["last_error"]
    return status


async def test_turning_mail_on_publishes_its_records_and_gives_everyone_a_mailbox(
    world: World,
) -> None:
    w = world
    reply = await w.mail.cmd("enable_domain", {"domain": w.domain}, actor=w.admin, admin=True)
    assert reply["enabled"] is True and reply["selector"].startswith("hp")
    await _settled(w)
    view = await w.mail.ask("domain", {"domain": w.domain})
    assert view["enabled"] and view["primary"]
    records = {(r["name"], r["type"]) for r in view["records"]}
    sel = reply["selector"]
    assert records == {
        (w.domain, "MX"),
        (w.domain, "TXT"),
        (f"{sel}._domainkey.{w.domain}", "TXT"),
        (f"_dmarc.{w.domain}", "TXT"),
        (f"mail.{w.domain}", "A"),  # dns knows the server's address: the mail host's record
    }
    # written through dns into the zone, as a resolver finds them
    assert resolve(w.zone, w.domain, "MX") == [f"10 mail.{w.domain}."]
    assert resolve(w.zone, f"mail.{w.domain}", "A") == ["192.0.2.10"]
    assert resolve(w.zone, w.domain, "TXT") == ['"v=spf1 mx -all"']
    dmarc = resolve(w.zone, f"_dmarc.{w.domain}", "TXT")
    assert dmarc and "p=quarantine" in dmarc[0]
    dkim = "".join(
        part.strip('"')
        for part in resolve(w.zone, f"{sel}._domainkey.{w.domain}", "TXT")[0].split('" "')
    )
    public = dkim.split("p=", 1)[1]
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    key = load_der_public_key(base64.b64decode(public))
    assert key.key_size == 2048  # type: ignore[union-attr]
    # the private key is sealed in the event, never in clear
    (kind, data), *_ = await w.mail.events(f"maildomain-{w.domain}")
    assert kind == "MailDomainEnabled"
    assert "PRIVATE KEY" not in str(data) and data["dkim_public"] == public
    # every account has a mailbox at the domain; the sync's model says so
    box = await w.mail.ask("mailbox", {"user_id": w.lee}, actor=w.lee)
    assert box["address"] == f"lee@{w.domain}"
    assert box["addresses"] == [f"lee@{w.domain}"]
    status = await w.mail.ask("status", {})
    assert status["domains"] == [w.domain] and status["mailboxes"] == 3
    # on again: refused; off and on: the same key comes back
    with pytest.raises(BusError) as e:
        await w.mail.cmd("enable_domain", {"domain": w.domain})
    assert e.value.code == "conflict" and e.value.field == "domain"
    await w.mail.cmd("disable_domain", {"domain": w.domain})
    again = await w.mail.cmd("enable_domain", {"domain": w.domain})
    assert again["selector"] == sel


async def test_a_domain_homeport_does_not_manage_is_refused_and_nothing_recorded(
    world: World,
) -> None:
    w = world
    with pytest.raises(BusError) as e:
        await w.mail.cmd("enable_domain", {"domain": "not-managed.example"})
    assert (e.value.code, e.value.field) == ("not_found", "domain")
    assert await w.mail.events("maildomain-not-managed.example") == []
    assert (await w.mail.ask("domains", {}))["items"] == []


async def test_aliases_lists_and_their_rules(world: World) -> None:
    w = world
    await w.mail.cmd("enable_domain", {"domain": w.domain})
    group = await w.ident.cmd("create_group", {"name": "family"}, actor=w.admin)
    gid = group["group_id"]
    await w.ident.cmd("add_group_member", {"group_id": gid, "user_id": w.kim}, actor=w.admin)
    await w.mail.cmd(
        "set_address",
        {"domain": w.domain, "local_part": "info", "kind": "alias", "user_ids": [w.kim, w.lee]},
    )
    await w.mail.cmd(
        "set_address", {"domain": w.domain, "local_part": "family", "kind": "list", "group_id": gid}
    )
    await _settled(w)
    d = w.domain
    assert await _addresses(w, w.kim) == [f"kim@{d}", f"family@{d}", f"info@{d}"]
    assert await _addresses(w, w.lee) == [f"lee@{d}", f"info@{d}"]
    # a new member of the group is on the list at the next round (identity's events nudge it)
    await w.ident.cmd("add_group_member", {"group_id": gid, "user_id": w.lee}, actor=w.admin)
    await _settled(w)
    assert await _addresses(w, w.lee) == [f"lee@{d}", f"family@{d}", f"info@{d}"]
    # an account's own address cannot be taken
    with pytest.raises(BusError) as e:
        await w.mail.cmd(
            "set_address",
            {"domain": w.domain, "local_part": "kim", "kind": "alias", "user_ids": [w.lee]},
        )
    assert (e.value.code, e.value.field) == ("conflict", "local_part")
    # unknown accounts and groups are named
    with pytest.raises(BusError) as e:
        await w.mail.cmd(
            "set_address",
            {
                "domain": w.domain,
                "local_part": "x",
                "kind": "alias",
                "user_ids": ["00000000-0000-4000-8000-000000000000"],
            },
        )
    assert (e.value.code, e.value.field) == ("not_found", "user_ids")
    with pytest.raises(BusError) as e:
        await w.mail.cmd("set_address", {"domain": w.domain, "local_part": "x", "kind": "list"})
    assert (e.value.code, e.value.field) == ("invalid", "group_id")
    await w.mail.cmd("remove_address", {"domain": w.domain, "local_part": "info"})
    with pytest.raises(BusError) as e:
        await w.mail.cmd("remove_address", {"domain": w.domain, "local_part": "info"})
    assert e.value.code == "not_found"
    await _settled(w)
    assert await _addresses(w, w.lee) == [f"lee@{d}", f"family@{d}"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"local_part": "a+b", "kind": "alias", "user_ids": []}, "local_part"),
        ({"local_part": "x\x00", "kind": "alias", "user_ids": []}, "local_part"),
        ({"local_part": "A", "kind": "alias", "user_ids": []}, "local_part"),
        ({"local_part": "x" * 65, "kind": "alias", "user_ids": []}, "local_part"),
        ({"local_part": "x", "kind": "forward", "user_ids": []}, "kind"),
        ({"local_part": "x", "kind": "alias", "user_ids": ["nope"]}, "user_ids.0"),
    ],
)
async def test_bad_input_is_named_and_changes_nothing(
    world: World, payload: dict[str, Any], field: str
) -> None:
    w = world
    await w.mail.cmd("enable_domain", {"domain": w.domain})
    before = await w.mail.events(f"maildomain-{w.domain}")
    with pytest.raises(BusError) as e:
        await w.mail.cmd("set_address", {"domain": w.domain, **payload})
    assert e.value.code == "invalid"
    assert e.value.field == field
    assert await w.mail.events(f"maildomain-{w.domain}") == before


async def test_quota_bounds(world: World) -> None:
    w = world
    for bad in (0, 1 << 19, 1 << 60):
        with pytest.raises(BusError) as e:
            await w.mail.cmd("set_quota", {"user_id": w.kim, "quota_bytes": bad})
        assert (e.value.code, e.value.field) == ("invalid", "quota_bytes")
    reply = await w.mail.cmd("set_quota", {"user_id": w.kim, "quota_bytes": 10 << 20})
    assert reply["quota_bytes"] == 10 << 20


async def test_app_passwords_are_shown_once_kept_hashed_and_only_their_owners(
    world: World,
) -> None:
    w = world
    await w.mail.cmd("enable_domain", {"domain": w.domain})
    made = await w.mail.cmd(
        "create_app_password", {"user_id": w.kim, "label": "phone"}, actor=w.kim
    )
    password = made["password"]
    assert len(password) >= 43  # 256 bits, base64url
    events = await w.mail.events(f"mailbox-{w.kim}")
    assert [k for k, _ in events] == ["MailAppPasswordCreated"]
    assert password not in str(events) and "phone" not in str(events)
    box = await w.mail.ask("mailbox", {"user_id": w.kim}, actor=w.kim)
    (shown,) = box["app_passwords"]
    assert shown["label"] == "phone" and "password" not in shown
    # another person can neither see nor revoke it; an administrator can
    for call in (
        w.mail.ask("mailbox", {"user_id": w.kim}, actor=w.lee),
        w.mail.cmd(
            "revoke_app_password",
            {"user_id": w.kim, "password_id": made["password_id"]},
            actor=w.lee,
        ),
        w.mail.cmd("create_app_password", {"user_id": w.kim, "label": "x"}, actor=w.lee),
    ):
        with pytest.raises(BusError) as e:
            await call
        assert e.value.code == "not_found"
    # and a person cannot change domains
    with pytest.raises(BusError) as e:
        await w.mail.cmd("disable_domain", {"domain": w.domain}, actor=w.lee)
    assert e.value.code == "forbidden"
    await w.mail.cmd(
        "revoke_app_password", {"user_id": w.kim, "password_id": made["password_id"]}, actor=w.kim
    )
    assert (await w.mail.ask("mailbox", {"user_id": w.kim}, actor=w.kim))["app_passwords"] == []


async def test_a_mail_client_app_is_registered_by_the_platform_only_and_checked(
    world: World,
) -> None:
    w = world
    app_id = "6f1c1a52-2f64-4c31-9a55-5d0f3d1f1b3e"
    payload = {"app_id": app_id, "network": "10.220.9.0/24"}
    # an administrator is not the platform: only the apps service registers apps
    with pytest.raises(BusError) as e:
        await w.mail.cmd("register_client", payload, actor=w.admin, admin=True)
    assert e.value.code == "forbidden"
    for bad in ("10.0.0.0/4", "not a network", "10.0.0.0/24\x00", "::/16"):
        with pytest.raises(BusError) as e:
            await w.mail.cmd("register_client", {**payload, "network": bad})
        assert (e.value.code, e.value.field) == ("invalid", "network"), bad
    # this mail service has no address for apps (no HP_MAIL_APPS_LISTEN): nothing recorded
    assert await w.mail.cmd("register_client", payload) == {"host": None}
    assert await w.mail.events(f"mailapp-{app_id}") == []


async def test_mail_turned_on_four_times_at_once_is_on_once_with_one_key(world: World) -> None:
    w = world
    tries = [
        w.mail.cmd("enable_domain", {"domain": w.domain}, actor=w.admin, admin=True)
        for _ in range(4)
    ]
    results = await asyncio.gather(*tries, return_exceptions=True)
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1, results
    assert all(isinstance(e, BusError) and e.code == "conflict" for e in lost), lost
    events = await w.mail.events(f"maildomain-{w.domain}")
    assert [t for t, _ in events] == ["MailDomainEnabled"]
    view = await w.mail.ask("domain", {"domain": w.domain}, actor=w.admin, admin=True)
    assert view["selector"] == events[0][1]["selector"]


async def test_a_relay_password_or_name_with_a_line_break_is_refused_before_any_try(
    world: World,
) -> None:
    w = world
    good = {"host": "127.0.0.1", "port": 1, "tls": "starttls"}
    for bad, field in (
        ({"username": "kim", "password": "pw\nmail from:<x@y>"}, "password"),
        ({"username": "kim\r\nrcpt", "password": "pw"}, "username"),
        ({"username": "kim", "password": "pw\x00"}, "password"),
        # the SPF addition: mechanisms that authorise senders, nothing that ends or bends it
        ({"spf": "all"}, "spf"),
        ({"spf": "+all"}, "spf"),
        ({"spf": "include:spf.example.net -all"}, "spf"),
        ({"spf": "redirect=evil.example"}, "spf"),
        ({"spf": "include:a..b"}, "spf"),
        ({"spf": "include:localhost"}, "spf"),
        ({"spf": "ip4:999.1.1.1"}, "spf"),
        ({"spf": "ip4:10.0.0.0/33"}, "spf"),
        ({"spf": "ip4:2001:db8::1"}, "spf"),
        ({"spf": "ip6:10.0.0.1"}, "spf"),
        ({"spf": "include:a.example  include:b.example"}, "spf"),
        ({"spf": " ".join(f"include:s{i}.example" for i in range(6))}, "spf"),
        ({"spf": "include:x.example\n"}, "spf"),
        ({"spf": "include:" + "a" * 64 + ".example"}, "spf"),
    ):
        with pytest.raises(BusError) as e:
            await w.mail.cmd("set_relay", {**good, **bad}, actor=w.admin, admin=True)
        assert (e.value.code, e.value.field) == ("invalid", field), bad
    assert await w.mail.events("mail-settings") == []
