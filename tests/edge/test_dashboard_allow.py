"""The dashboard's allow list at the edge, with real nginx: a client whose address the list does
not name gets 403 from every dashboard (`my.<domain>`, the local domain's), while 127.0.0.1 is
always let in, apps and ACME HTTP-01 are served to everyone, and an empty list lets everyone in
again. Clients connect from other loopback addresses (127.0.0.2, 127.0.0.3): only 127.0.0.1 and
::1 are let in whatever the list says, not all of 127/8.

Through EdgeSync with a real event store and NATS: the last `AllowListChanged` of stream
`firewall-allow-dashboard` decides, and that event's arrival starts a round at once (a trial
and its undoing included); a list that is not CIDRs keeps the config nginx serves.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from deploy.embedded import free_port
from libs.events.envelope import NewEvent
from libs.events.store import PostgresEventStore
from services.firewall.events import AllowListChanged
from services.gateway.edge.render import render
from services.gateway.edge.sync import DASHBOARD_ALLOW_STREAM, EdgeSettings, EdgeSync
from tests.support.bus import connect
from tests.support.edge import edge_get
from tests.support.nginx import BLOG, MY, Edge, Upstream, nginx_binary
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(120)


async def get_from(source: str, port: int, host: str, path: str = "/", *, tls: bool = True) -> int:
    """The status of a GET to 127.0.0.1:port for `host`, sent from address `source`."""
    status, _, _ = await asyncio.wait_for(edge_get(port, host, path, tls=tls, source=source), 15)
    return status


async def test_nginx_lets_only_the_list_and_this_machine_reach_the_dashboard(edge: Edge) -> None:
    https, http = edge.https_port, edge.http_port
    token = "tok-EN_allow-1"
    (edge.acme_dir / token).write_text("the key authorization")
    (edge.acme_dir / token).chmod(0o644)

    # no list: everyone
    assert await get_from("127.0.0.2", https, MY) == 200

    listed = replace(edge.model, dashboard_allow=("10.0.0.0/8", "2001:db8::/32"))
    conf = render(listed)[f"sites/{MY}.conf"]
    assert "allow 10.0.0.0/8;" in conf and "allow 127.0.0.1/32;" in conf
    assert "allow ::1/128;" in conf and "deny all;" in conf
    assert "deny all;" not in render(listed)[f"sites/{BLOG}.conf"]
    # the dashboard at the server's own addresses (no domain of its own yet) too
    at_address = render(replace(listed, address=edge.upstream.address))["default.conf"]
    assert "allow 10.0.0.0/8;" in at_address and "deny all;" in at_address
    await edge.nginx.apply(listed)  # nginx -t first, then a reload
    assert await get_from("127.0.0.2", https, MY) == 403
    assert await get_from("127.0.0.2", https, MY, "/api/v1/status") == 403
    assert await get_from("127.0.0.1", https, MY) == 200  # this machine, always
    assert await get_from("127.0.0.2", https, BLOG) == 200  # apps are not the dashboard's list
    # ACME HTTP-01 and the redirect to HTTPS stay open to all: the CA checks from anywhere
    assert (
        await get_from("127.0.0.2", http, MY, f"/.well-known/acme-challenge/{token}", tls=False)
        == 200
    )
    assert await get_from("127.0.0.2", http, MY, "/", tls=False) == 301

    ours = replace(edge.model, dashboard_allow=("127.0.0.2/32",))
    await edge.nginx.apply(ours)
    assert await get_from("127.0.0.2", https, MY) == 200
    assert await get_from("127.0.0.3", https, MY) == 403  # 127/8 is not let in as a whole

    # a list of this machine alone still refuses the rest
    await edge.nginx.apply(replace(edge.model, dashboard_allow=("127.0.0.1",)))
    assert await get_from("127.0.0.2", https, MY) == 403
    assert await get_from("127.0.0.1", https, MY) == 200

    await edge.nginx.apply(edge.model)  # empty again: everyone
    assert await get_from("127.0.0.3", https, MY) == 200


def test_a_list_entry_that_is_not_an_address_never_reaches_nginx(edge: Edge) -> None:
    for bad in ("10.0.0.0/33", "x", "10.0.0.1; allow all", "", "::1/129"):
        with pytest.raises(ValueError, match="dashboard_allow"):
            replace(edge.model, dashboard_allow=(bad,))


# -- through EdgeSync ----------------------------------------------------------------------


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    conn = await connect(nats_url)
    yield conn
    await conn.close()


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[PostgresEventStore]:
    s = await PostgresEventStore.open(dsn, max_size=2)
    yield s
    await s.close()


async def test_the_edge_follows_the_last_allow_list_event_of_the_dashboard(
    nc: NATS, store: PostgresEventStore, edge_root: Path, upstream: Upstream, uniq: str
) -> None:
    nginx_binary()
    settings = EdgeSettings(
        prefix=edge_root / "edge",
        http_port=free_port(),
        https_port=free_port(),
        acme_dir=edge_root / "acme",
        dashboard_upstream=upstream.address,
        bind=("127.0.0.1",),
        interval=300,  # only the event can explain a round within the test
        retry=300,
        events_prefix=f"t{uniq}.evt",
    )
    sync = EdgeSync(settings, nc, store=store)
    port, host = settings.https_port, "my.localhost"

    async def status(source: str) -> int:
        try:
            return await get_from(source, port, host)
        except (OSError, ssl.SSLError, TimeoutError):
            return 0

    async def changed(cidrs: list[str], why: str = "set", **kw: str) -> None:
        event = AllowListChanged(scope="dashboard", cidrs=cidrs, why=why, **kw)
        await store.append(DASHBOARD_ALLOW_STREAM, [event])
        # what the relay publishes once the event is committed (no relay runs here)
        await nc.publish(f"t{uniq}.evt.firewall.AllowListChanged", b"{}")

    async def answers(source: str, wanted: int, what: str) -> None:
        async def now() -> bool:
            return await status(source) == wanted

        await wait_until(now, 15, what)

    # a list set before the edge starts is in force from its first round
    await changed(["192.0.2.0/24"])
    task = asyncio.create_task(sync.run(), name="edge sync under test")
    try:
        await answers("127.0.0.1", 200, "my.localhost served to this machine")
        assert await status("127.0.0.2") == 403

        await changed(["127.0.0.2/32", "192.0.2.0/24"])
        await answers("127.0.0.2", 200, "127.0.0.2 let in by the new list")
        assert await status("127.0.0.3") == 403

        # a trial narrows the list at once; its undoing brings the list before it back
        trial = "0190f0e8-0000-7000-8000-000000000001"
        await changed(["192.0.2.0/24"], "trial", trial_id=trial, deadline="2030-01-01T00:00:00Z")
        await answers("127.0.0.2", 403, "the trial's list in force")
        await changed(["127.0.0.2/32", "192.0.2.0/24"], "reverted", trial_id=trial)
        await answers("127.0.0.2", 200, "the list before the trial back")

        # an event that is not a list keeps what nginx serves, and says why
        rounds = sync.rounds
        await store.append(
            DASHBOARD_ALLOW_STREAM, [NewEvent("AllowListChanged", {"scope": "dashboard"})]
        )
        await nc.publish(f"t{uniq}.evt.firewall.AllowListChanged", b"{}")

        async def another_round() -> bool:
            return sync.rounds > rounds and sync.last_error is not None

        await wait_until(another_round, 15, "a round refusing the event")
        assert "allow list" in (sync.last_error or "") or "CIDRs" in (sync.last_error or "")
        assert await status("127.0.0.2") == 200 and await status("127.0.0.3") == 403

        await changed([])  # empty: everyone
        await answers("127.0.0.3", 200, "everyone let in again")
    finally:
        sync.stop()
        await asyncio.wait_for(task, 30)
