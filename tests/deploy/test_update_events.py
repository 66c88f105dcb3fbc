"""`homeport update` in the activity log: the events it appends to the real event store for an
update, a roll-back, a refusal; an unreachable store never fails an update; `--scheduled` does
nothing until the dashboard's setting is on; the nightly timer and the unit it starts."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cli.main import main
from deploy.layout import Layout
from deploy.release import fetch_release, public_key_text
from deploy.units import UPDATE_UNITS, write_units
from deploy.update import UpdateError, Updater, switch_link
from deploy.update_events import EventLog, recorded_update
from libs.events.store import PostgresEventStore
from services.apps import platform_events as pev
from tests.deploy.updatekit import ProcessHost, publish
from tests.deploy.updatekit import spoil as spoil_release


def _release(tmp_path: Path, www: Path, key: Ed25519PrivateKey, version: str, *extra: str) -> None:
    publish(tmp_path, www, key, version, *extra)


@pytest.fixture
def installed(
    tmp_path: Path, key: Ed25519PrivateKey, www: tuple[Path, str], bare_venv: Path, dsn: str
) -> Iterator[tuple[Layout, ProcessHost]]:
    """1.0.0 installed and running; homeport.env names this test's event store."""
    layout = Layout(tmp_path / "root")
    layout.etc.mkdir(parents=True)
    layout.release_key.write_text(public_key_text(key))
    layout.release_url_file.write_text(www[1] + "\n")
    layout.env_file.write_text(f"HP_DATABASE_URL='{dsn}'\n")
    _release(tmp_path, www[0], key, "1.0.0")
    first = fetch_release(www[1], key.public_key(), "0.0.0", layout.opt)
    (first.path / "venv").symlink_to(bare_venv)
    switch_link(layout.current, "1.0.0")
    asyncio.run(_store_ready(dsn))
    host = ProcessHost(layout, services=1)
    host.restart_all()
    assert host.healthy(10) == []
    try:
        yield layout, host
    finally:
        host.stop()


async def _store_ready(dsn: str) -> None:
    store = await PostgresEventStore.open(dsn, max_size=1)  # the schema, as the installer's
    await store.close()


async def _events(dsn: str, stream: str = pev.UPDATES_STREAM) -> list[tuple[str, str]]:
    store = await PostgresEventStore.open(dsn, max_size=1)
    try:
        return [(e.type, e.meta["summary"]) for e in await store.read_stream(stream)]
    finally:
        await store.close()


def _recorded(dsn: str) -> list[tuple[str, str]]:
    return asyncio.run(_events(dsn))


def _updater(layout: Layout, host: ProcessHost, venv: Path) -> Updater:
    return Updater(layout, host, venv_from=venv, progress=lambda _: None, health_timeout=5)


def _log(layout: Layout, warnings: list[str]) -> EventLog:
    return EventLog.from_env_file(layout.env_file, warnings.append)


def test_an_update_is_recorded_as_started_then_updated(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    www: tuple[Path, str],
    installed: tuple[Layout, ProcessHost],
    bare_venv: Path,
    dsn: str,
) -> None:
    layout, host = installed
    _release(tmp_path, www[0], key, "1.1.0")
    warnings: list[str] = []

    outcome = recorded_update(_updater(layout, host, bare_venv), _log(layout, warnings))

    assert outcome is not None and not outcome.rolled_back and warnings == []
    (t1, s1), (t2, s2) = _recorded(dsn)
    assert (t1, s1) == ("PlatformUpdateStarted", "platform update from 1.0.0 to 1.1.0 started")
    assert t2 == "PlatformUpdated"
    assert re.fullmatch(r"platform updated from 1\.0\.0 to 1\.1\.0 in \d+ s", s2), s2
    # nothing newer now: no event, no refusal
    assert recorded_update(_updater(layout, host, bare_venv), _log(layout, warnings)) is None
    assert len(_recorded(dsn)) == 2


@pytest.mark.parametrize(
    ("extra", "step", "why"),
    [
        ("BROKEN", "health", "unhealthy: service on port"),
        ("MIGRATION_FAILS", "migrate", "migration 0002 failed: column exists"),
    ],
)
def test_a_failed_update_is_recorded_as_rolled_back_naming_the_step(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    www: tuple[Path, str],
    installed: tuple[Layout, ProcessHost],
    bare_venv: Path,
    dsn: str,
    extra: str,
    step: str,
    why: str,
) -> None:
    layout, host = installed
    _release(tmp_path, www[0], key, "1.1.0", extra)
    log = _log(layout, [])
    if step == "migrate":
        with pytest.raises(UpdateError, match="failed at migrate"):
            recorded_update(_updater(layout, host, bare_venv), log)
    else:
        outcome = recorded_update(_updater(layout, host, bare_venv), log)
        assert outcome is not None and outcome.rolled_back

    assert layout.version_of(layout.current) == "1.0.0" and host.healthy(5) == []
    types = [t for t, _ in _recorded(dsn)]
    assert types == ["PlatformUpdateStarted", "PlatformUpdateRolledBack"]
    summary = _recorded(dsn)[1][1]
    assert summary.startswith(
        f"platform update to 1.1.0 failed at {step} and was rolled back: 1.0.0 is running ("
    ), summary
    assert why in summary


@pytest.mark.parametrize(
    ("spoil", "why"),
    [
        ("unsigned", "the release is unsigned"),
        ("altered", "archive sha256 differs"),
        ("resigned", "does not match the pinned key"),
        ("older", "version 0.9.0 is older than the running 1.0.0: refused"),
    ],
)
def test_a_refused_release_is_recorded_as_refused(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    www: tuple[Path, str],
    installed: tuple[Layout, ProcessHost],
    bare_venv: Path,
    dsn: str,
    spoil: str,
    why: str,
) -> None:
    layout, host = installed
    version = "0.9.0" if spoil == "older" else "1.1.0"
    signer = Ed25519PrivateKey.generate() if spoil == "resigned" else key
    _release(tmp_path, www[0], signer, version)
    spoil_release(www[0], version, spoil)

    with pytest.raises(UpdateError, match=why):
        recorded_update(_updater(layout, host, bare_venv), _log(layout, []))

    events = _recorded(dsn)
    if spoil == "altered":  # the signed manifest is fine: started, then the archive refused
        assert events[0][0] == "PlatformUpdateStarted"
        events = events[1:]
    [(kind, summary)] = events
    assert kind == "PlatformUpdateRefused" and summary.startswith("platform update refused: ")
    assert why in summary
    assert layout.version_of(layout.current) == "1.0.0" and host.healthy(5) == []


def test_an_unreachable_event_store_warns_and_the_update_goes_on(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    www: tuple[Path, str],
    installed: tuple[Layout, ProcessHost],
    bare_venv: Path,
) -> None:
    layout, host = installed
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    layout.env_file.write_text(f"HP_DATABASE_URL=postgresql://nobody@127.0.0.1:{port}/none\n")
    _release(tmp_path, www[0], key, "1.1.0")
    warnings: list[str] = []

    outcome = recorded_update(_updater(layout, host, bare_venv), _log(layout, warnings))

    assert outcome is not None and not outcome.rolled_back
    assert layout.version_of(layout.current) == "1.1.0"
    assert len(warnings) == 2, warnings  # started, updated
    assert all(w.startswith("the activity log could not be written") for w in warnings)


async def _set_nightly(dsn: str, enabled: bool) -> None:
    store = await PostgresEventStore.open(dsn, max_size=1)
    try:
        await store.append(pev.SETTINGS_STREAM, [pev.PlatformAutoUpdateSet(enabled=enabled)])
    finally:
        await store.close()


def test_scheduled_does_nothing_until_the_setting_is_on(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    www: tuple[Path, str],
    installed: tuple[Layout, ProcessHost],
    dsn: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    layout, _ = installed
    _release(tmp_path, www[0], key, "1.1.0")
    argv = ["update", "--scheduled", "--prefix", str(layout.prefix)]

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out == "nightly platform updates are off (turn them on in the dashboard): nothing done\n"
    assert layout.version_of(layout.current) == "1.0.0" and _recorded(dsn) == []

    asyncio.run(_set_nightly(dsn, True))
    (www[0] / "homeport-1.1.0.json.sig").unlink()  # on: it goes on, and refuses this one
    assert main(argv) == 1
    assert "the release is unsigned" in capsys.readouterr().err
    assert [t for t, _ in _recorded(dsn)] == ["PlatformUpdateRefused"]

    asyncio.run(_set_nightly(dsn, False))
    assert main(argv) == 0
    assert "nothing done" in capsys.readouterr().out

    layout.env_file.write_text("HP_LOG_LEVEL=info\n")  # no store: the setting is unknown
    assert main(argv) == 1
    assert "nothing was updated" in capsys.readouterr().err


ANALYZE = shutil.which("systemd-analyze")


def _directives(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#")


def test_the_nightly_timer_starts_the_scheduled_update_as_root(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "root")
    (layout.current / "venv" / "bin").mkdir(parents=True)
    (layout.current / "venv" / "bin" / "python").symlink_to(sys.executable)
    unit_dir = tmp_path / "units"
    write_units(layout, unit_dir)
    service, timer = (unit_dir / name for name in UPDATE_UNITS)

    svc: dict[str, Any] = _directives(service.read_text())
    assert (svc["Type"], svc["User"]) == ("oneshot", "root")
    assert svc["ExecStart"] == (
        f"{layout.current}/venv/bin/python -m cli.main update --scheduled --prefix {layout.prefix}"
    )
    assert svc["ReadWritePaths"] == str(layout.opt) and svc["ProtectSystem"] == "strict"
    assert "PartOf" not in svc  # restarting the platform does not stop the update
    t = _directives(timer.read_text())
    assert t["OnCalendar"] == "*-*-* 02:00:00" and t["RandomizedDelaySec"] == "3h"
    assert t["Persistent"] == "true" and t["Unit"] == "homeport-update.service"
    assert t["WantedBy"] == "timers.target"
    if ANALYZE is None:
        pytest.fail("systemd-analyze missing: run deploy/install-system-deps.sh")
    for f in (service, timer):
        r = subprocess.run([ANALYZE, "verify", str(f)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and r.stderr.strip() == "", f"{f.name}: {r.stderr}"
    r = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--no-pager", str(service)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout)
    assert m, r.stdout[-300:]
    print("homeport-update.service exposure:", m.group(1))
    assert float(m.group(1)) <= 2.5  # 2.3: root, writes /opt/homeport, any address
