"""The firewall service applying Homeport's table for real, inside namespaces the test creates
(tests/firewall/netkit.py): default deny, openings for SSH, the edge, mail and apps' ports
with their lifecycle, allow lists with the trial of a remote change, the block list and bans in
front of the host and of a published container port, IPv6 like IPv4, what an app may reach,
and a ruleset nft refuses changing nothing.

The events of other services (mail turned on, an app installed, stopped, uninstalled) are
appended as those services write them; the firewall's own changes go through its commands.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from libs.contracts.errors import BusError
from libs.events.bus import BusClient
from libs.events.context import Context
from libs.events.envelope import NewEvent
from libs.events.projection import ProjectionRunner, replay_by_name
from libs.events.store import PostgresEventStore
from services.apps import events as apps_ev
from services.firewall.errors import NftError
from services.firewall.nft import Nft, Table
from services.firewall.rules import load_rules
from services.firewall.ruleset import render
from services.mail.events import MailDomainDisabled, MailDomainEnabled
from tests.firewall.netkit import PUBLISHED, Net, listen, network, probe
from tests.support.bus import ActorBus, connect, relaying
from tests.support.firewall import firewall_env
from tests.support.serving import serving
from tests.support.waits import wait_until

HOST4, HOST6 = "192.0.2.1", "2001:db8::1"
ADMIN = str(uuid.uuid4())
TRIAL = 2.0  # seconds a remote change of the SSH list waits for its confirmation here


def admin(ip: str) -> Context:
    return Context(actor=ADMIN, admin=True, ip=ip)


class World:
    """The service under test, its bus, the event store and the namespaces."""

    def __init__(self, net: Net, bus: BusClient, store: PostgresEventStore) -> None:
        self.net = net
        self.bus = bus
        self.store = store

    async def cmd(self, verb: str, payload: dict[str, Any], ip: str = "192.0.2.3") -> Any:
        return await self.bus.command("firewall", verb, payload, ctx=admin(ip))

    async def status(self) -> dict[str, Any]:
        return await self.bus.query("firewall", "status", {}, ctx=admin("127.0.0.1"))

    async def applied(self) -> int:
        """Waits for the rules' projection to take in every event appended so far, then for
        the enforcer to apply the read model's revision."""
        last = await self.store.pool.fetchval(
            "SELECT coalesce(max(position), 0) FROM events.events"
        )

        async def caught_up() -> bool:
            at = await self.store.pool.fetchval(
                "SELECT position FROM firewall.checkpoints WHERE name = 'firewall'"
            )
            return bool(at is not None and at >= last)

        await wait_until(caught_up, 10, "the firewall's projection to catch up")
        want = await self.store.pool.fetchval("SELECT n FROM firewall.revision")

        async def done() -> bool:
            applied = (await self.status())["applied"]
            return applied.get("revision") == want and applied.get("ok") is True

        try:
            await wait_until(done, 10, f"revision {want} applied")
        except AssertionError:
            raise AssertionError((await self.status())["applied"]) from None
        return int(want)

    async def see(self, host: str, port: int, source: str = "-") -> str:
        return await asyncio.to_thread(probe, self.net.cli, host, port, source)

    async def eventually(self, want: str, host: str, port: int, source: str = "-") -> None:
        """Until a client sees `want` (events reach the firewall through the relay)."""
        got = ""
        for _ in range(20):
            await self.applied()
            got = await self.see(host, port, source)
            if got == want:
                return
            await asyncio.sleep(0.2)
        raise AssertionError((host, port, source, got))


@pytest.fixture
async def world(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> AsyncIterator[World]:
    from services.firewall.__main__ import build

    with network() as net:
        env = firewall_env(
            dsn=dsn,
            nats_url=nats_url,
            uniq=uniq,
            tmp_path=tmp_path,
            extra={
                "HP_FIREWALL_APPLY": "true",
                "HP_FIREWALL_NFT": net.nft,
                "HP_FIREWALL_RECONCILE_SECONDS": "0.2",  # other services' events, sooner
                "HP_FIREWALL_TRIAL_SECONDS": str(TRIAL),
                "HP_FIREWALL_SERVICES_GATEWAY": "10.99.0.1",
                "HP_FIREWALL_ADDON_PORTS": "postgresql=5432,ldap=3890",
            },
        )
        async with relaying(dsn, nats_url, uniq), serving(monkeypatch, build, env, "the firewall"):
            nc = await connect(nats_url)
            store = await PostgresEventStore.open(dsn, max_size=2)
            try:
                w = World(net, ActorBus(nc, default_timeout=20), store)
                await w.applied()
                yield w
            finally:
                await store.close()
                await nc.close()


async def _app_events(store: PostgresEventStore, app_id: str, *events: Any) -> None:
    stream = apps_ev.app_stream(app_id)
    await store.append(stream, list(events), await store.stream_version(stream))


def _install(app_id: str, tcp: dict[str, int]) -> apps_ev.AppInstallRequested:
    return apps_ev.AppInstallRequested(
        app_id=app_id,
        manifest_id="org.example.git",
        version="1.0.0",
        location="git",
        domain="example.org",
        access={"all_users": True, "groups": [], "user_ids": []},
        memory_bytes=1 << 28,
        env={},
        task_id=str(uuid.uuid4()),
        tcp_ports=tcp,
    )


@pytest.mark.slow
async def test_default_deny_openings_mail_and_ipv6_parity(world: World) -> None:
    with listen(world.net.srv, (22, 443, 587, 8080)):
        for host in (HOST4, HOST6):
            assert await world.see(host, 22) == "open"
            assert await world.see(host, 443) == "open"
            # a port something listens on but nothing opened: dropped, not even refused
            assert await world.see(host, 8080) == "dropped"
            assert await world.see(host, 587) == "dropped"
            assert await world.see(host, 9) == "dropped"  # nothing listens: still no answer
        # mail turned on for a domain opens its ports; off again closes them
        on = MailDomainEnabled(domain="example.org", selector="hp1", dkim_key="x", dkim_public="y")
        await world.store.append("maildomain-example.org", [on])
        await world.eventually("open", HOST4, 587)
        assert await world.see(HOST6, 587) == "open"
        # the mail ports and the edge can be kept for some addresses too (security groups)
        await world.cmd("set_allowlist", {"scope": "mail", "cidrs": ["192.0.2.3"]})
        await world.eventually("dropped", HOST4, 587, "192.0.2.2")
        assert await world.see(HOST4, 587, "192.0.2.3") == "open"
        edge = await world.cmd("set_allowlist", {"scope": "edge", "cidrs": ["192.0.2.3/32"]})
        assert edge["trial"] is not None  # from afar: on trial, as SSH's and the dashboard's
        await world.eventually("dropped", HOST4, 443, "192.0.2.2")
        assert await world.see(HOST4, 443, "192.0.2.3") == "open"
        await world.cmd("set_allowlist", {"scope": "edge", "cidrs": []}, ip="127.0.0.1")
        await world.eventually("open", HOST4, 443, "192.0.2.2")
        await world.store.append(
            "maildomain-example.org", [MailDomainDisabled(domain="example.org")]
        )
        await world.eventually("dropped", HOST6, 587)
        status = await world.status()
        assert {(o["protocol"], o["port"]) for o in status["open"]} == {
            ("tcp", 22),
            ("tcp", 80),
            ("tcp", 443),
        }


@pytest.mark.slow
async def test_an_apps_published_port_opens_and_closes_with_its_life(world: World) -> None:
    app = str(uuid.uuid4())
    with listen(world.net.ctr, (22,)), listen(world.net.srv, (4444,)):
        assert await world.see(HOST4, PUBLISHED) == "dropped"
        await _app_events(world.store, app, _install(app, {"GIT_SSH": PUBLISHED, "OTHER": 4444}))
        await world.eventually("open", HOST4, PUBLISHED)  # through Docker's DNAT
        assert await world.see(HOST6, 4444) == "open"  # docker-proxy's IPv6 side
        await _app_events(
            world.store, app, apps_ev.AppRunStateChanged(app_id=app, running=False, restart=False)
        )
        await world.eventually("dropped", HOST4, PUBLISHED)
        await _app_events(
            world.store, app, apps_ev.AppRunStateChanged(app_id=app, running=True, restart=False)
        )
        await world.eventually("open", HOST4, PUBLISHED)
        # the app's own allow list guards its published ports
        scope = f"app:{app}"
        await world.cmd("set_allowlist", {"scope": scope, "cidrs": ["192.0.2.3"]})
        await world.eventually("dropped", HOST4, PUBLISHED, "192.0.2.2")
        assert await world.see(HOST4, PUBLISHED, "192.0.2.3") == "open"
        await world.cmd("set_allowlist", {"scope": scope, "cidrs": []})
        await world.eventually("open", HOST4, PUBLISHED, "192.0.2.2")
        # a configure moving a port: the new one opens with it, the old one closes at its end
        task = str(uuid.uuid4())
        move = apps_ev.AppConfigureRequested(
            app_id=app,
            task_id=task,
            location=None,
            access=None,
            memory_bytes=None,
            env=None,
            tcp_ports={"GIT_SSH": PUBLISHED, "OTHER": 4445},
        )
        await _app_events(world.store, app, move)
        await world.applied()
        await _app_events(world.store, app, apps_ev.AppConfigured(app_id=app, task_id=task))
        await world.eventually("dropped", HOST6, 4444)
        # an uninstall closes them as it begins
        await _app_events(world.store, app, apps_ev.AppUninstallRequested(app_id=app, task_id=task))
        await world.eventually("dropped", HOST4, PUBLISHED)
        await _app_events(world.store, app, apps_ev.AppUninstalled(app_id=app, task_id=task))
        await world.applied()
        assert all(o["what"] in ("ssh", "edge") for o in (await world.status())["open"])


@pytest.mark.slow
async def test_block_list_and_bans_guard_the_host_and_published_ports(world: World) -> None:
    app = str(uuid.uuid4())
    with listen(world.net.ctr, (22,)), listen(world.net.srv, (22,)):
        await _app_events(world.store, app, _install(app, {"GIT_SSH": PUBLISHED}))
        await world.eventually("open", HOST4, PUBLISHED, "192.0.2.2")

        # the caller cannot block themselves out; a bad line is named and changes nothing
        with pytest.raises(BusError) as own:
            await world.cmd("import_blocklist", {"text": "192.0.2.0/28\n", "replace": True})
        assert own.value.field == "text" and "your own address" in own.value.message
        with pytest.raises(BusError) as bad:
            text = "# comment\n198.51.100.0/24\n10.0.0.0/33\n"
            await world.cmd("import_blocklist", {"text": text, "replace": True})
        assert bad.value.code == "invalid" and "line 3" in bad.value.message
        assert (await world.status())["blocklist"]["count"] == 0

        # 100,000 entries, among them the client's first address and a v6 range
        many = [f"100.{i // 250 % 250}.{i % 250}.{i // 62500}" for i in range(99_998)]
        text = "\n".join([*many, "192.0.2.2  # a scanner", "2001:db8::2/128"]) + "\n"
        done = await world.cmd("import_blocklist", {"text": text, "replace": True}, ip="127.0.0.1")
        assert done == {"imported": 100_000, "total": 100_000, "replace": True}
        await world.applied()
        assert await world.see(HOST4, 22, "192.0.2.2") == "dropped"
        assert await world.see(HOST4, PUBLISHED, "192.0.2.2") == "dropped"
        assert await world.see(HOST6, 22) == "dropped"
        assert await world.see(HOST4, 22, "192.0.2.3") == "open"
        assert await world.see(HOST4, PUBLISHED, "192.0.2.3") == "open"
        await world.cmd("unblock", {"entries": ["192.0.2.2"]}, ip="127.0.0.1")
        await world.eventually("open", HOST4, PUBLISHED, "192.0.2.2")

        # a ban (five failed sign-ins) also keeps an address from the published port
        table = Table(Nft(["ip", "netns", "exec", world.net.srv, "nft"]), "homeport")
        await table.add("192.0.2.3", 30)
        assert await world.see(HOST4, PUBLISHED, "192.0.2.3") == "dropped"
        assert await world.see(HOST4, PUBLISHED, "192.0.2.2") == "open"


@pytest.mark.slow
async def test_ssh_allow_list_from_afar_is_on_trial_and_undone_unless_confirmed(
    world: World,
) -> None:
    with listen(world.net.srv, (22,)):
        # from 192.0.2.3: only 192.0.2.3 may reach SSH now, for TRIAL seconds
        answer = await world.cmd("set_allowlist", {"scope": "ssh", "cidrs": ["192.0.2.3"]})
        assert answer["trial"]["seconds"] == TRIAL and answer["cidrs"] == ["192.0.2.3/32"]
        await world.applied()
        assert await world.see(HOST4, 22, "192.0.2.2") == "dropped"
        assert await world.see(HOST4, 22, "192.0.2.3") == "open"
        assert await world.see(HOST6, 22) == "dropped"  # a list of IPv4 ranges only
        # not confirmed: undone by itself
        await wait_until(
            lambda: _list_is(world, "ssh", [], None), TRIAL + 5, "the trial to be undone"
        )
        await world.eventually("open", HOST4, 22, "192.0.2.2")

        # again, confirmed from an address the new list lets in: it stays
        answer = await world.cmd("set_allowlist", {"scope": "ssh", "cidrs": ["192.0.2.3/32"]})
        trial = answer["trial"]["trial_id"]
        with pytest.raises(BusError) as outside:
            await world.cmd(
                "confirm_allowlist", {"scope": "ssh", "trial_id": trial}, ip="192.0.2.2"
            )
        assert outside.value.code == "forbidden" and "192.0.2.2" in outside.value.message
        await world.cmd("confirm_allowlist", {"scope": "ssh", "trial_id": trial})
        await asyncio.sleep(TRIAL + 1)
        assert await _list_is(world, "ssh", ["192.0.2.3/32"], None)
        await world.applied()
        assert await world.see(HOST4, 22, "192.0.2.2") == "dropped"

        # from this machine (the console): set at once, no trial
        answer = await world.cmd(
            "set_allowlist", {"scope": "ssh", "cidrs": ["2001:db8::/64"]}, ip="127.0.0.1"
        )
        assert answer["trial"] is None
        await world.eventually("open", HOST6, 22)
        assert await world.see(HOST4, 22, "192.0.2.3") == "dropped"

        # bad input names the field and changes nothing
        for cidrs, field in ((["10.0.0.0/33"], "cidrs.0"), (["1.2.3.4", "x\x00"], "cidrs.1")):
            with pytest.raises(BusError) as bad:
                await world.cmd("set_allowlist", {"scope": "ssh", "cidrs": cidrs}, ip="127.0.0.1")
            assert bad.value.field == field, bad.value
        assert await _list_is(world, "ssh", ["2001:db8::/64"], None)


async def _list_is(world: World, scope: str, cidrs: list[str], trial: Any) -> bool:
    got = await world.bus.query("firewall", "allowlist", {"scope": scope}, ctx=admin("127.0.0.1"))
    return bool(got["cidrs"] == cidrs and got["trial"] == trial)


@pytest.mark.slow
async def test_an_app_reaches_only_its_addons_and_the_internet_it_is_allowed(world: World) -> None:
    app = str(uuid.uuid4())
    ctr = world.net.ctr

    async def sees(host: str, port: int) -> str:
        return await asyncio.to_thread(probe, ctr, host, port)

    with listen(world.net.srv, (5432, 3890, 443, 7432)), listen(world.net.cli, (22,)):
        await _app_events(
            world.store,
            app,
            _install(app, {}),
            apps_ev.AppStepCompleted(
                app_id=app, operation="install", step="network", detail={"subnet": "10.99.0.0/24"}
            ),
        )
        await world.applied()
        # no addon yet: nothing of the host but the edge
        assert await sees("10.99.0.1", 5432) == "dropped"
        assert await sees("10.99.0.1", 7432) == "dropped"  # the platform's own Postgres port
        assert await sees("192.0.2.1", 443) == "open"  # other apps, through the edge
        await _app_events(
            world.store,
            app,
            apps_ev.AddonProvisioned(app_id=app, addon="postgresql", credentials="sealed"),
        )
        await world.applied()
        assert await sees("10.99.0.1", 5432) == "open"
        assert await sees("10.99.0.1", 3890) == "dropped"  # not an LDAP app
        # the internet (here 192.0.2.2) yes, private ranges no; then no internet at all
        assert await sees("192.0.2.2", 22) == "open"
        assert await sees("10.50.0.2", 22) == "dropped"
        await world.cmd("set_app_internet", {"app_id": app, "internet": False}, ip="127.0.0.1")
        await world.applied()
        assert await sees("192.0.2.2", 22) == "dropped"
        assert await sees("10.99.0.1", 5432) == "open"  # its addons stay


async def test_a_ruleset_nft_refuses_changes_nothing(world: World) -> None:
    table = Table(Nft(["ip", "netns", "exec", world.net.srv, "nft"]), "homeport")
    before = await table.listing()
    good = render("homeport", await _rules(world))
    broken = good.replace("policy drop;", "policy dorp;")
    with pytest.raises(NftError, match="dorp"):  # nft finds this one itself
        await table.apply(broken)
    assert await table.listing() == before
    # the kernel refuses this one, after the table was deleted earlier in the same batch
    assert good.startswith("table inet homeport\ndelete table inet homeport\n")
    hook = "type filter hook input priority filter; policy drop;"
    assert hook in good
    kernel = good.replace(hook, hook + "\n        jump nowhere", 1)
    with pytest.raises(NftError, match="No such file or directory"):
        await table.apply(kernel)
    assert await table.listing() == before
    with listen(world.net.srv, (22, 8080)):
        assert await world.see(HOST4, 22) == "open"
        assert await world.see(HOST4, 8080) == "dropped"


async def _rules(world: World) -> Any:
    async with world.store.pool.acquire() as conn:
        return await load_rules(
            conn,
            ssh_ports=(22,),
            edge_ports=(80, 443),
            services_gateway="10.99.0.1",
            addon_ports={"postgresql": (5432,)},
        )


async def test_replay_decides_the_same_ruleset(world: World, dsn: str) -> None:
    app = str(uuid.uuid4())
    # events not as their service writes them are skipped, never stop the firewall
    odd = [
        NewEvent("AppInstalled", {"step": 1}),
        NewEvent("AppInstallRequested", {"app_id": "x'; DROP", "tcp_ports": {"A": 1}}),
        NewEvent("AppStepCompleted", {"app_id": app, "step": "network", "detail": {"subnet": "x"}}),
        NewEvent("AppRunStateChanged", {"app_id": app}),
    ]
    await world.store.append(f"app-{uuid.uuid4()}", odd)
    await _app_events(world.store, app, _install(app, {"GIT_SSH": 2222}))
    await world.applied()
    await world.cmd("set_allowlist", {"scope": f"app:{app}", "cidrs": ["198.51.100.0/24"]})
    await world.cmd("block", {"entries": ["203.0.113.0/24", "2001:db8:1::/48"]})
    await world.cmd("set_app_internet", {"app_id": app, "internet": False})
    await world.applied()
    before = render("homeport", await _rules(world))
    assert "tcp dport 2222 ip saddr 198.51.100.0/24 accept" in before
    await replay_by_name("firewall", dsn)
    assert render("homeport", await _rules(world)) == before


async def test_a_first_table_nft_refuses_leaves_only_ssh_and_the_edge_open(dsn: str) -> None:
    """No table of ours in force yet (a new server) and the rules fail to apply: the host is
    not left open; a minimal table (SSH, the edge, default drop) is applied instead."""
    from services.firewall.enforce import Enforcer
    from services.firewall.rules import RulesProjection
    from services.firewall.ruleset import Opening, Rules

    async def broken(blocked: bool = True) -> Rules:
        return Rules(openings=(Opening("tcp", 70000, "a port nft does not take"),))

    store = await PostgresEventStore.open(dsn, max_size=2)
    try:
        await ProjectionRunner(RulesProjection(), store).setup()
        with network() as net, listen(net.srv, (22, 8080)):
            table = Table(Nft(["ip", "netns", "exec", net.srv, "nft"]), "homeport")
            fallback = Rules(openings=(Opening("tcp", 22, "ssh"), Opening("tcp", 443, "edge")))
            enforcer = Enforcer(table, store.pool, broken, fallback=fallback)
            assert await enforcer.apply() is False
            assert enforcer.last["ok"] is False and enforcer.last["fallback"] is True
            assert "70000" in enforcer.last["error"]
            assert await asyncio.to_thread(probe, net.cli, HOST4, 22) == "open"
            assert await asyncio.to_thread(probe, net.cli, HOST4, 8080) == "dropped"
    finally:
        await store.close()
