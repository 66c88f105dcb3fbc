"""`homeport update`: install a signed release beside the running one, migrate, switch, check
health with real processes, and switch back by itself when the new version is unhealthy."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cli.main import main
from deploy.layout import Layout
from deploy.release import build_release, fetch_release, generate_key, public_key_text
from deploy.update import Outcome, UpdateError, Updater, switch_link
from tests.support.releases import git_checkout, serve_directory

REPO = Path(__file__).resolve().parents[2]

# A service of a test release: answers /readyz and /version on its port, or exits when broken.
SERVE = """\
import http.server, pathlib, sys
here = pathlib.Path(__file__).parent
version = (here / "VERSION").read_text().strip()
if (here / "BROKEN").exists():
    sys.exit("this release does not start")
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = version.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""
# Its migration: appends to a file in the data directory named by homeport.env.
MIGRATE = """\
import os, pathlib, sys
here = pathlib.Path.cwd()
if (here / "MIGRATION_FAILS").exists():
    sys.exit("migration 0002 failed: column exists")
log = pathlib.Path(os.environ["HP_DATA_DIR"]) / "migrations.log"
with log.open("a") as f:
    f.write((here / "VERSION").read_text().strip() + "\\n")
print("applied 0002_more")
"""


class ProcessHost:
    """Runs each service of `current` as a real process; healthy = it answers /readyz."""

    def __init__(self, layout: Layout, services: int = 2) -> None:
        self.layout = layout
        self.ports = [_free_port() for _ in range(services)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.restarts = 0

    def restart_all(self) -> None:
        self.stop()
        self.restarts += 1
        python = self.layout.current / "venv" / "bin" / "python"
        for port in self.ports:
            argv = [str(python), str(self.layout.current / "serve.py"), str(port)]
            self.procs.append(subprocess.Popen(argv, stderr=subprocess.DEVNULL))

    def healthy(self, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        pending = list(zip(self.ports, self.procs, strict=True))
        while pending and time.monotonic() < deadline:
            pending = [(port, p) for port, p in pending if p.poll() is not None or not _ready(port)]
            if any(p.poll() is not None for _, p in pending):
                break
            time.sleep(0.05)
        return [f"service on port {port}" for port, _ in pending]

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
            p.wait(10)
        self.procs = []

    def version(self) -> set[str]:
        """What every running service says its version is."""
        return {_get(f"http://127.0.0.1:{port}/version") for port in self.ports}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as r:
        return str(r.read().decode())


def _ready(port: int) -> bool:
    try:
        return _get(f"http://127.0.0.1:{port}/readyz") != ""
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture(scope="session")
def bare_venv(tmp_root: Path) -> Path:
    """A virtualenv without packages: the test releases need only the standard library."""
    venv = tmp_root / "release-venv"
    if not venv.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return venv


@pytest.fixture
def key(tmp_path: Path) -> Ed25519PrivateKey:
    return generate_key(tmp_path / "release.key")


@pytest.fixture
def www(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    (tmp_path / "www").mkdir()
    with serve_directory(tmp_path / "www") as url:
        yield tmp_path / "www", url


def _release(tmp_path: Path, www: Path, key: Ed25519PrivateKey, version: str, *extra: str) -> None:
    files = {
        "VERSION": version,
        "serve.py": SERVE,
        "deploy/__init__.py": "",
        "deploy/migrate.py": MIGRATE,
        **{name: "" for name in extra},
    }
    repo = git_checkout(tmp_path / f"src-{version}", files)
    build_release(repo, version, key, www, changelog=f"what {version} brings\n")


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
    assert layout.version_of(layout.current) == "1.0.0"
    assert layout.version_of(layout.previous) is None
    assert _installed(layout) == ["1.0.0", "current"]
    assert any(line.startswith("rolling back to 1.0.0") for line in lines)


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
    if spoil == "unsigned":
        (www[0] / f"homeport-{version}.json.sig").unlink()
    if spoil == "altered":
        archive = www[0] / f"homeport-{version}.tar.gz"
        data = bytearray(archive.read_bytes())
        data[-20] ^= 1
        archive.write_bytes(bytes(data))

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
    first = await _migrate(dsn)
    assert first.startswith("event store: ") and "applied [1, 2, 3" in first
    assert await _migrate(dsn) == "event store: 0 migration(s) applied []\n"
