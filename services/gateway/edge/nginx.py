"""The nginx adapter: check a rendered config, swap it in atomically, reload, run the master.

Layout under the prefix:
    conf -> generations/gNNNNNN   the live config (a symlink, swapped with one rename)
    generations/                  rendered configs; the live one and the one before are kept
    logs/  run/nginx.pid  temp/   what the model's log_dir, pid_file and temp_dir point at

nginx resolves `include sites/*.conf` against the directory of the `-c` file, so the same
rendered files are checked in their staging directory and served through the symlink.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import signal
import time
from pathlib import Path

from services.gateway.edge.render import EdgeModel, render
from services.gateway.errors import EdgeError

__all__ = ["EdgeError", "Nginx"]

_CHECK_DEADLINE = 30.0
_START_DEADLINE = 15.0
_RELOAD_DEADLINE = 15.0
_STOP_DEADLINE = 10.0
_POLL = 0.02
_KEEP_GENERATIONS = 2
_GENERATION = re.compile(r"g(\d{6})")
_FAILED = re.compile(r"\[(emerg|alert|crit)\]")
# A listen address taken by another process: nginx tries it 5 times, 500 ms apart, logging each
# failure, then gives the reload up with `_GAVE_UP`. Answering at the first line left the other
# tries to land in the next reload's part of the log, which then read as that reload failing.
_BIND_FAILED = "bind() to "
_GAVE_UP = "still could not bind()"
_PROBE = b"HEAD / HTTP/1.0\r\nHost: homeport-edge-probe.invalid\r\n\r\n"


def _default_user() -> str | None:
    """Worker user when we are root (www-data, else nobody); None otherwise."""
    if os.geteuid() != 0:
        return None
    for name in ("www-data", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise EdgeError("running as root needs a `www-data` or `nobody` user for nginx's workers")


def _tail(path: Path, start: int = 0, lines: int = 10) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _workers(master: int) -> dict[int, bool]:
    """Worker pids of `master` -> whether the worker still accepts (is not shutting down)."""
    out: dict[int, bool] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != master or fields[0] == "Z":
                continue
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").strip()
        except (OSError, IndexError, ValueError):
            continue
        if title.startswith(b"nginx: worker process"):
            out[int(entry.name)] = b"shutting down" not in title
    return out


def _message(stderr: str) -> str:
    """nginx -t's complaint without its banner lines."""
    keep = [
        line.removeprefix("nginx: ").strip()
        for line in stderr.splitlines()
        if line.strip() and "test failed" not in line and "test is successful" not in line
    ]
    return "; ".join(keep) or "(nginx printed nothing)"


def _write_tree(root: Path, files: dict[str, str]) -> None:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(mode=0o755, parents=True)
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        path.chmod(0o644)


class Nginx:
    """One nginx master with its own prefix: apply models to it, start and stop it."""

    def __init__(self, prefix: Path, binary: str = "nginx", user: str | None = None) -> None:
        self.prefix = prefix.resolve()
        self.binary = binary
        self.user = user if user is not None else _default_user()
        self._proc: asyncio.subprocess.Process | None = None
        self._model: EdgeModel | None = None
        self._lock = asyncio.Lock()

    # -- where things are ------------------------------------------------------------------

    @property
    def conf_dir(self) -> Path:
        return self.prefix / "conf"

    @property
    def conf_file(self) -> Path:
        return self.conf_dir / "nginx.conf"

    @property
    def log_dir(self) -> Path:
        return self.prefix / "logs"

    @property
    def pid_file(self) -> Path:
        return self.prefix / "run" / "nginx.pid"

    @property
    def temp_dir(self) -> Path:
        return self.prefix / "temp"

    @property
    def error_log(self) -> Path:
        return self.log_dir / "error.log"

    @property
    def _generations(self) -> Path:
        return self.prefix / "generations"

    @property
    def _stderr_log(self) -> Path:
        return self.log_dir / "nginx.stderr"

    @property
    def pid(self) -> int | None:
        """The master's pid while it runs."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def model(self) -> EdgeModel | None:
        """The last model applied."""
        return self._model

    # -- apply -----------------------------------------------------------------------------

    def _check_layout(self, model: EdgeModel) -> None:
        wrong = [
            f"{name}={got} (this nginx uses {want})"
            for name, got, want in (
                ("log_dir", model.log_dir, self.log_dir),
                ("pid_file", model.pid_file, self.pid_file),
                ("temp_dir", model.temp_dir, self.temp_dir),
                ("user", model.user, self.user),
            )
            if got != want
        ]
        if wrong:
            raise EdgeError(
                f"the model does not match nginx under {self.prefix}: {', '.join(wrong)}; "
                "build it with this Nginx's log_dir, pid_file, temp_dir and user"
            )

    def _next_generation(self) -> Path:
        numbers = [0]
        with contextlib.suppress(FileNotFoundError):
            for p in self._generations.iterdir():
                m = _GENERATION.fullmatch(p.name)
                if m:
                    numbers.append(int(m.group(1)))
        return self._generations / f"g{max(numbers) + 1:06d}"

    def _live(self) -> Path | None:
        """The generation the live symlink points at, if any."""
        try:
            return self.conf_dir.parent / os.readlink(self.conf_dir)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise EdgeError(
                f"{self.conf_dir} is not a symlink made by Homeport: move it away and apply again"
            ) from e

    def _point_to(self, generation: Path) -> None:
        tmp = self.prefix / "conf.new"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(generation.relative_to(self.prefix), tmp)
        os.replace(tmp, self.conf_dir)  # atomic: readers see the old or the new, never neither
        fd = os.open(self.prefix, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _prune(self, keep: set[Path]) -> None:
        gens = sorted(p for p in self._generations.iterdir() if _GENERATION.fullmatch(p.name))
        for p in gens[:-_KEEP_GENERATIONS]:
            if p not in keep:
                shutil.rmtree(p, ignore_errors=True)

    async def _check(self, conf: Path) -> None:
        argv = [self.binary, "-t", "-q", "-e", "stderr", "-p", f"{self.prefix}/", "-c", str(conf)]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as e:
            raise EdgeError(f"cannot run {self.binary}: {e}: install nginx (>= 1.19.5)") from e
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), _CHECK_DEADLINE)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise EdgeError(
                f"nginx -t took over {_CHECK_DEADLINE:.0f} s: is the disk hung?"
            ) from None
        if proc.returncode != 0:
            raise EdgeError(
                f"nginx refused the new configuration: {_message(out.decode(errors='replace'))}"
                " — the running configuration is unchanged: fix that and apply again"
            )

    async def apply(self, model: EdgeModel) -> None:
        """Render, check with `nginx -t`, swap in atomically and reload; EdgeError if refused."""
        self._check_layout(model)
        try:
            files = render(model)
        except ValueError as e:
            raise EdgeError(f"the edge model is invalid: {e}") from e
        async with self._lock:
            for d in (self.log_dir, self.pid_file.parent, self.temp_dir, self._generations):
                d.mkdir(mode=0o755, parents=True, exist_ok=True)
            old = self._live()
            staging = self._next_generation()
            await asyncio.to_thread(_write_tree, staging, files)
            try:
                await self._check(staging / "nginx.conf")
            except EdgeError:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            self._point_to(staging)
            if self.running:
                try:
                    await self._reload()
                except EdgeError:
                    if old is not None:
                        self._point_to(old)  # on disk again what is serving
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
            self._model = model
            self._prune({staging} if old is None else {staging, old})

    async def _reload(self) -> None:
        """SIGHUP the master; wait until new workers run and the old ones stopped accepting."""
        proc = self._proc
        assert proc is not None
        before = set(_workers(proc.pid))
        offset = _size(self.error_log)
        proc.send_signal(signal.SIGHUP)
        end = time.monotonic() + _RELOAD_DEADLINE
        settled = 0
        while time.monotonic() < end:
            await asyncio.sleep(_POLL)
            if proc.returncode is not None:
                raise EdgeError(
                    f"nginx exited with code {proc.returncode} on reload: "
                    f"{_tail(self.error_log, offset) or _tail(self._stderr_log)}"
                )
            failed = [
                line
                for line in _tail(self.error_log, offset, 50).splitlines()
                if _FAILED.search(line)
            ]
            if failed and not _still_binding(failed):
                raise EdgeError(
                    f"nginx did not take the new configuration and keeps the old one: "
                    f"{'; '.join(failed[-3:])} — fix that and apply again"
                )
            now = _workers(proc.pid)
            fresh = [p for p, accepting in now.items() if p not in before and accepting]
            stale = [p for p, accepting in now.items() if p in before and accepting]
            # twice in a row: an old worker sets its title just before it stops accepting
            settled = settled + 1 if fresh and not stale else 0
            if settled >= 2:
                return
        raise EdgeError(
            f"nginx did not finish reloading within {_RELOAD_DEADLINE:.0f} s; "
            f"its error log {self.error_log} says: {_tail(self.error_log, offset) or '(nothing)'}"
        )

    # -- process ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Run the master as our child (foreground) until the HTTP port answers."""
        async with self._lock:
            if self.running:
                return
            model = self._model
            if model is None or not self.conf_file.exists():
                raise EdgeError(f"no configuration applied to {self.prefix}: call apply() first")
            argv = [
                self.binary,
                "-e",
                "stderr",
                "-p",
                f"{self.prefix}/",
                "-c",
                str(self.conf_file),
                "-g",
                "daemon off;",
            ]
            self.log_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
            offset = _size(self._stderr_log)
            out = os.open(self._stderr_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,  # its own group: stop() can reach the workers
                )
            except OSError as e:
                raise EdgeError(f"cannot run {self.binary}: {e}: install nginx") from e
            finally:
                os.close(out)
            try:
                await self._wait_answering(model, offset)
            except BaseException:
                await self._stop_locked()
                raise

    async def _wait_answering(self, model: EdgeModel, offset: int) -> None:
        proc = self._proc
        assert proc is not None
        addr = model.bind[0] if model.bind else "127.0.0.1"
        addr = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(addr, addr)  # noqa: S104 - a mapping
        end = time.monotonic() + _START_DEADLINE
        while time.monotonic() < end:
            if proc.returncode is not None:
                raise EdgeError(
                    f"nginx exited with code {proc.returncode} at start: "
                    f"{_tail(self._stderr_log, offset) or _tail(self.error_log)}"
                )
            if await _answers(addr, model.http_port):
                return
            await asyncio.sleep(_POLL)
        raise EdgeError(
            f"nginx did not answer on {addr}:{model.http_port} within {_START_DEADLINE:.0f} s: "
            f"{_tail(self._stderr_log, offset) or _tail(self.error_log) or '(no log)'}"
        )

    async def stop(self) -> None:
        """Graceful quit (in-flight requests finish), then terminate, then kill the group."""
        async with self._lock:
            await self._stop_locked()

    async def _stop_locked(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        died = proc.returncode is not None  # on its own: its workers may be left
        try:
            for sig in (signal.SIGQUIT, signal.SIGTERM):
                if proc.returncode is not None:
                    break
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), _STOP_DEADLINE)
        except BaseException:
            # cancelled while nginx finishes requests in flight (a service's drain ran out):
            # nothing may be left running, so the group goes at once
            _kill_group(proc.pid)
            raise
        if died or proc.returncode is None:
            _kill_group(proc.pid)
        await proc.wait()


def _kill_group(pid: int) -> None:
    """SIGKILL to nginx's master and its workers (its process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _answers(host: str, port: int) -> bool:
    """True once a worker handled a request (the default server closes without an answer)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(_PROBE)
        await writer.drain()
        await asyncio.wait_for(reader.read(), 1.0)
        return True
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _still_binding(failed: list[str]) -> bool:
    """Whether nginx is still retrying a busy address of this reload (it may yet succeed, or
    give up): every failure is a bind's, and none says it gave up."""
    return all(_BIND_FAILED in line for line in failed) and not any(
        _GAVE_UP in line for line in failed
    )
