"""The first-run setup needs the one-time token identity wrote to its data directory: without
it, or with a wrong one, nobody becomes the administrator; it works once; only its hash is
stored, never in an event."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from libs.events.bus import Conflict, Forbidden, Invalid
from tests.identity.kit import ADMIN, Identity, running_identity


@pytest.fixture
async def ident(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path
) -> AsyncIterator[Identity]:
    async with running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as i:
        yield i


async def test_setup_needs_the_token_and_it_works_once(
    ident: Identity, dsn: str, tmp_path: Path
) -> None:
    path = tmp_path / "setup-token"
    token = ident.setup_token
    assert len(token) >= 43
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    with pytest.raises(Invalid) as missing:
        await ident.cmd("setup", dict(ADMIN))
    assert missing.value.field == "setup_token"
    for wrong in ("", "x", token[:-1], token + "x", token.upper()):
        with pytest.raises(Forbidden) as refused:
            await ident.cmd("setup", {**ADMIN, "setup_token": wrong})
        assert refused.value.field == "setup_token"
        assert "setup token" in refused.value.message
    assert await ident.ask("setup_state", {}) == {"setup_done": False}
    assert (await ident.ask("users", {}))["items"] == []

    reply = await ident.cmd("setup", {**ADMIN, "setup_token": token})
    profile = await ident.ask("profile", {"user_id": reply["user_id"]})
    assert profile["is_admin"] is True and profile["username"] == "root"
    assert not path.exists()  # it opens nothing any more

    with pytest.raises(Conflict):
        await ident.cmd(
            "setup", {**ADMIN, "username": "other", "email": "o@x.test", "setup_token": token}
        )
    assert len((await ident.ask("users", {}))["items"]) == 1

    conn = await asyncpg.connect(dsn)
    try:
        events = await conn.fetch("SELECT data::text, meta::text FROM events.events")
        platform = await conn.fetch("SELECT key, value::text FROM identity.platform")
    finally:
        await conn.close()
    assert all(token not in r["data"] and token not in r["meta"] for r in events)
    assert [r["key"] for r in platform] == ["setup"]  # the token's hash is gone too


async def test_the_start_says_where_the_token_is_never_the_token(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On a server the journal has more readers than root: the log names the file only."""
    with caplog.at_level(logging.DEBUG):
        async with running_identity(
            monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path
        ) as ident:
            token = ident.setup_token
    told = [r.getMessage() for r in caplog.records if "setup is not done" in r.getMessage()]
    assert told and all(str(tmp_path / "setup-token") in m for m in told)
    assert not [r for r in caplog.records if token in r.getMessage()]
    assert token not in caplog.text


async def test_a_restart_before_setup_keeps_the_printed_token(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path
) -> None:
    async with running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as a:
        first = a.setup_token
    conn = await asyncpg.connect(dsn)
    try:
        stored = json.loads(
            await conn.fetchval(
                "SELECT value::text FROM identity.platform WHERE key = $1", "setup_token"
            )
        )
    finally:
        await conn.close()
    assert first not in json.dumps(stored)  # a hash, not the token
    async with running_identity(monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path) as b:
        assert b.setup_token == first
        await b.set_up()
