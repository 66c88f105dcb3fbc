"""The setup wizard's restore on a server install, without systemd: the rendered path unit
watches the file the backup service writes, its service runs `homeport restore --from-request`
as root; that command reads only that file, never through a link, and deletes it first.
(The restore itself under systemd: test_server_restore.py.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cli.main import main
from deploy.layout import Layout
from deploy.units import RESTORE_UNITS, TARGET, render_units, unit_specs
from tests.support.unitfiles import directives


def test_the_path_unit_watches_the_backup_services_request(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    units = render_units(layout)
    service, path = (units[name] for name in RESTORE_UNITS[:2])
    backup = next(s for s in unit_specs(layout) if s.name == "backup")
    request = Path(backup.environment["HP_DATA_DIR"]) / "restore-request.json"
    assert directives(path)["PathExists"] == [str(request)]
    assert directives(path)["Unit"] == ["homeport-restore.service"]
    d = directives(service)
    assert d["User"] == ["root"] and d["Type"] == ["oneshot"]
    assert d["ExecStart"][0].endswith(
        f"-m cli.main restore --from-request {request} --prefix {tmp_path}"
    )
    assert d["ReadWritePaths"] == [str(layout.data.parent)]
    assert "PartOf" not in d  # stopping the platform does not stop the restore
    assert "homeport-restore" not in units[TARGET]


def _installed(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path)
    layout.etc.mkdir(parents=True)
    layout.env_file.write_text("HP_DATABASE_URL=postgresql://x@127.0.0.1:7432/homeport\n")
    (layout.data / "backup").mkdir(parents=True)
    return layout


def test_from_request_reads_only_the_backup_services_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = _installed(tmp_path)
    other = tmp_path / "elsewhere.json"
    other.write_text("{}")
    code = main(["restore", "--from-request", str(other), "--prefix", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert f"only {layout.data / 'backup' / 'restore-request.json'} is read" in err
    assert other.exists()
    # with --from/--key too: a usage error
    request = layout.data / "backup" / "restore-request.json"
    code = main(["restore", "--from-request", str(request), "--from", str(tmp_path),
                 "--prefix", str(tmp_path)])  # fmt: skip
    assert code == 2 and "no --from/--key" in capsys.readouterr().err


def test_a_link_in_place_of_the_request_is_dropped_not_followed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = _installed(tmp_path)
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"target": {"kind": "local", "path": str(tmp_path)}}))
    request = layout.data / "backup" / "restore-request.json"
    os.symlink(secret, request)
    code = main(["restore", "--from-request", str(request), "--prefix", str(tmp_path)])
    assert code == 1
    assert "no restore request there" in capsys.readouterr().err
    assert not os.path.lexists(request) and secret.exists()


def test_a_request_that_cannot_be_restored_is_taken_and_answered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A target that is not there: the request is deleted, nothing is stopped (it fails before
    any step that would), and restore-failed.json says why for the wizard."""
    layout = _installed(tmp_path)
    request = layout.data / "backup" / "restore-request.json"
    gone = tmp_path / "no-such-target"
    request.write_text(
        json.dumps({"version": 1, "target": {"kind": "local", "path": str(gone)},
                    "identity": "AGE-SECRET-KEY-1" + "Q" * 58, "snapshot_id": None})
    )  # fmt: skip
    code = main(["restore", "--from-request", str(request), "--prefix", str(tmp_path)])
    out = capsys.readouterr()
    assert code == 1, out
    assert not request.exists()
    failed = json.loads((layout.data / "backup" / "restore-failed.json").read_text())
    assert str(gone) in failed["message"] or "root" in failed["message"], failed
    assert "AGE-SECRET-KEY" not in out.out + out.err + failed["message"]
    assert not list(tmp_path.glob("var/lib/homeport.*"))  # no work or aside folder left
