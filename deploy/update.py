"""Platform updates: fetch a signed release, install it beside the running one, switch, check,
and switch back by itself when any check fails.

The steps (a table, run in order; each prints a progress line):
fetch   download, verify and unpack into `/opt/homeport/<V>` (deploy.release.fetch_release)
venv    `python -m venv <V>/venv` + `pip install -c <V>/constraints.txt -e <V>` (slow), or a
        link to an existing venv (`venv_from`, for tests and repairs)
migrate `<V>/venv/bin/python -m deploy.migrate` in `<V>` with `homeport.env`: the event store's
        migrations. Each service applies its own projections' migrations as it starts (under an
        advisory lock, before it reports ready), so a failing one fails the health check.
        Migrations only add: the previous version must still run on the new schema.
switch  `previous` -> the running version, then `current` -> `<V>` (each a symlink replaced by
        rename, so a reader sees the old or the new link, never none)
restart `Host.apply(<V>)`: the release's own users, folders, configuration, keyrings, unit
        files and database roles (on a server `python -m deploy.install --repair` of `<V>`),
        then `Host.restart_all()`
health  `Host.healthy(timeout)`; anything unhealthy -> roll back: both links back as they were,
        the running version's `apply` again, restart, check again, remove `<V>`.
A failure before the switch removes `<V>` and leaves the running version untouched.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from deploy.bytecode import warm_release
from deploy.layout import Layout
from deploy.release import (
    Manifest,
    ReleaseError,
    fetch_manifest,
    fetch_release,
    is_newer,
    load_public_key,
)

__all__ = [
    "Host",
    "Outcome",
    "Step",
    "SystemdHost",
    "UpdateError",
    "Updater",
    "admin_env_file",
    "read_env_file",
    "switch_link",
]

Progress = Callable[[str], None]
_VENV_TIMEOUT = 1800.0
_MIGRATE_TIMEOUT = 600.0


class UpdateError(Exception):
    """An update could not be made; the message says which step failed and why."""


class Host(Protocol):
    """What runs the platform's processes (systemd on a server, something smaller in tests)."""

    def apply(self, release: Path) -> None:
        """Make the host's configuration of the platform (units, users, folders) that of
        `release`, starting nothing; raises when it cannot."""

    def restart_all(self) -> None:
        """Restart every part of the platform from `current`; raises on a failed restart."""

    def healthy(self, timeout: float) -> list[str]:
        """Wait up to `timeout` s for every part to be ready; the names of those that are not."""


@dataclass(frozen=True)
class Outcome:
    """How an update ended."""

    version: str
    previous: str
    rolled_back: bool = False
    unhealthy: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    """One step of an update: its name, share of the progress (%), message and function."""

    name: str
    share: int
    message: str
    run: Callable[[Updater, _Run], None]


@dataclass
class _Run:
    """What the steps of one update learn and leave for the next ones."""

    current: str
    old_previous: str | None
    manifest: Manifest | None = None
    path: Path | None = None
    switched: bool = False
    unhealthy: list[str] = field(default_factory=list)


def admin_env_file(layout: Layout) -> Path:
    """Where root's tools find the superuser's HP_DATABASE_URL: admin.env, or homeport.env on
    an install from before the services had roles of their own."""
    return layout.admin_env_file if layout.admin_env_file.exists() else layout.env_file


def read_env_file(path: Path) -> dict[str, str]:
    """The KEY=VALUE lines of an environment file (systemd's EnvironmentFile= subset)."""
    env: dict[str, str] = {}
    if not path.exists():
        return env
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip().isidentifier():
            raise UpdateError(f"{path}:{n}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def switch_link(link: Path, version: str | None) -> None:
    """Point `link` at the sibling directory `version` atomically (rename over it); None
    removes it."""
    if version is None:
        link.unlink(missing_ok=True)
        return
    tmp = link.with_name(f".{link.name}.new")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(version)  # relative: the tree stays valid under any prefix
    os.replace(tmp, link)


class Updater:
    """Updates the install at `layout` from its release URL, restarting through `host`."""

    def __init__(
        self,
        layout: Layout,
        host: Host,
        *,
        url: str | None = None,
        venv_from: Path | None = None,
        progress: Progress = print,
        health_timeout: float = 120.0,
        python: str = sys.executable,
    ) -> None:
        self.layout = layout
        self.host = host
        self._url = url
        self.venv_from = venv_from
        self.progress = progress
        self.health_timeout = health_timeout
        self.python = python

    # -- what is there ----------------------------------------------------------------

    @property
    def url(self) -> str:
        """The release URL: the one given, else the line in /etc/homeport/release-url."""
        if self._url:
            return self._url
        try:
            url = self.layout.release_url_file.read_text().strip()
        except OSError as e:
            raise UpdateError(
                f"no release URL: write it to {self.layout.release_url_file} ({e.strerror})"
            ) from e
        if not url:
            raise UpdateError(f"{self.layout.release_url_file} is empty: write the release URL")
        return url

    def current_version(self) -> str:
        """The running version (where `current` points)."""
        version = self.layout.version_of(self.layout.current)
        if version is None:
            raise UpdateError(f"{self.layout.current} is missing: is Homeport installed here?")
        return version

    def check(self) -> Manifest | None:
        """The verified manifest of a newer release, or None when the running one is newest."""
        try:
            manifest = fetch_manifest(self.url, load_public_key(self.layout.release_key))
        except ReleaseError as e:
            raise UpdateError(str(e)) from e
        return manifest if is_newer(manifest.version, self.current_version()) else None

    # -- the update ---------------------------------------------------------------------

    def update(self) -> Outcome:
        """Run every step; returns the outcome (rolled back or not), raises UpdateError when
        nothing was switched or a roll-back itself failed."""
        self.layout.opt.mkdir(parents=True, exist_ok=True)
        with (self.layout.opt / ".update.lock").open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UpdateError("another update is running: wait for it to finish") from None
            return self._update()

    def _update(self) -> Outcome:
        run = _Run(self.current_version(), self.layout.version_of(self.layout.previous))
        done = 0
        for step in STEPS:
            self.progress(f"[{done:3d}%] {step.name}: {step.message}")
            try:
                step.run(self, run)
            except (UpdateError, ReleaseError, OSError, subprocess.SubprocessError) as e:
                return self._failed(run, step, e)
            done += step.share
            if run.unhealthy:
                return self._roll_back(run)
        assert run.manifest is not None
        self.progress(f"[100%] running {run.manifest.version} (previous: {run.current})")
        return Outcome(run.manifest.version, run.current)

    def _failed(self, run: _Run, step: Step, e: BaseException) -> Outcome:
        if run.switched:
            run.unhealthy = [f"{step.name}: {e}"]
            return self._roll_back(run)
        if run.path is not None:
            shutil.rmtree(run.path, ignore_errors=True)
        raise UpdateError(f"update failed at {step.name}: {e}; still running {run.current}") from e

    def _roll_back(self, run: _Run) -> Outcome:
        assert run.manifest is not None and run.path is not None
        failed = ", ".join(run.unhealthy)
        self.progress(f"rolling back to {run.current}: {run.manifest.version} failed ({failed})")
        switch_link(self.layout.current, run.current)
        switch_link(self.layout.previous, run.old_previous)
        try:
            self.host.apply(self.layout.releases(run.current))
        except (OSError, subprocess.SubprocessError, UpdateError) as e:
            self.progress(f"       {run.current}'s configuration could not be put back: {e}")
        try:
            self.host.restart_all()
            still = self.host.healthy(self.health_timeout)
        except (OSError, subprocess.SubprocessError, UpdateError) as e:
            still = [f"restart: {e}"]
        if still:
            raise UpdateError(
                f"rolled back to {run.current} after {run.manifest.version} failed ({failed}), "
                f"but these are still unhealthy: {', '.join(still)}"
            )
        shutil.rmtree(run.path, ignore_errors=True)
        self.progress(f"rolled back: running {run.current} again")
        return Outcome(run.manifest.version, run.current, True, tuple(run.unhealthy))

    # -- steps ----------------------------------------------------------------------------

    def _fetch(self, run: _Run) -> None:
        release = fetch_release(
            self.url, load_public_key(self.layout.release_key), run.current, self.layout.opt
        )
        run.manifest, run.path = release.manifest, release.path
        self.progress(f"       {release.manifest.version} verified and unpacked in {release.path}")

    def _venv(self, run: _Run) -> None:
        assert run.path is not None
        venv = run.path / "venv"
        if self.venv_from is not None:
            venv.symlink_to(self.venv_from.resolve(), target_is_directory=True)
            self.progress(f"       using the virtualenv {self.venv_from}")
            return
        _run([self.python, "-m", "venv", str(venv)], cwd=run.path, timeout=_VENV_TIMEOUT)
        self.progress("       installing the packages (pip; this takes a few minutes)")
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
        _run(
            [*pip, "-q", "-c", str(run.path / "constraints.txt"), "-e", str(run.path)],
            cwd=run.path,
            timeout=_VENV_TIMEOUT,
        )
        # Byte-compiled once here, as install.sh does (the units set PYTHONDONTWRITEBYTECODE
        # and the code is read-only to them); never the bundled apps' build contexts, whose
        # files the signed catalog index lists.
        python = str(venv / "bin" / "python")
        compile_argv = [python, "-m", "compileall", "-q", "-x", "/(venv|tests|bundled)/"]
        with contextlib.suppress(UpdateError):
            _run([*compile_argv, str(run.path)], cwd=run.path, timeout=_VENV_TIMEOUT)

    def _migrate(self, run: _Run) -> None:
        assert run.path is not None
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        env.update(read_env_file(self.layout.env_file))
        env.update(read_env_file(admin_env_file(self.layout)))
        python = run.path / "venv" / "bin" / "python"
        out = _run([str(python), "-m", "deploy.migrate"], cwd=run.path, env=env)
        for line in out.splitlines():
            self.progress(f"       {line}")

    def _switch(self, run: _Run) -> None:
        assert run.path is not None
        switch_link(self.layout.previous, run.current)
        switch_link(self.layout.current, run.path.name)
        run.switched = True
        try:  # the services' -OO byte code, through `current` as the units load it
            warm_release(self.layout.current)
        except (OSError, subprocess.SubprocessError) as e:
            reason = (getattr(e, "stderr", None) or b"").decode(errors="replace").strip()
            self.progress(
                f"       the services' byte code was not prepared ({reason or e}); "
                "they compile it in memory at start"
            )

    def _restart(self, run: _Run) -> None:
        assert run.path is not None
        self.host.apply(run.path)
        self.host.restart_all()

    def _health(self, run: _Run) -> None:
        run.unhealthy = self.host.healthy(self.health_timeout)


STEPS: Sequence[Step] = (
    Step("fetch", 10, "downloading and verifying the release", Updater._fetch),
    Step("venv", 50, "making the release's virtualenv", Updater._venv),
    Step("migrate", 10, "running the migrations", Updater._migrate),
    Step("switch", 5, "switching current to the new version", Updater._switch),
    Step("restart", 10, "its configuration, then restarting every service", Updater._restart),
    Step("health", 15, "checking every service's health", Updater._health),
)


def _run(
    argv: list[str], *, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 600.0
) -> str:
    """Run `argv`; its stdout, or UpdateError with the end of its output."""
    try:
        proc = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        what = f"{Path(argv[0]).name} {' '.join(argv[1:3])}"
        raise UpdateError(f"{what} took over {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise UpdateError(
            f"{' '.join(argv[1:4])} exited with {proc.returncode}: " + " | ".join(tail)
        )
    return proc.stdout


class SystemdHost:
    """The platform under systemd: `homeport.target` and its `homeport-*.service` units.

    Health: every unit the target wants is active, and each unit whose `Environment=` sets
    HP_HTTP_PORT answers 200 on http://127.0.0.1:<port>/readyz. (The installer writes the
    units; its systemd-container test exercises this class.)
    """

    target = "homeport.target"

    def __init__(self, systemctl: str = "systemctl") -> None:
        self.systemctl = systemctl

    def _ctl(self, *args: str) -> str:
        try:
            proc = subprocess.run(
                [self.systemctl, *args], capture_output=True, text=True, timeout=120, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise UpdateError(f"systemctl {' '.join(args)}: {e}") from e
        if proc.returncode != 0:
            raise UpdateError(f"systemctl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def units(self) -> list[str]:
        """The homeport-*.service units of the target."""
        out = self._ctl("list-dependencies", "--plain", "--no-pager", self.target)
        names = (line.strip() for line in out.splitlines()[1:])
        return sorted(n for n in names if n.startswith("homeport-") and n.endswith(".service"))

    def apply(self, release: Path) -> None:
        """`python -m deploy.install --repair` of `release`, from its own venv, as root."""
        argv = [str(release / "venv" / "bin" / "python"), "-m", "deploy.install", "--repair"]
        _run([*argv, "--version", release.name], cwd=release, timeout=600.0)

    def restart_all(self) -> None:
        self._ctl("restart", self.target)

    def _port(self, unit: str) -> int | None:
        out = self._ctl("show", "-p", "Environment", "--value", unit)
        for item in out.split():
            key, _, value = item.partition("=")
            if key == "HP_HTTP_PORT" and value.isdigit() and int(value) > 0:
                return int(value)
        return None

    def _ready(self, unit: str) -> bool:
        state = self._ctl("show", "-p", "ActiveState", "--value", unit).strip()
        if state != "active":
            # started on demand by a path unit (the addon Postgres) and not asked for yet
            return state == "inactive" and bool(
                self._ctl("show", "-p", "TriggeredBy", "--value", unit).strip()
            )
        port = self._port(unit)
        if port is None:
            return True
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def healthy(self, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        pending = self.units()
        while True:
            pending = [u for u in pending if not self._ready(u)]
            if not pending or time.monotonic() >= deadline:
                return pending
            time.sleep(1.0)
