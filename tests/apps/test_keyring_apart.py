"""The apps service cannot read identity's keys: in the embedded layout each opens its own
keyring file, `<data>/keyring/<service>/keyring.json`, and a value identity sealed does not
open with the apps service's keyring."""

from __future__ import annotations

import os
from pathlib import Path

import asyncpg
import pytest

from libs.events.sealing import Keyring, UnknownKey, is_sealed, keyring_file
from tests.apps.appskit import EnvFor, running_apps, static_catalog
from tests.identity.kit import ADMIN, running_identity


def _open_files(pid: int) -> set[str]:
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue  # closed meanwhile
    return out


async def test_apps_cannot_read_identitys_keys(
    monkeypatch: pytest.MonkeyPatch,
    apps_env_for: EnvFor,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
) -> None:
    folder = tmp_path / "keyring"  # <data>/keyring/, as the stack lays it out
    identity_env = {"HP_KEYRING": str(keyring_file(folder, "identity"))}
    apps_env = apps_env_for(
        static_catalog(tmp_path / "catalog"),
        letter="y",
        extra={"HP_KEYRING": str(keyring_file(folder, "apps"))},
    )
    async with (
        running_identity(
            monkeypatch, dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, env=identity_env
        ) as ident,
        running_apps(monkeypatch, apps_env),
    ):
        await ident.set_up()
        keyrings = {p for p in _open_files(os.getpid()) if p.startswith(str(folder))}
    # each opened its own file and no other: no shared keyring, none for anyone else
    assert keyrings == {str(keyring_file(folder, "identity")), str(keyring_file(folder, "apps"))}
    assert sorted(str(p.relative_to(folder)) for p in folder.glob("*/*.json")) == [
        "apps/keyring.json",
        "identity/keyring.json",
    ]
    assert not (tmp_path / "keyring.json").exists()

    conn = await asyncpg.connect(dsn)
    try:
        created = await conn.fetchval(
            "SELECT data->>'username' FROM events.events WHERE type = 'UserCreated'"
        )
    finally:
        await conn.close()
    assert is_sealed(created)
    with Keyring.open(keyring_file(folder, "apps")) as apps_keys:
        with pytest.raises(UnknownKey):
            apps_keys.unseal(created)
    with Keyring.open(keyring_file(folder, "identity")) as identity_keys:
        assert identity_keys.unseal_str(created) == ADMIN["username"]
