"""Signed checkpoints of the event chain (libs/events/checkpoints.py) against a database-level
attacker, on a real Postgres: an old event rewritten and every later chain hash recomputed
passes the unkeyed chain check, but not the checkpoints kept outside the database."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from libs.events.checkpoints import (
    CheckpointLog,
    load_or_create_key,
    public_key_of,
    take_checkpoint,
    verify_checkpoints,
)
from libs.events.envelope import NewEvent
from libs.events.store import GENESIS_HASH, PostgresEventStore

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)


async def _write(store: PostgresEventStore, n: int, start: int) -> None:
    for i in range(start, start + n):
        await store.append(f"thing-{i % 3}", [NewEvent("ThingHappened", {"i": i})])


async def _rewrite_history(dsn: str, position: int) -> None:
    """What a database-level attacker does: change one event, recompute every chain hash from
    there, move the head along: the chain is consistent again."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute(
                "UPDATE events.events SET data = '{\"i\": -1}' WHERE position = $1", position
            )
            rows = await conn.fetch(
                "SELECT position, events.canonical(position, id, stream, version, type, schema,"
                " data, meta) AS body FROM events.events ORDER BY position"
            )
            prev = GENESIS_HASH
            for r in rows:
                prev = hashlib.sha256(prev + r["body"]).digest()
                await conn.execute(
                    "UPDATE events.events SET hash = $2 WHERE position = $1", r["position"], prev
                )
            await conn.execute("UPDATE events.head SET hash = $1", prev)
    finally:
        await conn.close()


async def test_a_rewritten_history_passes_the_chain_but_not_the_checkpoints(
    store: PostgresEventStore, dsn: str, tmp_path: Path
) -> None:
    key = load_or_create_key(tmp_path / "audit" / "checkpoint.key")
    log = CheckpointLog(tmp_path / "audit" / "checkpoints.jsonl")
    pub = public_key_of(key)
    assert await take_checkpoint(store, log, key, now=T0) is None  # an empty store: nothing
    await _write(store, 10, 0)
    first = await take_checkpoint(store, log, key, now=T0)
    assert first is not None and first.position == 10
    assert await take_checkpoint(store, log, key, now=T0 + timedelta(minutes=10)) is None  # same
    await _write(store, 10, 10)
    second = await take_checkpoint(store, log, key, now=T0 + timedelta(minutes=20))
    assert second is not None and second.position == 20
    assert await verify_checkpoints(store, log, pub) == (2, [])

    await _rewrite_history(dsn, 4)
    assert (await store.verify_chain()).ok  # the unkeyed chain sees nothing
    matched, problems = await verify_checkpoints(store, log, pub)
    assert matched == 0
    assert [(p.line, p.position) for p in problems] == [(1, 10), (2, 20)]
    assert "differs from the one of 2026-12-05T12:00:00+00:00" in problems[0].detail


async def test_a_forged_or_edited_checkpoint_line_is_not_trusted(
    store: PostgresEventStore, tmp_path: Path
) -> None:
    key = load_or_create_key(tmp_path / "checkpoint.key")
    log = CheckpointLog(tmp_path / "checkpoints.jsonl")
    await _write(store, 5, 0)
    assert await take_checkpoint(store, log, key, now=T0) is not None
    lines = log.path.read_text().splitlines()
    edited = json.loads(lines[0])
    edited["position"] = 3  # the attacker points the checkpoint at another event
    other = load_or_create_key(tmp_path / "other.key")  # ... or signs with a key of its own
    forged = CheckpointLog(tmp_path / "forged.jsonl")
    await _write(store, 1, 5)
    await take_checkpoint(store, forged, other, now=T0)
    log.path.write_text(
        "\n".join([lines[0], json.dumps(edited), forged.path.read_text().strip(), "{not json"])
        + "\n"
    )
    matched, problems = await verify_checkpoints(store, log, public_key_of(key))
    assert matched == 1
    assert [(p.line, p.detail) for p in problems][:2] == [
        (2, "signature does not verify"),
        (3, "signature does not verify"),
    ]
    assert problems[2].line == 4 and problems[2].detail.startswith("not a checkpoint line")


def test_the_key_is_made_once_private_and_never_read_through_a_link(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "checkpoint.key"
    key = load_or_create_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert public_key_of(load_or_create_key(path)) == public_key_of(key)  # the same key again
    assert (tmp_path / "audit" / "checkpoint.key.pub").read_text().strip() == public_key_of(key)
    link = tmp_path / "link.key"
    link.symlink_to(path)
    with pytest.raises(OSError):
        load_or_create_key(link)


async def test_homeport_audit_checkpoint_then_verify_names_the_first_broken_checkpoint(
    store: PostgresEventStore, dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The commands: `homeport audit checkpoint` signs the head into <data>/backup/audit (where
    the backup service keeps them); `homeport
    audit verify` checks the chain and then the checkpoints, and after a rewrite by a database
    -level attacker exits 1 naming the first checkpoint that no longer matches."""
    from cli.main import main

    data = ["--dsn", dsn, "--data-dir", str(tmp_path)]
    await _write(store, 6, 0)
    assert await asyncio.to_thread(main, ["audit", "checkpoint", *data]) == 0
    await _write(store, 6, 6)
    assert await asyncio.to_thread(main, ["audit", "checkpoint", *data]) == 0
    assert await asyncio.to_thread(main, ["audit", "checkpoint", *data]) == 0  # nothing new
    out = capsys.readouterr().out
    assert "checkpoint of position 6 signed" in out and "checkpoint of position 12 signed" in out
    assert "has not moved since the last checkpoint" in out
    assert (tmp_path / "backup" / "audit" / "checkpoint.key").stat().st_mode & 0o777 == 0o600
    assert await asyncio.to_thread(main, ["audit", "verify", *data]) == 0
    assert "all 2 signed checkpoints match" in capsys.readouterr().out

    await _rewrite_history(dsn, 2)
    assert await asyncio.to_thread(main, ["audit", "verify", *data]) == 1
    out = capsys.readouterr().out
    assert "event chain intact: 12 events checked" in out  # the rewrite fooled the chain
    log = tmp_path / "backup" / "audit" / "checkpoints.jsonl"
    assert f"the first that does not: line 1 of {log} (position 6)" in out, out


async def test_on_a_server_install_the_commands_use_its_database_and_data_dir(
    store: PostgresEventStore, dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--prefix` (default /): a homeport.env there names the database; the checkpoints are the
    backup service's, under the install's data dir."""
    from cli.main import main
    from deploy.layout import Layout

    layout = Layout(tmp_path / "root")
    layout.etc.mkdir(parents=True)
    layout.env_file.write_text(f"HP_DATABASE_URL={dsn}\n")
    await _write(store, 3, 0)
    prefix = ["--prefix", str(layout.prefix)]
    assert await asyncio.to_thread(main, ["audit", "checkpoint", *prefix]) == 0
    assert (layout.data / "backup" / "audit" / "checkpoints.jsonl").is_file()
    assert await asyncio.to_thread(main, ["audit", "verify", *prefix]) == 0
    assert "all 1 signed checkpoints match" in capsys.readouterr().out
    layout.env_file.write_text("# nothing\n")
    assert await asyncio.to_thread(main, ["audit", "verify", *prefix]) != 0
    assert "sets no HP_DATABASE_URL" in capsys.readouterr().err
