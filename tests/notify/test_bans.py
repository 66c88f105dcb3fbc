"""An address banned (five failed dashboard sign-ins through the real identity; the real
firewall decides the ban, recording only) is a notice in the administrators' centre, once per
ban."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from libs.contracts.errors import BusError
from libs.events.context import Context
from tests.identity.kit import ADMIN, running_identity
from tests.support.bus import relaying
from tests.support.firewall import firewall_env, running_firewall
from tests.support.notify import notify_env, running_notify
from tests.support.waits import wait_until

ATTACKER = "203.0.113.9"


async def test_a_ban_is_one_notice(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path
) -> None:
    (tmp_path / "notify").mkdir()
    notes = notify_env(
        dsn=dsn,
        nats_url=nats_url,
        uniq=uniq,
        tmp_path=tmp_path / "notify",
        extra={
            "HP_NOTIFY_BANS_SECONDS": "0.5",
            "HP_NOTIFY_MEMORY_AVAILABLE": "0.001",
            "HP_IP_KEYS": str(tmp_path / "ip-keys.json"),  # identity's: the week's key seals
        },
    )
    # HP_DATA_DIR is identity's too: the firewall reads its address keys
    fw = firewall_env(dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path)
    async with (
        running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as ident,
        relaying(dsn, nats_url, uniq),
        running_firewall(monkeypatch, fw),
        running_notify(monkeypatch, notes),
    ):
        admin = Context(actor=await ident.set_up(), admin=True)
        for _ in range(5):
            with pytest.raises(BusError):
                await ident.login(ADMIN["username"], "not the password", ip=ATTACKER)

        async def notices() -> list[dict[str, object]]:
            got = await ident.bus.query("notify", "notifications", {}, ctx=admin)
            return [n for n in got["items"] if n["kind"] == "notice"]

        async def told() -> bool:  # delivered: the address read back into its words
            return any(ATTACKER in str(n["title"]) for n in await notices())

        await wait_until(told, 20, "the ban's notice")
        [notice] = await notices()
        assert str(notice["title"]).startswith(f"Address {ATTACKER} banned until ")
        assert notice["category"] == "security" and "unblock it on the Firewall page" in str(
            notice["detail"]
        )
        await asyncio.sleep(1.5)  # three more looks at the firewall's bans: still one notice
        assert len(await notices()) == 1
        # the address is in no notify event in clear, nor in its stream's name
        rows = await ident.bus.query("notify", "alerts", {}, ctx=admin)  # still answering
        assert rows is not None
        import asyncpg

        conn = await asyncpg.connect(dsn)
        try:
            logged = await conn.fetch(
                "SELECT stream, data::text AS d, meta->>'ip' AS ip FROM events.events"
                " WHERE type IN ('NoticePosted', 'NotificationDelivered')"
            )
        finally:
            await conn.close()
        assert logged and all(ATTACKER not in r["d"] + r["stream"] for r in logged)
        assert all(r["ip"] is None or r["ip"].startswith("hp:sealed:") for r in logged)
