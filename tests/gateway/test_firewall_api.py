"""/api/v1/firewall through the API, the real identity service and the real firewall service
(HP_FIREWALL_APPLY=false: its commands, queries and read models work, the host's packet filter
is left alone):

administrators only (anonymous 401, a user 403, a read-only token may only look); allow lists
set from this machine for good, and from a remote address (the caller's address reaches the
firewall in the bus context) on trial, confirmed only from an address the new list lets in; a
block list imported as JSON or as text/plain (replace or add), paged, edited an entry at a
time; an app's internet switch and its allow list; bad input answered 400 naming the field
with nothing changed, and a list over 3,000,000 characters 413.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from libs.contracts.firewall import MAX_ALLOW, MAX_BLOCK_TEXT
from libs.events.envelope import NewEvent
from libs.events.store import PostgresEventStore
from tests.gateway.apikit import Answer, Cast, Client, serve_api
from tests.support.firewall import firewall_env, running_firewall

pytestmark = pytest.mark.timeout(180)

APP = str(uuid.uuid4())  # an app the firewall knows from its apps events (the fixture's)
REMOTE = "198.51.100.7"  # a caller elsewhere: nginx names it in X-Real-IP
ELSEWHERE = "192.0.2.99"


@pytest.fixture
async def firewall(
    monkeypatch: pytest.MonkeyPatch,
    store: PostgresEventStore,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
) -> AsyncIterator[None]:
    # An app installed with a published TCP port: what the apps service records (the
    # firewall's rules projection reads it from the log when it starts).
    request = {"app_id": APP, "tcp_ports": {"8080": 30080}, "udp_ports": {}}
    await store.append(f"app-{APP}", [NewEvent("AppInstallRequested", request)])
    await store.append(f"app-{APP}", [NewEvent("AppInstalled", {"app_id": APP})])
    env = firewall_env(dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path)
    async with running_firewall(monkeypatch, env):
        yield


@pytest.fixture
async def api(nc: NATS, cast: Cast, firewall: None) -> AsyncIterator[Client]:
    async with serve_api(nc) as client:
        yield client


async def call(
    api: Client,
    method: str,
    path: str,
    token: str,
    body: Any = None,
    *,
    ip: str | None = None,
    **kw: Any,
) -> Answer:
    headers = dict(kw.pop("headers", {}))
    if ip is not None:  # the gateway believes X-Real-IP from a proxy on loopback (nginx)
        headers["X-Real-IP"] = ip
    return await api.call(method, "/api/v1" + path, token=token, body=body, headers=headers, **kw)


async def ok(api: Client, method: str, path: str, token: str, body: Any = None, **kw: Any) -> Any:
    a = await call(api, method, path, token, body, **kw)
    assert a.status == 200, (method, path, a.status, a.body)
    return a.body


def refused(a: Answer, status: int, field: str | None = None) -> dict[str, Any]:
    assert a.status == status, (a.status, a.body)
    problem = a.problem
    if field is not None:
        got = str(problem.get("field"))
        assert got == field or got.startswith((f"{field}.", f"{field}[")), problem
    return problem


ROUTES = (
    ("GET", "/firewall", None),
    ("GET", "/firewall/allowlists/ssh", None),
    ("PUT", "/firewall/allowlists/ssh", {"cidrs": []}),
    ("POST", "/firewall/allowlists/ssh/confirm", {"trial_id": str(uuid.uuid4())}),
    ("GET", "/firewall/blocklist", None),
    ("PUT", "/firewall/blocklist", {"text": "203.0.113.1\n", "replace": True}),
    ("POST", "/firewall/blocklist/add", {"entries": ["203.0.113.2"]}),
    ("POST", "/firewall/blocklist/remove", {"entries": ["203.0.113.2"]}),
    ("GET", f"/apps/{APP}/firewall", None),
    ("PUT", f"/apps/{APP}/internet", {"internet": False}),
)


async def test_only_administrators_see_or_change_the_firewall(api: Client, cast: Cast) -> None:
    for method, path, body in ROUTES:
        anonymous = await api.call(method, "/api/v1" + path, body=body)
        assert anonymous.status == 401, (path, anonymous.body)
        alice = await call(api, method, path, cast.token_alice, body)
        refused(alice, 403)
        read_only = await call(api, method, path, cast.token_root_read, body)
        assert read_only.status == (200 if method == "GET" else 403), (path, read_only.body)
    # nothing was changed by any of them
    root = cast.token_root
    assert (await ok(api, "GET", "/firewall/blocklist", root))["total"] == 0
    assert (await ok(api, "GET", "/firewall/allowlists/ssh", root))["cidrs"] == []
    assert (await ok(api, "GET", f"/apps/{APP}/firewall", root))["internet"] is True


async def test_a_remote_change_is_on_trial_and_kept_only_from_the_new_rules(
    api: Client, cast: Cast
) -> None:
    root = cast.token_root
    # from this machine: set for good
    body = await ok(api, "PUT", "/firewall/allowlists/ssh", root, {"cidrs": ["203.0.113.9/24"]})
    assert body["cidrs"] == ["203.0.113.0/24"] and body["trial"] is None
    shown = await ok(api, "GET", "/firewall/allowlists/ssh", root)
    assert shown["cidrs"] == ["203.0.113.0/24"] and shown["trial"] is None

    # from a remote address: on trial, in force at once
    new = {"cidrs": ["198.51.100.0/24", "2001:db8::/32"]}
    body = await ok(api, "PUT", "/firewall/allowlists/dashboard", root, new, ip=REMOTE)
    trial = body["trial"]
    assert trial and trial["trial_id"] and trial["deadline"]
    assert trial["lets_you_in"] is True and trial["you"] == REMOTE  # Context.ip arrived
    shown = await ok(api, "GET", "/firewall/allowlists/dashboard", root)
    assert shown["cidrs"] == ["198.51.100.0/24", "2001:db8::/32"]
    assert shown["trial"]["trial_id"] == trial["trial_id"] and 0 < shown["trial"]["seconds_left"]
    status = await ok(api, "GET", "/firewall", root)
    assert status["allowlists"]["dashboard"]["trial"]["trial_id"] == trial["trial_id"]

    confirm = "/firewall/allowlists/dashboard/confirm"
    # ... not from an address the new list leaves out
    refused(
        await call(api, "POST", confirm, root, {"trial_id": trial["trial_id"]}, ip=ELSEWHERE), 403
    )
    # ... nor another trial
    wrong = {"trial_id": str(uuid.uuid4())}
    refused(await call(api, "POST", confirm, root, wrong, ip=REMOTE), 409, "trial_id")
    still = await ok(api, "GET", "/firewall/allowlists/dashboard", root)
    assert still["trial"]["trial_id"] == trial["trial_id"]
    # ... kept from inside the new rules
    kept = await ok(api, "POST", confirm, root, {"trial_id": trial["trial_id"]}, ip=REMOTE)
    assert kept["cidrs"] == ["198.51.100.0/24", "2001:db8::/32"]
    shown = await ok(api, "GET", "/firewall/allowlists/dashboard", root)
    assert shown["trial"] is None and shown["cidrs"] == kept["cidrs"]
    # an app's list is never on trial (it cannot lock the administrator out)
    scope = f"/firewall/allowlists/app:{APP}"
    body = await ok(api, "PUT", scope, root, {"cidrs": ["192.0.2.0/24"]}, ip=REMOTE)
    assert body["trial"] is None


async def test_bad_input_is_refused_naming_the_field_and_changes_nothing(
    api: Client, cast: Cast
) -> None:
    root = cast.token_root
    await ok(api, "PUT", "/firewall/allowlists/ssh", root, {"cidrs": ["203.0.113.0/24"]})
    await ok(api, "PUT", "/firewall/blocklist", root, {"text": "192.0.2.1\n", "replace": True})
    ssh = "/firewall/allowlists/ssh"
    for cidrs in (["10.0.0.0/33"], ["x"], ["10.0.0.1\x00"], ["::1/129"], ["1.2.3.4.5"]):
        refused(await call(api, "PUT", ssh, root, {"cidrs": cidrs}), 400, "cidrs")
    too_many = [f"10.{i // 256}.{i % 256}.0/24" for i in range(MAX_ALLOW + 1)]
    refused(await call(api, "PUT", ssh, root, {"cidrs": too_many}), 400, "cidrs")
    refused(await call(api, "PUT", ssh, root, {"cidrs": "10.0.0.0/8"}), 400, "cidrs")
    refused(await call(api, "PUT", ssh, root, {"cidrs": [], "more": 1}), 400, "more")
    refused(await call(api, "PUT", "/firewall/allowlists/ftp", root, {"cidrs": []}), 400, "scope")
    refused(
        await call(api, "PUT", "/firewall/allowlists/app:nope", root, {"cidrs": []}), 400, "scope"
    )
    # a number of 5,000 digits: refused where the body is parsed
    digits = "9" * 5000
    huge = await call(
        api, "PUT", ssh, root, data=f'{{"cidrs": [{digits}]}}'.encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert "digits" in refused(huge, 400)["detail"]
    refused(await call(api, "GET", f"/firewall/blocklist?limit={digits}", root), 400, "limit")
    refused(await call(api, "GET", "/firewall/blocklist?offset=-1", root), 400, "offset")
    refused(await call(api, "GET", "/firewall/blocklist?limit=5001", root), 400, "limit")

    add = "/firewall/blocklist/add"
    refused(await call(api, "POST", add, root, {"entries": ["0.0.0.0/0"]}), 400, "entries")
    refused(await call(api, "POST", add, root, {"entries": ["nope"]}), 400, "entries")
    entries = [f"10.{i // 256}.{i % 256}.1" for i in range(5001)]
    refused(await call(api, "POST", add, root, {"entries": entries}), 400, "entries")
    blocklist = "/firewall/blocklist"
    bad_line = {"text": "192.0.2.7\n203.0.113.300\n", "replace": True}
    assert (
        "line 2"
        in refused(await call(api, "PUT", blocklist, root, bad_line), 400, "text")["detail"]
    )
    nul = {"text": "192.0.2.7\x00\n", "replace": True}
    refused(await call(api, "PUT", blocklist, root, nul), 400, "text")
    refused(await call(api, "PUT", blocklist, root, {"text": "192.0.2.8\n"}), 400, "replace")
    both = await call(api, "PUT", blocklist + "?replace=false", root, {"text": "", "replace": True})
    refused(both, 400, "replace")
    html = await call(
        api, "PUT", blocklist, root, data=b"192.0.2.9\n", headers={"Content-Type": "text/html"}
    )
    refused(html, 415)
    latin = await call(
        api, "PUT", blocklist, root, data=b"192.0.2.9 # caf\xe9\n",
        headers={"Content-Type": "text/plain"},
    )  # fmt: skip
    refused(latin, 400)
    app = f"/apps/{APP}/internet"
    refused(await call(api, "PUT", app, root, {"internet": "no"}), 400, "internet")
    refused(
        await call(api, "PUT", "/apps/not-an-id/internet", root, {"internet": False}), 400, "app_id"
    )
    unknown = f"/apps/{uuid.uuid4()}/internet"
    refused(await call(api, "PUT", unknown, root, {"internet": False}), 404, "app_id")

    # nothing changed
    assert (await ok(api, "GET", ssh, root))["cidrs"] == ["203.0.113.0/24"]
    page = await ok(api, "GET", blocklist, root)
    assert page["total"] == 1 and page["entries"] == ["192.0.2.1/32"]
    assert (await ok(api, "GET", f"/apps/{APP}/firewall", root))["internet"] is True


async def test_a_block_list_is_imported_as_json_or_text_paged_and_edited(
    api: Client, cast: Cast
) -> None:
    root = cast.token_root
    path = "/firewall/blocklist"
    text = "# spammers\n203.0.113.5\n198.51.100.0/24 ; a whole net\n\n2001:db8::/48\n"
    body = await ok(api, "PUT", path, root, {"text": text, "replace": True})
    assert body["imported"] == 3 and body["total"] == 3
    first = await ok(api, "GET", path + "?limit=2", root)
    rest = await ok(api, "GET", path + "?offset=2&limit=2", root)
    assert first["total"] == 3 and len(first["entries"]) == 2 and len(rest["entries"]) == 1
    assert sorted(first["entries"] + rest["entries"]) == sorted(
        ["203.0.113.5/32", "198.51.100.0/24", "2001:db8::/48"]
    )
    # as text/plain: added with ?replace=false, the whole list without
    plain = {"Content-Type": "text/plain; charset=utf-8"}
    added = await ok(
        api, "PUT", path + "?replace=false", root, data=b"192.0.2.0/28\n", headers=plain
    )
    assert added["total"] == 4 and added["replace"] is False
    whole = await ok(api, "PUT", path, root, data=b"192.0.2.0/28\n", headers=plain)
    assert whole["total"] == 1
    assert (await ok(api, "GET", path, root))["entries"] == ["192.0.2.0/28"]

    more = await ok(api, "POST", path + "/add", root, {"entries": ["203.0.113.9", "10.1.0.0/16"]})
    assert more["total"] == 3
    less = await ok(api, "POST", path + "/remove", root, {"entries": ["192.0.2.0/28"]})
    assert less["total"] == 2
    status = await ok(api, "GET", "/firewall", root)
    assert status["blocklist"]["count"] == 2
    ports = {(o["port"], o["protocol"]) for o in status["open"]}
    assert {(22, "tcp"), (80, "tcp"), (443, "tcp")} <= ports


async def test_a_list_of_up_to_three_million_characters_is_taken_and_one_over_is_413(
    api: Client, cast: Cast
) -> None:
    root = cast.token_root
    path = "/firewall/blocklist"
    # 100,000 entries with comments, just under the limit
    lines = [f"10.{i // 65536}.{(i // 256) % 256}.{i % 256}  # listed 2026" for i in range(100_000)]
    text = "\n".join(lines) + "\n"
    text += "#" * (MAX_BLOCK_TEXT - len(text) - 1) + "\n"
    assert len(text) == MAX_BLOCK_TEXT
    plain = {"Content-Type": "text/plain"}
    json_type = {"Content-Type": "application/json"}

    def big(data: str) -> io.BytesIO:  # aiohttp sends a large body from a file-like object
        return io.BytesIO(data.encode())

    body = await ok(api, "PUT", path, root, data=big(text), headers=plain)
    assert body["total"] == 100_000

    over = text + "#\n"
    answer = await call(api, "PUT", path, root, data=big(over), headers=plain)
    assert "3,000,000 characters" in refused(answer, 413)["detail"]
    as_json = json.dumps({"text": over, "replace": True})
    refused(await call(api, "PUT", path, root, data=big(as_json), headers=json_type), 413)
    bigger = await call(api, "PUT", path, root, data=big("#" * 4_000_000), headers=plain)
    refused(bigger, 413)
    assert (await ok(api, "GET", path + "?limit=1", root))["total"] == 100_000


async def test_an_app_is_cut_off_from_the_internet_and_its_ports_limited(
    api: Client, cast: Cast
) -> None:
    root = cast.token_root
    view = await ok(api, "GET", f"/apps/{APP}/firewall", root)
    assert view["internet"] is True and view["tcp_ports"] == [30080] and view["allow"] == []
    off = await ok(api, "PUT", f"/apps/{APP}/internet", root, {"internet": False})
    assert off == {"app_id": APP, "internet": False}
    scope = f"/firewall/allowlists/app:{APP}"
    await ok(api, "PUT", scope, root, {"cidrs": ["192.0.2.0/24"]})
    view = await ok(api, "GET", f"/apps/{APP}/firewall", root)
    assert view["internet"] is False and view["allow"] == ["192.0.2.0/24"]
    status = await ok(api, "GET", "/firewall", root)
    opening = [o for o in status["open"] if o["port"] == 30080]
    assert opening and opening[0]["allow"] == ["192.0.2.0/24"], status["open"]
    assert json.dumps(status)  # the whole answer is JSON the dashboard reads
