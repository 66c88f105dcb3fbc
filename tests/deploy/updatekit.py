"""What the update tests share: a tiny test release (a service that answers with its version,
or refuses to start when BROKEN is in it; a migration that fails when MIGRATION_FAILS is),
published signed, and a Host that runs `current`'s services as real processes."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from deploy.layout import Layout
from deploy.release import build_release
from deploy.update import UpdateError
from tests.support.releases import git_checkout

__all__ = ["MIGRATE", "SERVE", "ProcessHost", "publish", "spoil"]

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
# Its migration: appends to a file in the data directory homeport.env names (if it names one).
MIGRATE = """\
import os, pathlib, sys
here = pathlib.Path.cwd()
if (here / "MIGRATION_FAILS").exists():
    sys.exit("migration 0002 failed: column exists")
if os.environ.get("HP_DATA_DIR"):
    log = pathlib.Path(os.environ["HP_DATA_DIR"]) / "migrations.log"
    with log.open("a") as f:
        f.write((here / "VERSION").read_text().strip() + "\\n")
print("applied 0002_more")
"""


def publish(src: Path, www: Path, key: Ed25519PrivateKey, version: str, *extra: str) -> None:
    """A signed test release `version` (changelog "what <version> brings") in `www`, built from
    a checkout under `src`; `extra` names empty files it also holds (BROKEN, MIGRATION_FAILS)."""
    files = {
        "VERSION": version,
        "serve.py": SERVE,
        "deploy/__init__.py": "",
        "deploy/migrate.py": MIGRATE,
        **{name: "" for name in extra},
    }
    repo = git_checkout(src / f"src-{version}", files)
    build_release(repo, version, key, www, changelog=f"what {version} brings\n")


def spoil(www: Path, version: str, how: str) -> None:
    """Spoil published `version` as an attacker would: "unsigned" (the manifest's signature
    gone) or "altered" (a bit of the archive flipped after signing); other values: as is."""
    if how == "unsigned":
        (www / f"homeport-{version}.json.sig").unlink()
    if how == "altered":
        archive = www / f"homeport-{version}.tar.gz"
        data = bytearray(archive.read_bytes())
        data[-20] ^= 1
        archive.write_bytes(bytes(data))


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


class ProcessHost:
    """Runs each service of `current` as a real process; healthy = it answers /readyz."""

    def __init__(self, layout: Layout, services: int = 2) -> None:
        self.layout = layout
        self.ports = [_free_port() for _ in range(services)]
        self.procs: list[subprocess.Popen[bytes]] = []
        self.restarts = 0
        self.applied: list[str] = []  # the releases whose configuration was applied, in order
        self.refuse: set[str] = set()  # releases whose configuration cannot be applied

    def apply(self, release: Path) -> None:
        """Processes have no units or users: what is applied is recorded (and refused for a
        release in `refuse`, as a failing `deploy.install --repair` would be)."""
        self.applied.append(release.name)
        if release.name in self.refuse:
            raise UpdateError(f"deploy.install --repair of {release.name} exited with 1")

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
