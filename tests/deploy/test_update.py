"""`homeport update`: install a signed release beside the running one, migrate, switch, check
health with real processes, and switch back by itself when the new version is unhealthy."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cli.main import main
from deploy.layout import Layout
from deploy.release import fetch_release, public_key_text
from deploy.update import Outcome, UpdateError, Updater, switch_link
from libs.events.roles import MIGRATOR
from tests.deploy.updatekit import ProcessHost, publish
from tests.deploy.updatekit import spoil as spoil_release

REPO = Path(__file__).resolve().parents[2]


def _release(tmp_path: Path, www: Path, key: Ed25519PrivateKey, version: str, *extra: str) -> None:
    publish(tmp_path, www, key, version, *extra)


@pytest.fixture
def installed(
    tmp_path: Path, key: Ed25519PrivateKey, www: tuple[Path, str], bare_venv: Path
) -> Iterator[tuple[Layout, ProcessHost]]:
    """Release 1.0.0 installed and running under `tmp_path`, with data of its own."""
    layout = Layout(tmp_path / "root")
    layout.etc.mkdir(parents=True)
    layout.data.mkdir(parents=True)
    layout.release_key.write_text(public_key_text(key))
    layout.release_url_file.write_text(www[1] + "\n")
    layout.env_file.write_text(f"# settings\nHP_DATA_DIR='{layout.data}'\n")
    (layout.data / "notes.txt").write_text("written by 1.0.0\n")
    _release(tmp_path, www[0], key, "1.0.0")
    first = fetch_release(www[1], key.public_key(), "0.0.0", layout.opt)
    (first.path / "venv").symlink_to(bare_venv)
    switch_link(layout.current, "1.0.0")
    host = ProcessHost(layout)
    host.restart_all()
    assert host.healthy(10) == []
    try:
        yield layout, host
    finally:
        host.stop()


def _installed(layout: Layout) -> list[str]:
    """What is in /opt/homeport besides the update lock."""
    return sorted(p.name for p in layout.opt.iterdir() if p.name != ".update.lock")


def _updater(layout: Layout, host: ProcessHost, venv: Path, lines: list[str]) -> Updater:
    return Updater(layout, host, venv_from=venv, progress=lines.append, health_timeout=10)


def test_an_update_installs_beside_migrates_switches_and_runs_the_new_version(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    www: tuple[Path, str],
    installed: tuple[Layout, ProcessHost],
    bare_venv: Path,
) -> None:
    layout, host = installed
    _release(tmp_path, www[0], key, "1.1.0")
    lines: list[str] = []

    outcome = _updater(layout, host, bare_venv, lines).update()

    assert outcome == Outcome("1.1.0", "1.0.0")
    assert host.version() == {"1.1.0"}
    assert host.applied == ["1.1.0"]  # the new release's units etc., before its restart
    assert layout.version_of(layout.current) == "1.1.0"
    assert layout.version_of(layout.previous) == "1.0.0"
    assert (layout.opt / "1.0.0" / "serve.py").exists()  # beside, not over
    assert (layout.data / "migrations.log").read_text() == "1.1.0\n"
    assert (layout.data / "notes.txt").read_text() == "written by 1.0.0\n"
    steps = [line.split("]")[1].split()[0] for line in lines if line.startswith("[")]
    assert steps == ["fetch:", "venv:", "migrate:", "switch:", "restart:", "health:", "running"]
    assert any("applied 0002_more" in line for line in lines)


def test_an_unhealthy_release_is_rolled_back_by_itself(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    www: tuple[Path, str],
    installed: tuple[Layout, ProcessHost],
    bare_venv: Path,
) -> None:
    layout, host = installed
    _release(tmp_path, www[0], key, "1.1.0", "BROKEN")
    lines: list[str] = []

    outcome = _updater(layout, host, bare_venv, lines).update()

    assert outcome.rolled_back and outcome.version == "1.1.0"
    assert len(outcome.unhealthy) == 2
    assert host.version() == {"1.0.0"}
    assert host.restarts == 3  # install, the new version, the old one again
    assert host.applied == ["1.1.0", "1.0.0"]  # the old configuration back before its restart
    assert layout.version_of(layout.current) == "1.0.0"
    assert layout.version_of(layout.previous) is None
    assert _installed(layout) == ["1.0.0", "current"]
    assert any(line.startswith("rolling back to 1.0.0") for line in lines)


def test_a_release_whose_configuration_cannot_be_applied_is_rolled_back(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    www: tuple[Path, str],
    installed: tuple[Layout, ProcessHost],
    bare_venv: Path,
) -> None:
    layout, host = installed
    _release(tmp_path, www[0], key, "1.1.0")
    host.refuse = {"1.1.0"}
    lines: list[str] = []

    outcome = _updater(layout, host, bare_venv, lines).update()

    assert outcome.rolled_back and "exited with 1" in outcome.unhealthy[0]
    assert host.applied == ["1.1.0", "1.0.0"] and host.version() == {"1.0.0"}
    assert layout.version_of(layout.current) == "1.0.0"
    assert _installed(layout) == ["1.0.0", "current"]


@pytest.mark.parametrize(
    ("spoil", "why"),
    [
        ("unsigned", "unsigned"),
        ("altered", "archive sha256 differs"),
        ("older", "version 0.9.0 is not newer than 1.0.0"),
    ],
)
def test_a_bad_release_is_refused_and_the_running_version_keeps_running(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    www: tuple[Path, str],
    installed: tuple[Layout, ProcessHost],
    bare_venv: Path,
    spoil: str,
    why: str,
) -> None:
    layout, host = installed
    version = "0.9.0" if spoil == "older" else "1.1.0"
    _release(tmp_path, www[0], key, version)
    spoil_release(www[0], version, spoil)

    with pytest.raises(UpdateError, match=why):
        _updater(layout, host, bare_venv, []).update()

    assert host.version() == {"1.0.0"}
    assert host.restarts == 1
    assert _installed(layout) == ["1.0.0", "current"]


def test_a_failing_migration_stops_the_update_before_the_switch(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    www: tuple[Path, str],
    installed: tuple[Layout, ProcessHost],
    bare_venv: Path,
) -> None:
    layout, host = installed
    _release(tmp_path, www[0], key, "1.1.0", "MIGRATION_FAILS")

    with pytest.raises(UpdateError, match=r"failed at migrate: .*migration 0002 failed"):
        _updater(layout, host, bare_venv, []).update()

    assert layout.version_of(layout.current) == "1.0.0"
    assert host.restarts == 1 and host.version() == {"1.0.0"}
    assert _installed(layout) == ["1.0.0", "current"]


def test_a_second_update_while_one_runs_is_refused_and_changes_nothing(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    www: tuple[Path, str],
    installed: tuple[Layout, ProcessHost],
    bare_venv: Path,
) -> None:
    """Two `homeport update` at once (the nightly timer and an admin): the second one sees the
    first's lock and stops before it downloads or touches anything; once the first is done, an
    update runs again."""
    layout, host = installed
    _release(tmp_path, www[0], key, "1.1.0")
    lines: list[str] = []
    with (layout.opt / ".update.lock").open("a") as first:  # held as a running update holds it
        fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UpdateError, match="another update is running: wait for it"):
            _updater(layout, host, bare_venv, lines).update()
    assert lines == []  # not one step started
    assert layout.version_of(layout.current) == "1.0.0"
    assert host.restarts == 1 and host.version() == {"1.0.0"}
    assert _installed(layout) == ["1.0.0", "current"]

    outcome = _updater(layout, host, bare_venv, []).update()  # the lock is free again
    assert outcome.version == "1.1.0" and not outcome.rolled_back
    assert host.version() == {"1.1.0"}


def test_update_check_prints_the_available_version_and_its_changelog(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    www: tuple[Path, str],
    installed: tuple[Layout, ProcessHost],
    capsys: pytest.CaptureFixture[str],
) -> None:
    layout, _ = installed
    prefix = str(layout.prefix)
    assert main(["update", "--check", "--prefix", prefix]) == 0
    assert "1.0.0 is the newest release" in capsys.readouterr().out
    _release(tmp_path, www[0], key, "1.1.0")
    assert main(["update", "--check", "--prefix", prefix]) == 0
    assert capsys.readouterr().out == "1.1.0 is available (running 1.0.0)\nwhat 1.1.0 brings\n"
    layout.release_key.write_text(public_key_text(Ed25519PrivateKey.generate()))
    assert main(["update", "--check", "--prefix", prefix]) == 1
    assert "does not match the pinned key" in capsys.readouterr().err


async def _migrate(dsn: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "deploy.migrate",
        cwd=REPO,
        env={**os.environ, "HP_DATABASE_URL": dsn},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_the_migrate_step_brings_the_event_store_up_to_date(dsn: str) -> None:
    # The owner's role is the cluster's: another database may have made it (other tests of
    # this Postgres do), while it holds no right in this fresh one. The step must still work.
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f"DO $$ BEGIN CREATE ROLE {MIGRATOR} NOLOGIN;"
            " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )
    finally:
        await conn.close()
    first = await _migrate(dsn)
    assert first.startswith("event store: ") and "applied [1, 2, 3" in first
    assert await _migrate(dsn) == "event store: 0 migration(s) applied []\n"
