"""Identity moved from the shared keyring of an older data dir to its own: started with
`<data>/keyring/identity.json` beside the old `<data>/keyring.json`, it reads every user made
before (the username look-up and the password hash still open) and seals new ones in its own
file only."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from libs.events.sealing import Keyring, UnknownKey, keyring_file
from tests.identity.kit import ADMIN, running_identity

ALICE = {"username": "alice", "email": "alice@example.test", "password": "alice's long password"}


async def test_identity_reads_what_it_sealed_with_the_shared_keyring(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path
) -> None:
    shared = tmp_path / "keyring.json"  # what every service was given before
    before = {"HP_KEYRING": str(shared)}
    async with running_identity(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, env=before
    ) as ident:
        root_id = await ident.set_up()

    own = keyring_file(tmp_path / "keyring", "identity")
    after = {"HP_KEYRING": str(own)}
    async with running_identity(
        monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, env=after
    ) as ident:
        assert own.read_bytes() == shared.read_bytes()  # its copy, made at its start
        reply = await ident.login(ADMIN["username"], ADMIN["password"])
        assert reply["user_id"] == root_id
        made = await ident.cmd("create_user", dict(ALICE), actor=root_id)
        assert (await ident.login(ALICE["username"], ALICE["password"]))["user_id"] == (
            made["user_id"]
        )
    assert shared.exists()  # the other services have no copy yet: it stays for them

    conn = await asyncpg.connect(dsn)
    try:
        alice = await conn.fetchval(
            "SELECT data->>'username' FROM events.events"
            " WHERE type = 'UserCreated' AND data->>'user_id' = $1",
            made["user_id"],
        )
    finally:
        await conn.close()
    with Keyring.open(shared) as old, Keyring.open(own) as mine:
        assert mine.unseal_str(alice) == "alice"
        with pytest.raises(UnknownKey):  # sealed after the split: not in the shared file
            old.unseal(alice)
