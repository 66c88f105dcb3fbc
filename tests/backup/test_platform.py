"""The platform backup folder (services/backup/platform.py) on a real Postgres: what a dump
holds, a load into another database that `homeport audit verify` accepts, and what a load
refuses (a non-empty store, an altered or cut dump, links pointing out)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from cli.main import main as homeport
from deploy.embedded import PostgresServer
from libs.events.envelope import NewEvent
from libs.events.sealing import (
    KEYRING_OWNERS,
    SHARED_OWNERS,
    Keyring,
    UnknownKey,
    keyring_file,
)
from libs.events.store import PostgresEventStore
from services.backup.platform import (
    EVENTS,
    PlatformError,
    dump_platform,
    load_platform,
)


@pytest.fixture
async def dsn2(pg_server: PostgresServer) -> AsyncIterator[str]:
    """A second fresh database: the new machine's."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield pg_server.dsn_for(name)
    admin = await asyncpg.connect(pg_server.dsn)
    try:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _fill(store: PostgresEventStore) -> None:
    for i in range(25):
        await store.append(f"thing-{i % 4}", [NewEvent("ThingHappened", {"i": i, "name": "ünï"})])
    # Values whose jsonb text is not what json.dumps would make of them: 1.50 keeps its
    # scale, a big number keeps its digits. The chain hashes the jsonb text.
    await store.pool.execute(
        "SELECT * FROM events.append('odd-1', NULL, ARRAY[$1::uuid], ARRAY['Odd'], ARRAY[1],"
        ' ARRAY[\'{"n": 1.50, "big": 123456789012345678901234567890.000, "s": "\\u00e9"}\''
        '::jsonb], ARRAY[\'{"actor": "system"}\'::jsonb])',
        str(uuid.uuid4()),
    )


def _platform_files(tmp_path: Path) -> tuple[Path, Path]:
    """Each service's keyring in old/keyring/ (the backup service's returned), the certificates."""
    folder = tmp_path / "old" / "keyring"
    for owner in KEYRING_OWNERS:
        with Keyring.open(keyring_file(folder, owner)) as k:
            k.seal_for(f"{owner}-subject", "x")
    keyring = keyring_file(folder, "backup")
    certs = tmp_path / "old" / "certs"
    real = certs / ".example.test.abc"
    real.mkdir(parents=True)
    (real / "fullchain.pem").write_text("-----BEGIN CERTIFICATE-----\nx\n")
    (real / "privkey.pem").write_text("-----BEGIN PRIVATE KEY-----\ny\n")
    (real / "privkey.pem").chmod(0o600)
    (certs / "example.test").symlink_to(".example.test.abc")
    (tmp_path / "secret").write_text("host secret")
    (certs / "evil").symlink_to(tmp_path / "secret")
    (certs / "evil2").symlink_to("../../secret")
    return keyring, certs


async def _dump(dsn: str, tmp_path: Path, out: Path) -> tuple[Path, Path]:
    keyring, certs = _platform_files(tmp_path)
    conn = await asyncpg.connect(dsn)
    try:
        await dump_platform(
            conn,
            keyring=keyring,
            certs_dir=certs,
            out_dir=out,
            apps={"app-b": "20261205063312-00000000000000bb", "app-a": "x"},
            platform_version="0.1.0",
        )
    finally:
        await conn.close()
    return keyring, certs


async def _rows(dsn: str) -> list[tuple[object, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT position, id, stream, version, type, schema, data::text, meta::text,"
            " recorded_at, hash FROM events.events ORDER BY position"
        )
        head = await conn.fetchrow("SELECT position, hash FROM events.head")
        streams = await conn.fetch("SELECT stream, version FROM events.streams ORDER BY stream")
    finally:
        await conn.close()
    return [tuple(r) for r in rows] + [tuple(head or ())] + [tuple(s) for s in streams]


async def test_a_dump_loads_into_an_empty_store_byte_exact(
    dsn: str, dsn2: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with await PostgresEventStore.open(dsn) as store:
        await _fill(store)
    out = tmp_path / "dump"
    keyring, _ = await _dump(dsn, tmp_path, out)

    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert sorted(p.name for p in (out / "keyring").iterdir()) == sorted(
        f"{o}.json" for o in KEYRING_OWNERS
    )
    for owner in KEYRING_OWNERS:  # every service's keys, each its own file
        saved = out / "keyring" / f"{owner}.json"  # a backup's own layout
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        assert saved.read_bytes() == keyring_file(keyring.parent.parent, owner).read_bytes()
    assert not (out / "keyring.json").exists()
    doc = json.loads((out / "platform.json").read_text())
    assert doc["format"] == "homeport-platform" and doc["platform_version"] == "0.1.0"
    assert doc["apps"] == {"app-a": "x", "app-b": "20261205063312-00000000000000bb"}
    assert doc["events"]["count"] == 26
    lines = (out / EVENTS).read_text().splitlines()
    assert len(lines) == 26 + 2
    # the certs folder: files and the link inside it kept; links pointing out left out
    assert (out / "certs" / "example.test" / "privkey.pem").read_text().endswith("y\n")
    assert os.readlink(out / "certs" / "example.test") == ".example.test.abc"
    assert not os.path.lexists(out / "certs" / "evil")
    assert not os.path.lexists(out / "certs" / "evil2")

    new = tmp_path / "new"
    conn = await asyncpg.connect(dsn2)
    try:
        loaded = await load_platform(out, conn, keyrings=new / "keyring", certs_dir=new / "certs")
    finally:
        await conn.close()
    assert loaded["loaded_events"] == 26 and loaded["head_position"] == 26
    assert loaded["apps"]["app-b"] == "20261205063312-00000000000000bb"
    assert await _rows(dsn2) == await _rows(dsn)
    for owner in KEYRING_OWNERS:
        put = keyring_file(new / "keyring", owner)
        assert put.read_bytes() == keyring_file(keyring.parent.parent, owner).read_bytes()
        assert stat.S_IMODE(put.stat().st_mode) == 0o600
    assert sorted(p.name for p in (new / "keyring").iterdir()) == sorted(KEYRING_OWNERS)
    assert (new / "certs" / "example.test" / "fullchain.pem").is_file()
    assert stat.S_IMODE((new / "certs" / ".example.test.abc" / "privkey.pem").stat().st_mode) == (
        0o600
    )
    # what the administrator runs afterwards
    capsys.readouterr()
    assert await asyncio.to_thread(homeport, ["audit", "verify", "--dsn", dsn2]) == 0
    assert "event chain intact: 26 events checked" in capsys.readouterr().out
    # and the store goes on: the next append chains onto the loaded head
    async with await PostgresEventStore.open(dsn2) as store:
        await store.append("thing-0", [NewEvent("ThingHappened", {"i": 99})])
        report = await store.verify_chain()
        assert report.ok and report.checked == 27
        assert await store.stream_version("thing-0") == 8


async def test_a_load_refuses_a_store_that_is_not_empty(dsn: str, tmp_path: Path) -> None:
    async with await PostgresEventStore.open(dsn) as store:
        await _fill(store)
    out = tmp_path / "dump"
    await _dump(dsn, tmp_path, out)
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(PlatformError, match=r"event store in database .* is not empty"):
            await load_platform(out, conn, keyrings=tmp_path / "k", certs_dir=tmp_path / "c")
    finally:
        await conn.close()
    assert not (tmp_path / "k").exists() and not (tmp_path / "c").exists()


async def _load_refused(out: Path, dsn2: str, tmp_path: Path, match: str) -> None:
    conn = await asyncpg.connect(dsn2)
    try:
        with pytest.raises(PlatformError, match=match):
            await load_platform(out, conn, keyrings=tmp_path / "k", certs_dir=tmp_path / "c")
        assert await conn.fetchval("SELECT count(*) FROM events.events") == 0
        assert await conn.fetchval("SELECT position FROM events.head") == 0
        assert await conn.fetchval("SELECT count(*) FROM events.streams") == 0
    finally:
        await conn.close()
    assert not (tmp_path / "k").exists() and not (tmp_path / "c").exists()


async def test_an_altered_event_loads_nothing(dsn: str, dsn2: str, tmp_path: Path) -> None:
    async with await PostgresEventStore.open(dsn) as store:
        await _fill(store)
    out = tmp_path / "dump"
    await _dump(dsn, tmp_path, out)
    path = out / EVENTS
    lines = path.read_text().splitlines(keepends=True)
    row = json.loads(lines[7])
    row["data"] = row["data"].replace('"i": 6', '"i": 666')
    lines[7] = json.dumps(row) + "\n"
    path.write_text("".join(lines))
    await _load_refused(out, dsn2, tmp_path, "position 7 does not match its chain hash")


async def test_a_cut_dump_loads_nothing(dsn: str, dsn2: str, tmp_path: Path) -> None:
    async with await PostgresEventStore.open(dsn) as store:
        await _fill(store)
    out = tmp_path / "dump"
    await _dump(dsn, tmp_path, out)
    path = out / EVENTS
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-3]))  # the last two events and the trailer gone
    await _load_refused(out, dsn2, tmp_path, "cut or altered")
    path.write_text("".join(lines[:-3]) + lines[-3][:20])  # a line cut in the middle
    await _load_refused(out, dsn2, tmp_path, "a line is cut")
    path.write_text("".join(lines[:5] + lines[6:]))  # one event left out
    await _load_refused(out, dsn2, tmp_path, "position 6 follows 4")


async def test_a_load_refuses_a_different_keyring_already_there(
    dsn: str, dsn2: str, tmp_path: Path
) -> None:
    async with await PostgresEventStore.open(dsn) as store:
        await _fill(store)
    out = tmp_path / "dump"
    await _dump(dsn, tmp_path, out)
    other = keyring_file(tmp_path / "k", "identity")
    Keyring.open(other).close()
    before = other.read_bytes()
    conn = await asyncpg.connect(dsn2)
    try:
        with pytest.raises(PlatformError, match=r"a different keyring is already at .*identity"):
            await load_platform(out, conn, keyrings=tmp_path / "k", certs_dir=tmp_path / "c")
        assert await conn.fetchval("SELECT to_regclass('events.events')") is None
    finally:
        await conn.close()
    assert other.read_bytes() == before
    assert sorted(p.name for p in other.parent.iterdir()) == ["keyring.json", "keyring.json.lock"]
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["identity"]  # nothing else


async def test_an_empty_store_without_certificates_dumps_and_loads(
    dsn: str, dsn2: str, tmp_path: Path
) -> None:
    async with await PostgresEventStore.open(dsn):
        pass  # migrated, no event
    keyring = tmp_path / "keyring.json"
    Keyring.open(keyring).close()
    out = tmp_path / "dump"
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(PlatformError, match="cannot read the keyring"):
            await dump_platform(
                conn,
                keyring=tmp_path / "nope.json",
                certs_dir=tmp_path / "nocerts",
                out_dir=tmp_path / "dump0",
                apps={},
                platform_version="0.1.0",
            )
        await dump_platform(
            conn,
            keyring=keyring,
            certs_dir=tmp_path / "nocerts",
            out_dir=out,
            apps={},
            platform_version="0.1.0",
        )
        with pytest.raises(PlatformError, match="exists already"):
            await dump_platform(
                conn,
                keyring=keyring,
                certs_dir=tmp_path / "nocerts",
                out_dir=out,
                apps={},
                platform_version="0.1.0",
            )
    finally:
        await conn.close()
    conn = await asyncpg.connect(dsn2)
    try:
        loaded = await load_platform(
            out, conn, keyrings=tmp_path / "new" / "k", certs_dir=tmp_path / "new" / "c"
        )
    finally:
        await conn.close()
    assert loaded["loaded_events"] == 0 and loaded["apps"] == {}
    assert (tmp_path / "new" / "c").is_dir() and not any((tmp_path / "new" / "c").iterdir())


async def test_a_dump_carries_the_signed_checkpoints_and_their_public_key_never_the_key(
    dsn: str, tmp_path: Path
) -> None:
    """The checkpoints go to the backup target with every platform backup (a copy off the
    server); the signing key stays in the backup service's folder."""
    from libs.events.checkpoints import CheckpointLog, public_key_of, take_checkpoint
    from libs.events.checkpoints import load_or_create_key as checkpoint_key

    store = await PostgresEventStore.open(dsn, max_size=2)
    try:
        await store.append("thing-1", [NewEvent("ThingHappened", {"i": 1})])
        audit = tmp_path / "backup" / "audit"
        key = checkpoint_key(audit / "checkpoint.key")
        assert await take_checkpoint(
            store, CheckpointLog(audit / "checkpoints.jsonl"), key, now=dt.datetime.now(dt.UTC)
        )
        keyring, certs = _platform_files(tmp_path)
        out = tmp_path / "dump"
        async with store.pool.acquire() as conn:
            await dump_platform(conn, keyring=keyring, certs_dir=certs, out_dir=out, apps={},
                                platform_version="0.1.0", audit_dir=audit)  # fmt: skip
            empty = tmp_path / "dump-none"
            await dump_platform(conn, keyring=keyring, certs_dir=certs, out_dir=empty, apps={},
                                platform_version="0.1.0", audit_dir=tmp_path / "none")  # fmt: skip
    finally:
        await store.close()
    assert sorted(p.name for p in (out / "audit").iterdir()) == [
        "checkpoint.key.pub",
        "checkpoints.jsonl",
    ]
    assert (out / "audit" / "checkpoints.jsonl").read_bytes() == (
        audit / "checkpoints.jsonl"
    ).read_bytes()
    assert (out / "audit" / "checkpoint.key.pub").read_text().strip() == public_key_of(key)
    assert not (empty / "audit").exists()  # none taken yet: nothing, and no error


async def test_an_old_backup_with_one_keyring_gives_it_to_every_service(
    dsn: str, dsn2: str, tmp_path: Path
) -> None:
    """A backup from before each service had its own keyring: its keyring.json becomes each
    service's (as their first start would have made it), old values read by each."""
    async with await PostgresEventStore.open(dsn) as store:
        await _fill(store)
    out = tmp_path / "dump"
    await _dump(dsn, tmp_path, out)
    for p in (out / "keyring").iterdir():
        p.unlink()
    (out / "keyring").rmdir()
    with Keyring.open(out / "keyring.json") as shared:
        value = shared.seal_for("user-1", "alice@example.com")
    conn = await asyncpg.connect(dsn2)
    try:
        loaded = await load_platform(out, conn, keyrings=tmp_path / "k", certs_dir=tmp_path / "c")
    finally:
        await conn.close()
    assert loaded["loaded_events"] == 26
    # the services of that time get it; a newer one (notify) starts with keys of its own
    assert not keyring_file(tmp_path / "k", "notify").exists()
    for owner in SHARED_OWNERS:
        put = keyring_file(tmp_path / "k", owner)
        assert put.read_bytes() == (out / "keyring.json").read_bytes()
        assert stat.S_IMODE(put.stat().st_mode) == 0o600
        with Keyring.open(put) as k:
            assert k.unseal_str(value) == "alice@example.com"
    assert not (tmp_path / "k" / "keyring.json").exists()


async def test_a_dump_of_an_install_part_way_through_the_split(
    dsn: str, dsn2: str, tmp_path: Path
) -> None:
    """Services that have not started since the update have no keyring of their own yet: the
    shared one they would copy is backed up as theirs; the others' own files as they are."""
    async with await PostgresEventStore.open(dsn):
        pass
    data = tmp_path / "data"
    with Keyring.open(data / "keyring.json") as shared:  # an embedded data dir from before
        old = shared.seal_for("user-1", "alice@example.com")
    with Keyring.open(keyring_file(data / "keyring", "identity")) as identity:
        new = identity.seal_for("user-2", "bob@example.com")
    with Keyring.open(keyring_file(data / "keyring", "backup")) as backup:
        pass
    out = tmp_path / "dump"
    conn = await asyncpg.connect(dsn)
    try:
        await dump_platform(conn, keyring=backup.path, certs_dir=tmp_path / "nocerts",
                            out_dir=out, apps={}, platform_version="0.1.0")  # fmt: skip
    finally:
        await conn.close()
    assert not (out / "keyring" / "notify.json").exists()  # newer than the shared keyring
    for owner in SHARED_OWNERS:
        src = keyring_file(data / "keyring", owner)
        expected = src if owner in ("identity", "backup") else data / "keyring.json"
        assert (out / "keyring" / f"{owner}.json").read_bytes() == expected.read_bytes()
    conn = await asyncpg.connect(dsn2)
    try:
        await load_platform(out, conn, keyrings=tmp_path / "k", certs_dir=tmp_path / "c")
    finally:
        await conn.close()
    with Keyring.open(keyring_file(tmp_path / "k", "apps")) as apps:
        assert apps.unseal_str(old) == "alice@example.com"
        with pytest.raises(UnknownKey):  # identity's own since the split
            apps.unseal(new)
    with Keyring.open(keyring_file(tmp_path / "k", "identity")) as identity:
        assert identity.unseal_str(new) == "bob@example.com"


@pytest.mark.parametrize("bad", ["stray", "both", "link"])
async def test_a_load_refuses_keyrings_that_are_not_the_services(
    dsn: str, dsn2: str, tmp_path: Path, bad: str
) -> None:
    async with await PostgresEventStore.open(dsn) as store:
        await _fill(store)
    out = tmp_path / "dump"
    await _dump(dsn, tmp_path, out)
    if bad == "stray":
        (out / "keyring" / "gateway.json").write_text("{}")
        match = "keyring/gateway.json is not the keyring of a service"
    elif bad == "both":
        (out / "keyring.json").write_bytes((out / "keyring" / "apps.json").read_bytes())
        match = "both keyring.json and keyring/"
    else:
        (out / "keyring" / "apps.json").unlink()
        (out / "keyring" / "apps.json").symlink_to(tmp_path / "secret")
        match = "cannot read the backed-up keyring"
    conn = await asyncpg.connect(dsn2)
    try:
        with pytest.raises(PlatformError, match=match):  # before anything is written
            await load_platform(out, conn, keyrings=tmp_path / "k", certs_dir=tmp_path / "c")
        assert await conn.fetchval("SELECT to_regclass('events.events')") is None
    finally:
        await conn.close()
    assert not (tmp_path / "k").exists() and not (tmp_path / "c").exists()
