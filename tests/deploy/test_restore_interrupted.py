"""A server restore cut off at any point between stopping the platform and starting it again
(deploy/server_restore.py): `recover_interrupted` puts exactly the data from before it back, and
is itself safe to cut off and run again. Cut-offs are made by failing the N-th rename of the
data dir's move (as a kill or power loss would stop it there), for every N."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from deploy import server_restore
from deploy.layout import Layout
from deploy.restore import RestoreError
from deploy.server_restore import _mark, recover_interrupted, running_marker
from deploy.stack import move_aside

REAL_WRITER = server_restore._me


@pytest.fixture(autouse=True)
def killed_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Markers as a restore process that is gone left them (this boot, a pid no longer there)."""
    gone = {"boot": server_restore._boot_id(), "pid": "4194304", "started": "1"}
    monkeypatch.setattr(server_restore, "_me", lambda: gone)


OLD = {
    "postgres/pgdata/PG_VERSION": "15",
    "postgres/pgdata/base/1": "rows",
    "keyring/keyring.json": "{old keys}",
    "apps/snapshots/a/file": "app data",
    "backup/state": "old",
    "nats/jetstream/x": "stream",
    "setup-token": "gone since",
}
NEW = {  # what the restore had made when it was cut off (a fresh cluster, the backup's keys)
    "postgres/pgdata/PG_VERSION": "15",
    "keyring/keyring.json": "{restored keys}",
    "apps/restore-pending.json": "{}",
    "only-in-new/file": "x",
}


class Cut(Exception):
    """The process stopped here."""


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def _tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*") if p.is_file()}


@contextmanager
def _cut_after(renames: int) -> Iterator[None]:
    """os.rename fails (Cut) once `renames` renames have been done."""
    real = os.rename
    done = 0

    def rename(src: object, dst: object) -> None:
        nonlocal done
        if done >= renames:
            raise Cut
        done += 1
        real(src, dst)  # type: ignore[arg-type]

    os.rename = rename  # type: ignore[assignment]
    try:
        yield
    finally:
        os.rename = real


def _setup(tmp_path: Path) -> tuple[Layout, Path, Path]:
    layout = Layout(tmp_path / "root")
    layout.data.mkdir(parents=True)
    _write(layout.data, OLD)
    aside = layout.data.with_name(f"{layout.data.name}.before-restore-20261205-120000")
    work = layout.data.with_name(f"{layout.data.name}.restore-20261205-120000")
    work.mkdir()
    (work / "platform.tar").write_text("restored backup")
    return layout, aside, work


def _recovered(layout: Layout, aside: Path, work: Path) -> None:
    assert _tree(layout.data) == {**OLD, "backup/restore-failed.json": _failed(layout)}
    assert "interrupted" in json.loads(_failed(layout))["message"]
    assert not aside.exists() and not work.exists()
    assert not aside.with_name(f"{aside.name}.new").exists()
    assert not running_marker(layout).exists()


def _failed(layout: Layout) -> str:
    return (layout.data / "backup" / "restore-failed.json").read_text()


def _recover_cut_at_every_point(layout: Layout, aside: Path, work: Path) -> None:
    """Recovery cut off after 0, 1, 2... renames, then run again to the end."""
    for n in range(0, 50):
        try:
            with _cut_after(n):
                recover_interrupted(layout, say=lambda _: None)
        except (Cut, RestoreError):
            continue
        return
    raise AssertionError("recovery never finished")


def test_no_restore_was_interrupted(tmp_path: Path) -> None:
    layout, _, _ = _setup(tmp_path)
    assert recover_interrupted(layout, say=lambda _: None) is None
    assert _tree(layout.data) == OLD


def test_cut_off_while_stopping_the_platform_nothing_moved(tmp_path: Path) -> None:
    layout, aside, work = _setup(tmp_path)
    _mark(layout, "stopping", aside, work)
    said: list[str] = []
    message = recover_interrupted(layout, say=said.append)
    assert message is not None and said == [message] and "platform stopped" in message
    _recovered(layout, aside, work)


@pytest.mark.parametrize("moved", range(len({n.split("/")[0] for n in OLD}) + 1))
def test_cut_off_while_the_old_data_moves_aside(tmp_path: Path, moved: int) -> None:
    layout, aside, work = _setup(tmp_path)
    _mark(layout, "moving", aside, work)
    with pytest.raises(Cut), _cut_after(moved):
        move_aside(layout.data, aside, layout.data / "postgres", None)
        raise Cut  # every child moved: cut off right after
    _recover_cut_at_every_point(layout, aside, work)
    _recovered(layout, aside, work)


def _replacing(layout: Layout, aside: Path, work: Path, cut: Callable[[], None]) -> None:
    """Moved aside, marked replacing, then the restore's new data partly written."""
    _mark(layout, "moving", aside, work)
    move_aside(layout.data, aside, layout.data / "postgres", None)
    _mark(layout, "replacing", aside, work)
    cut()


@pytest.mark.parametrize("written", [0, 1, len(NEW)])
def test_cut_off_while_the_backup_is_put_in_place(tmp_path: Path, written: int) -> None:
    layout, aside, work = _setup(tmp_path)
    _replacing(layout, aside, work, lambda: _write(layout.data, dict(list(NEW.items())[:written])))
    _recover_cut_at_every_point(layout, aside, work)
    _recovered(layout, aside, work)


def test_a_marker_naming_a_folder_elsewhere_is_refused_and_nothing_moves(tmp_path: Path) -> None:
    layout, _, work = _setup(tmp_path)
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    (elsewhere / "passwd").write_text("root")
    _mark(layout, "replacing", elsewhere, work)
    with pytest.raises(RestoreError, match="not a folder beside"):
        recover_interrupted(layout, say=lambda _: None)
    assert _tree(layout.data) == OLD and _tree(elsewhere) == {"passwd": "root"}
    assert running_marker(layout).exists()  # left for the admin to look at


def test_a_postgres_still_running_on_the_data_stops_the_recovery(tmp_path: Path) -> None:
    """The cut-off restore may have started the platform's Postgres on the half-made data: the
    recovery does not move folders under a running server, it says how to stop it first."""
    layout, aside, work = _setup(tmp_path)
    _replacing(layout, aside, work, lambda: _write(layout.data, NEW))
    pid_file = layout.data / "postgres" / "pgdata" / "postmaster.pid"
    pid_file.write_text(f"{os.getpid()}\n/var/lib/homeport/postgres/pgdata\n")  # alive: us
    with pytest.raises(RestoreError, match=r"systemctl restart homeport\.target"):
        recover_interrupted(layout, say=lambda _: None)
    assert running_marker(layout).exists() and aside.is_dir()
    pid_file.unlink()
    recover_interrupted(layout, say=lambda _: None)
    _recovered(layout, aside, work)


def test_a_restore_still_running_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restore starts the platform's Postgres unit itself, and with it the recovery unit:
    while the process that wrote the marker runs, the recovery does nothing."""
    monkeypatch.setattr(server_restore, "_me", REAL_WRITER)  # this process: running
    layout, aside, work = _setup(tmp_path)
    _replacing(layout, aside, work, lambda: _write(layout.data, NEW))
    said: list[str] = []
    assert recover_interrupted(layout, say=said.append) is None
    assert said == [f"a restore is running (pid {os.getpid()}): nothing to recover"]
    assert _tree(layout.data) == NEW and running_marker(layout).exists()
    doc = json.loads(running_marker(layout).read_text())
    running_marker(layout).write_text(json.dumps({**doc, "started": "1"}))  # a reused pid
    recover_interrupted(layout, say=lambda _: None)
    _recovered(layout, aside, work)
