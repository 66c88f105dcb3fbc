"""The local stack (`homeport up`): Postgres, NATS and every service, supervised, in a data dir.

The entry point only: `planning` decides what runs (ports, environment), `supervision` starts,
watches, restarts and stops the processes, `state` keeps the data directory and `stack.json`.

The addon Postgres (apps' databases) runs on demand: it starts with the stack when its flag
(`Plan.addon_wanted`, written by the apps service) exists, or once it appears; until then it is
idle and left out of `stack.json`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import asyncpg

from deploy import bytecode
from deploy.dbroles import prepare_database
from deploy.embedded import EmbeddedError
from deploy.errors import StackError
from deploy.forkserver import ForkserverError
from deploy.planning import (
    DASHBOARD_PART,
    DATABASE,
    SERVICES_GATEWAY,
    SERVICES_NETWORK,
    SERVICES_SUBNET,
    Module,
    Plan,
    Planner,
    discover_modules,
)
from deploy.state import (
    KEYRING_DIR,
    PORTS_FILE,
    lock,
    now,
    postgres_dir,
    postgres_ids,
    prepare_dir,
    read_state,
    start_time,
    write_state,
)
from deploy.supervision import (
    READY_DEADLINE_S,
    Backoff,
    Part,
    PartKind,
    PartState,
    Supervisor,
    probe,
    reap_leftovers,
)

__all__ = ["Stack", "StackState", "move_aside", "put_back", "take_request_file"]

RESTORE_MARKER = "restore-in-progress.json"  # deploy/restore.py MARKER
# The setup wizard's restore (services/backup/service/commands.py writes the request; the
# stack reads and deletes it within a second, restores, and leaves why when it failed).
RESTORE_REQUEST = "restore-request.json"
RESTORE_FAILED = "restore-failed.json"
RESTORE_POLL_S = 1.0
_READY_POLL_S = 0.05  # identity's /readyz, once every part is healthy: usually ready at once

log = logging.getLogger("homeport.stack")


class StackState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class _StateWriter:
    """Keeps `stack.json` current without blocking the event loop: each change of state asks for
    a write; the writer writes the state as it is when it wakes (the changes of one moment make
    one write), its fsync in a thread. A start makes some 40 changes, and writing each in place
    (~5-10 ms for the fsync) held up the loop that starts and probes the parts."""

    def __init__(self, data_dir: Path, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.data_dir = data_dir
        self.snapshot = snapshot
        self._asked = self._written = 0
        self._wake = asyncio.Event()
        self._done = asyncio.Condition()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="stack.json")

    @property
    def running(self) -> bool:
        return not self._task.done()

    def ask(self) -> None:
        self._asked += 1
        self._wake.set()

    async def flush(self) -> None:
        """Wait until what was asked so far is written."""
        target = self._asked
        async with self._done:
            await self._done.wait_for(lambda: self._written >= target or self._task.done())

    async def close(self) -> None:
        """Write what is left, then end; the caller writes in place from then on."""
        self._closing = True
        self._wake.set()
        (failed,) = await asyncio.gather(self._task, return_exceptions=True)
        if isinstance(failed, Exception):
            log.error("the writer of stack.json failed", exc_info=failed)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            asked, state = self._asked, self.snapshot()
            try:
                await asyncio.to_thread(write_state, self.data_dir, state)
            except OSError as e:
                log.warning("could not write stack.json", extra={"error": str(e)})
            async with self._done:
                self._written = asked
                self._done.notify_all()
            if self._closing and not self._wake.is_set():
                return


class Stack:
    """Runs Postgres, NATS and the services of this checkout until SIGINT/SIGTERM."""

    def __init__(
        self,
        data_dir: Path,
        *,
        python: str = sys.executable,
        base_port: int | None = None,
        modules: Sequence[Module] | None = None,
        log_level: str = "INFO",
        fsync: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.planner = Planner(
            self.data_dir,
            python=python,
            base_port=base_port,
            modules=modules,
            log_level=log_level.upper(),
            fsync=fsync,
        )
        self.plan = Plan("", "")
        self.state = StackState.STARTING
        self._stopping = asyncio.Event()
        self._started_at = now()
        self._signalled = False
        self._restore_request: dict[str, Any] | None = None
        self._previous: dict[str, Any] | None = None  # the run before a restore (its ports)
        self._writer: _StateWriter | None = None  # while it runs; else stack.json in place

    # -- public ---------------------------------------------------------------------------

    @property
    def parts(self) -> list[Part]:
        return self.plan.parts

    @property
    def keyring(self) -> Path:
        """The folder of the services' keyrings, `<service>/keyring.json` (sealing.py)."""
        return self.data_dir / KEYRING_DIR

    @property
    def dashboard_url(self) -> str | None:
        """The gateway's URL, or None when this checkout has no gateway service."""
        for p in self.parts:
            if p.name == DASHBOARD_PART and p.kind is PartKind.SERVICE:
                return p.url
        return None

    @property
    def secure_dashboard_url(self) -> str | None:
        """The dashboard through the edge at my.localhost, when this stack runs the edge."""
        if self.plan.edge_ports is None or self.dashboard_url is None:
            return None
        return f"https://my.localhost:{self.plan.edge_ports[1]}/"

    @property
    def apps_url(self) -> str | None:
        """How an app at <location> is reached on this machine, with a placeholder."""
        if self.plan.edge_ports is None:
            return None
        return f"https://<location>.localhost:{self.plan.edge_ports[1]}/"

    def unhealthy(self) -> list[Part]:
        """Parts that have not answered their health check since the stack started (an idle
        one, not asked for yet, is not one of them)."""
        return [p for p in self.parts if not p.healthy.is_set() and p.state is not PartState.IDLE]

    def stop(self) -> None:
        """Ask the stack to stop (what SIGINT and SIGTERM do)."""
        self._stopping.set()

    async def run(self, on_ready: Callable[[Stack], None] | None = None) -> None:
        """Start everything, call `on_ready` once it is healthy (or 60 s passed), run until stop."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if (self.data_dir / RESTORE_MARKER).exists():
            raise StackError(
                f"a `homeport restore` into {self.data_dir} did not finish: run the same "
                "restore command again (it starts over), then start the stack"
            )
        lock_fd = lock(self.data_dir)
        loop = asyncio.get_running_loop()
        try:
            prepare_dir(self.data_dir)
            await asyncio.to_thread(compile_code)
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._on_signal, sig)
            try:
                while True:
                    await self._run_locked(on_ready)
                    request, self._restore_request = self._restore_request, None
                    if request is None or self._signalled:
                        break
                    os.close(lock_fd)  # the restore takes the lock of the emptied directory
                    lock_fd = -1
                    await self._restore(request)
                    lock_fd = lock(self.data_dir)
                    prepare_dir(self.data_dir)
                    if self._signalled:
                        break
                    self._stopping = asyncio.Event()
                    self.state = StackState.STARTING
                    self._started_at = now()
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
        finally:
            if lock_fd >= 0:
                os.close(lock_fd)

    # -- the run --------------------------------------------------------------------------

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stopping.is_set():
            log.info("already stopping", extra={"signal": sig.name})
            return
        log.info("stopping", extra={"signal": sig.name})
        self._signalled = True
        self._stopping.set()

    async def _run_locked(self, on_ready: Callable[[Stack], None] | None) -> None:
        previous = read_state(self.data_dir)
        await reap_leftovers(previous)
        if self._previous is not None:  # after a restore: the ports the browser knows
            previous, self._previous = self._previous, None
        self.plan = self.planner.plan(previous)
        self._save()
        tasks: list[asyncio.Task[None]] = []
        on_demand: asyncio.Task[None] | None = None
        self._writer = _StateWriter(self.data_dir, self._state)
        try:
            supervisor = Supervisor(self._stopping, self._save)
            try:
                await self._start_servers(supervisor)
                if not self._stopping.is_set():
                    tasks = [
                        asyncio.create_task(
                            supervisor.supervise(p, started=p.kind is not PartKind.SERVICE),
                            name=f"supervise.{p.name}",
                        )
                        for p in self.parts
                        if p.state is not PartState.IDLE
                    ]
                    idle = [p for p in self.parts if p.state is PartState.IDLE]
                    if idle:
                        on_demand = asyncio.create_task(
                            self._watch_addon(supervisor, idle[0], tasks), name="addon.watch"
                        )
                    self.state = StackState.RUNNING
                    self._save()
                    watch = asyncio.create_task(self._watch_restore(), name="restore.watch")
                    try:
                        await self._until_ready(tasks, on_ready)
                        await self._until_stopped(tasks)
                    finally:
                        watch.cancel()
                        await asyncio.gather(watch, return_exceptions=True)
            finally:
                self._stopping.set()
                self.state = StackState.STOPPING
                self._save()
                if on_demand is not None:  # not cancelled: a start under way finishes
                    await asyncio.gather(on_demand, return_exceptions=True)
                await _join(tasks)
                await supervisor.shutdown(self.parts)
                if self.plan.forkserver is not None:
                    await self.plan.forkserver.close()
        finally:
            writer, self._writer = self._writer, None
            await writer.close()
            self.state = StackState.STOPPED
            self._save(stack_pid=False)
            log.info("stopped", extra={"data_dir": str(self.data_dir)})

    async def _start_forkserver(self) -> None:
        """The services' fork server, importing their code while the servers start; if it
        cannot, each service starts on its own (ServiceRunner), as the warning says."""
        forkserver = self.plan.forkserver
        if forkserver is None:
            return
        try:
            await forkserver.start()
        except (ForkserverError, OSError) as e:
            log.warning("services start on their own", extra={"error": str(e)})
        else:
            self._save()

    async def _start_servers(self, supervisor: Supervisor) -> None:
        """Postgres (and the `homeport` database), NATS and the stack's own dockerd together,
        then the addon Postgres if an app needs it (it listens on Docker's services network);
        services need them all. Every start is awaited before a failure is raised, so that the
        stop finds each server that did start."""
        if self._stopping.is_set():
            return
        first = [p for p in self.parts if p.kind not in (PartKind.SERVICE, PartKind.ADDON_POSTGRES)]
        results = await asyncio.gather(
            *(self._start_server(supervisor, p) for p in first),
            self._start_forkserver(),
            return_exceptions=True,
        )
        for r in results:
            if isinstance(r, BaseException):
                raise r
        for part in self.parts:
            if part.kind is not PartKind.ADDON_POSTGRES or self._stopping.is_set():
                continue
            if not self._addon_wanted():
                part.state = PartState.IDLE
                log.info("not started until an app needs it", extra={"part": part.name})
                continue
            await self._start_server(supervisor, part)

    def _addon_wanted(self) -> bool:
        flag = self.plan.addon_wanted
        return flag is not None and flag.exists()

    async def _start_server(self, supervisor: Supervisor, part: Part) -> None:
        part.state = PartState.STARTING
        self._save()
        log.info("starting", extra={"part": part.name, "port": part.port})
        try:
            if part.kind is PartKind.ADDON_POSTGRES:
                await _prepare_addons(self.plan)
            await part.runner.start()
            if part.kind is PartKind.POSTGRES:
                # each service's own role (libs/events/roles.py), before any service connects;
                # the database made first when missing (its first start: one connection less
                # at every other)
                try:
                    await prepare_database(self.plan.database_url, self.data_dir)
                except asyncpg.InvalidCatalogNameError:
                    await _ensure_database(self.plan.database_url)
                    await prepare_database(self.plan.database_url, self.data_dir)
        except (EmbeddedError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise StackError(f"{part.name} did not start: {e} (log: {part.log})") from e
        supervisor.mark_started(part)
        supervisor.mark_healthy(part)

    async def _watch_addon(
        self, supervisor: Supervisor, part: Part, tasks: list[asyncio.Task[None]]
    ) -> None:
        """The idle addon Postgres started once its flag appears (polled as the restore
        request is), then supervised as the other servers are; a failed start is retried."""
        backoff = Backoff()
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), RESTORE_POLL_S)
            if self._stopping.is_set() or not await asyncio.to_thread(self._addon_wanted):
                continue
            log.info("an app needs the addon server: starting it", extra={"part": part.name})
            try:
                await self._start_server(supervisor, part)
            except StackError as e:
                delay = backoff.delay(0.0)
                log.error("%s; trying again in %.1f s", e, delay)
                part.state = PartState.IDLE
                self._save()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                continue
            tasks.append(
                asyncio.create_task(
                    supervisor.supervise(part, started=True), name=f"supervise.{part.name}"
                )
            )
            return

    async def _until_ready(
        self, tasks: list[asyncio.Task[None]], on_ready: Callable[[Stack], None] | None
    ) -> None:
        """Wait for every part to be healthy once (at most 60 s), then call `on_ready`."""
        waits = [
            asyncio.ensure_future(p.healthy.wait())
            for p in self.parts
            if p.state is not PartState.IDLE
        ]
        stopping = asyncio.ensure_future(self._stopping.wait())
        deadline = time.monotonic() + READY_DEADLINE_S
        try:
            while not all(w.done() for w in waits):
                left = deadline - time.monotonic()
                if left <= 0 or stopping.done() or any(t.done() for t in tasks):
                    break
                pending = {stopping, *tasks, *(w for w in waits if not w.done())}
                await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in (*waits, stopping):
                w.cancel()
            await asyncio.gather(*waits, stopping, return_exceptions=True)
        if self._stopping.is_set() or any(t.done() for t in tasks):
            return
        await self._identity_ready()
        bad = self.unhealthy()
        if bad:
            log.warning("not all parts are healthy", extra={"parts": [p.name for p in bad]})
        else:
            log.info("ready", extra={"dashboard": self.dashboard_url})
        if self._writer is not None:  # `homeport status` after the banner sees every part
            await self._writer.flush()
        if on_ready is not None:
            on_ready(self)

    async def _identity_ready(self) -> None:
        """Wait (at most READY_DEADLINE_S) until identity is ready: it has then written the
        one-time setup token the banner's setup link carries, if setup is not done."""
        part = next((p for p in self.parts if p.name == "identity"), None)
        if part is None or not part.health.endswith("/healthz"):
            return
        ready = part.health.removesuffix("/healthz") + "/readyz"
        deadline = time.monotonic() + READY_DEADLINE_S
        while time.monotonic() < deadline and not self._stopping.is_set():
            if (await probe(ready))[0]:
                return
            await asyncio.sleep(_READY_POLL_S)

    async def _until_stopped(self, tasks: list[asyncio.Task[None]]) -> None:
        """Run until asked to stop; a supervisor that ends on its own is a bug: stop then."""
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({stopping, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            await asyncio.gather(stopping, return_exceptions=True)
        if not self._stopping.is_set():
            for t in tasks:
                if t.done() and not t.cancelled() and t.exception() is not None:
                    log.error(
                        "supervisor failed, stopping the stack",
                        extra={"task": t.get_name()},
                        exc_info=t.exception(),
                    )
            raise StackError("a supervisor failed; see the log lines above")

    # -- the setup wizard's restore ---------------------------------------------------------

    async def _watch_restore(self) -> None:
        """A restore request (RESTORE_REQUEST) read and deleted at once, then: stop to run it."""
        path = self.data_dir / RESTORE_REQUEST
        while not self._stopping.is_set():
            await asyncio.sleep(RESTORE_POLL_S)
            request = await asyncio.to_thread(take_request_file, path)
            if request is not None:
                log.warning("a restore from a backup was asked for: stopping to restore")
                self._restore_request = request
                self._stopping.set()
                return

    async def _restore(self, request: dict[str, Any]) -> None:
        """Everything is stopped: move the data dir's contents aside, restore the platform
        into it; on failure put them back and leave RESTORE_FAILED. Never raises for that."""
        from deploy.restore import restore_platform
        from services.backup.targets.factory import target_from_settings

        self._previous = read_state(self.data_dir)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.data_dir.with_name(f"{self.data_dir.name}.before-restore-{stamp}")
        for n in range(2, 100):
            if not aside.exists():
                break
            aside = aside.with_name(f"{self.data_dir.name}.before-restore-{stamp}-{n}")
        pg = postgres_dir(self.data_dir)
        pg_aside = None if self.data_dir in pg.parents else pg.with_name(f"{pg.name}.{stamp}")
        log.warning("restoring", extra={"old_contents": str(aside)})
        try:
            await asyncio.to_thread(move_aside, self.data_dir, aside, pg, pg_aside)
            target = target_from_settings(
                dict(request["target"]), allow_loopback=bool(request.get("allow_loopback"))
            )
            try:
                summary = await restore_platform(
                    self.data_dir,
                    target,
                    str(request["identity"]),
                    snapshot=request.get("snapshot_id"),
                    say=lambda line: log.info("restore: %s", line),
                )
            finally:
                await target.close()
            with contextlib.suppress(OSError):
                shutil.copy2(aside / PORTS_FILE, self.data_dir / PORTS_FILE)
        except Exception as e:  # any failure: the old platform comes back
            message = str(e) if isinstance(e, StackError) else f"{type(e).__name__}: {e}"
            log.error("the restore failed, starting the platform as it was: %s", message[:500])
            try:
                await asyncio.to_thread(put_back, self.data_dir, aside, pg, pg_aside)
            except OSError as again:
                raise StackError(
                    f"the restore failed ({message[:300]}) and the old contents could not be put"
                    f" back ({again}): they are in {aside}; move them back into {self.data_dir}"
                ) from None
            await asyncio.to_thread(_write_failed, self.data_dir, message[:2000])
            return
        log.warning(
            "restored platform backup %s of %s (%d apps); the old data directory's contents are"
            " in %s",
            summary.snapshot,
            summary.time,
            len(summary.apps),
            aside,
        )

    def _save(self, *, stack_pid: bool = True) -> None:
        """Record a change of state in `stack.json` (by the writer while the stack runs)."""
        if self._writer is not None and self._writer.running and stack_pid:
            self._writer.ask()
        else:
            write_state(self.data_dir, self._state(stack_pid=stack_pid))

    def _state(self, *, stack_pid: bool = True) -> dict[str, Any]:
        pid = os.getpid()
        return {
            "version": 1,
            "data_dir": str(self.data_dir),
            "pid": pid if stack_pid else None,
            "proc_start": start_time(pid) if stack_pid else None,
            "state": self.state.value,
            "started_at": self._started_at,
            "updated_at": now(),
            "dashboard_url": self.dashboard_url,
            "database_url": self.plan.database_url,
            "nats_url": self.plan.nats_url,
            "keyring": str(self.keyring),
            "parts": [p.to_json() for p in self.parts if p.state is not PartState.IDLE],
            "forkserver": self._forkserver_state(),
        }

    def _forkserver_state(self) -> dict[str, Any] | None:
        """The fork server's process (deploy/forkserver.py), while it runs."""
        pid = self.plan.forkserver.pid if self.plan.forkserver is not None else None
        return None if pid is None else {"pid": pid, "proc_start": start_time(pid)}


CODE_PACKAGES = ("libs", "services", "deploy", "cli")


def compile_code(
    packages: Sequence[str] = CODE_PACKAGES,
    modules: Sequence[str] | None = None,
    prefix: Path | None = None,
) -> bool:
    """Byte-compile the platform's code once (as the server installer does), so that no
    process compiles its sources at every start: that costs each one time and ~0.7 MiB of heap
    it keeps (PYTHONDONTWRITEBYTECODE, set on some machines, would otherwise make it every
    start). A checkout we cannot write to is fine: the processes then compile in memory.
    The bundled apps are left alone: a __pycache__ in an app's build context would not match
    the catalog's signed index, and the catalog would refuse the app.
    Then the services' own cache (-OO byte code, deploy/bytecode.py) is warmed; when that fails
    they run all the same, compiling in memory what is missing. Both are skipped when the
    cache's stamp says they were done for these very sources (most starts).
    `packages`, `modules` (default: every service's) and `prefix` (default: the venv's cache)
    say what; returns whether it compiled and warmed."""
    import compileall
    import importlib.util
    import re

    folders: list[Path] = []
    for top in packages:
        spec = importlib.util.find_spec(top)
        folders += [Path(f) for f in ((spec.submodule_search_locations or []) if spec else [])]
    names = [m.module for m in discover_modules()] if modules is None else modules
    starts = bytecode.startup_modules(names)
    prefix, cwd = prefix or bytecode.embedded_prefix(), Path.cwd()
    mark = bytecode.fingerprint(sys.executable, starts, folders, cwd=cwd)
    if bytecode.is_warm(prefix, mark):
        return False
    skip = re.compile(r"[/\\]bundled[/\\]")
    for folder in folders:
        with contextlib.suppress(OSError):
            compileall.compile_dir(folder, quiet=2, workers=1, rx=skip)
    try:
        bytecode.warm(sys.executable, prefix, starts, cwd=cwd)
        bytecode.mark_warm(prefix, mark)
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", None) or b""
        log.warning(
            "the services' byte code could not be prepared; they compile it at start",
            extra={"error": f"{type(e).__name__}: {e}", "detail": detail.decode()[-500:]},
        )
    return True


def take_request_file(path: Path) -> dict[str, Any] | None:
    """The request in `path` (a regular file, never a link), deleted before it is parsed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError:  # a link or something else: not a request of ours
        path.unlink(missing_ok=True)
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            raw = f.read(1 << 16)
    finally:
        path.unlink(missing_ok=True)
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("target"), dict):
        log.error("ignored a restore request that is not one", extra={"file": str(path)})
        return None
    return doc


def move_aside(data_dir: Path, aside: Path, pg: Path, pg_aside: Path | None) -> None:
    aside.mkdir(mode=0o700)
    for child in list(data_dir.iterdir()):
        if child.name in (RESTORE_FAILED,):
            child.unlink()
            continue
        os.rename(child, aside / child.name)
    if pg_aside is not None and pg.exists():  # a cluster outside the data dir (state.py)
        os.rename(pg, pg_aside)


def put_back(data_dir: Path, aside: Path, pg: Path, pg_aside: Path | None) -> None:
    """What a failed restore left goes; the old contents come back."""
    if not aside.is_dir():  # nothing was moved
        return
    for child in list(data_dir.iterdir()):
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    for child in list(aside.iterdir()):
        os.rename(child, data_dir / child.name)
    aside.rmdir()
    if pg_aside is not None and pg_aside.exists():
        if pg.exists():
            shutil.rmtree(pg)
        os.rename(pg_aside, pg)


def _write_failed(data_dir: Path, message: str) -> None:
    path = data_dir / RESTORE_FAILED
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps({"message": message}) + "\n")


async def _join(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Supervisors return soon after the stop event; none of them stops a process."""
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for t, r in zip(tasks, results, strict=True):
        if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
            log.error("supervisor failed", extra={"task": t.get_name()}, exc_info=r)


async def _prepare_addons(plan: Plan) -> None:
    """The services network (its gateway is where addons listen), then the hba file."""
    from services.apps.addons.postgresql import AddonPostgres
    from services.apps.runtime import DockerRuntime

    try:
        async with DockerRuntime(plan.docker_url) as runtime:
            await runtime.ensure_services_network(SERVICES_NETWORK, SERVICES_SUBNET)
        if plan.addon is not None:
            await asyncio.to_thread(plan.addon.init)
            hba = plan.addon.datadir / "pg_hba.conf"
            addon = AddonPostgres(plan.addon.dsn, SERVICES_GATEWAY, plan.addon.port, hba)
            await asyncio.to_thread(addon.ensure_hba_file, postgres_ids())
    except Exception as e:
        raise EmbeddedError(f"preparing the addons failed: {e}") from e


async def _ensure_database(database_url: str) -> None:
    """Create the platform database (connecting to the maintenance one) if it is missing."""
    conn = await asyncpg.connect(database_url.rsplit("/", 1)[0] + "/postgres")
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
            log.info("created database", extra={"database": DATABASE})
    finally:
        await conn.close()
