"""Pebble refusing validations (nobody serves the challenge tokens) → the certs service records
the failed order → notify opens the renewal-failure alert; served again, the retried order
succeeds and the alert resolves."""

from __future__ import annotations

from pathlib import Path

import pytest

from libs.events.context import Context
from tests.certs.certskit import certs_env, domain, running_certs, serving_tokens
from tests.identity.kit import running_identity
from tests.support.bus import relaying
from tests.support.notify import notify_env, running_notify
from tests.support.pebble import PebbleServer
from tests.support.waits import wait_until


async def test_a_refused_validation_opens_the_renewal_alert_and_a_success_resolves_it(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    certs_pebble: PebbleServer,
) -> None:
    host = f"app.{domain()}"
    certs = certs_env(
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path / "certs",
        pebble=certs_pebble,
        extra={"HP_RETRY_MIN_S": "3", "HP_RETRY_MAX_S": "4"},
    )
    (tmp_path / "certs").mkdir()
    (tmp_path / "notify").mkdir()
    notes = notify_env(dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path / "notify")
    async with (
        running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as ident,
        relaying(dsn, nats_url, uniq),
        running_notify(monkeypatch, notes),
        running_certs(monkeypatch, certs) as c,
    ):
        admin = Context(actor=await ident.set_up(), admin=True)

        async def alert(state: bool) -> bool:
            got = await ident.bus.query("notify", "alerts", {}, ctx=admin)
            return any(
                a["key"] == f"cert-failed:{host}" and a["open"] is state for a in got["items"]
            )

        # nobody serves the tokens: Pebble cannot validate, the order fails
        first = await c.cmd("ensure", {"names": [host]})
        assert (await c.wait_task(first["task_id"]))["type"] == "TaskFailed"
        await wait_until(lambda: alert(True), 15, "the renewal-failure alert")
        items = (await ident.bus.query("notify", "notifications", {}, ctx=admin))["items"]
        opened = next(i for i in items if i["kind"] == "opened")
        assert opened["title"] == f"The certificate for {host} could not be renewed"
        assert opened["category"] == "certificates" and "unreachable" in opened["detail"]

        # the tokens are served again: the service's own retry succeeds, the alert resolves
        async with serving_tokens(c.acme_dir, certs_pebble.http_port):
            await wait_until(lambda: alert(False), 60, "the alert to resolve after a success")
        items = (await ident.bus.query("notify", "notifications", {}, ctx=admin))["items"]
        assert [i["kind"] for i in items if host in i["title"]] == ["resolved", "opened"]
