"""The services of `homeport up`, forked from one process that imported their code once.

Ten services each importing aiohttp, asyncpg, nats and our libraries keep ten copies of the
same modules: most of their memory at rest. Here one process, the fork server, imports once
the modules two services or more import at start (the list the byte-code warming notes,
deploy/bytecode.py `preload`; a service's own code it imports itself, after the fork), freezes
what it holds out of the garbage collector's way (`gc.freeze`: a collection in a child would
otherwise write to, and so copy, every page of it), and forks a child for each service start
the supervisor asks for. The pages of the imported code stay shared between the children until
one writes them: PSS counts each shared page once between them. Measured with `python -m bench
idle_memory` (the platform at rest, same machine and hour): 298.5 MiB with every service started
on its own, 238.6 MiB forked (the Python processes: 248.8 -> 187.9 MiB, the fork server's 15.2
included). The start of the stack is no quicker (`stack_start`, same hour: 1.22 s started on
their own, 1.23 s forked): the imports move, they do not go.

Each child then becomes what `python -OO -m <module>` would have been: its own session, stdin
from /dev/null, stdout and stderr to its log, every other descriptor of the fork server closed,
the service's own environment (its credentials exist only in the child; the fork server is
started with the environment all services share and never holds one), and the module run as
`__main__`, named `hp-<name>` for `ps` (its command line stays the fork server's). Its exit
is the interpreter's ordinary exit (atexit, threads joined). What is read once per process
is the fork server's: the interpreter's PYTHON* settings (its path, the byte-code cache) and any
module's reading of the environment at import (none of ours; asyncio's debug switch), the same
for every service here. Randomness a module draws at import must be drawn again in a child
(`os.register_at_fork`, as `random` does and libs/events/envelope.py's correlation ids do).

The supervisor and the fork server talk over a socket pair (SOCK_SEQPACKET, one JSON message a
datagram). The supervisor asks `{"id", "module", "env", "cwd"}` with the log's descriptor; the
fork server answers `{"id", "pid"}` with a pidfd of the child (signals go through it, so a pid
reused after the child is reaped is never signalled), or `{"id", "error"}`; it reaps its
children and tells `{"exited": pid, "code"}` (a negative code: killed by that signal), as
asyncio's `returncode` does. It says `{"ready": ...}` once its imports are done. The supervisor
closing its end (a clean stop, or killed) ends the fork server; the children it forked run on,
and a supervisor killed leaves them to `reap_leftovers` as before.

What this changes: a service restarted after a crash runs the code the fork server imported at
the stack's start (source changed on disk since needs `homeport up` again, as the services that
kept running need it anyway); every service is forked from one address-space layout (they run as
one user here in any case: a server install runs each as its own unit, not through this).

`python -OO -m deploy.forkserver FD MODULE...` is the fork server itself (FD: its end of the
socket pair); `Forkserver` is the supervisor's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import importlib
import json
import logging
import os
import runpy
import selectors
import signal
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Forked", "Forkserver", "ForkserverError"]

log = logging.getLogger("homeport.stack")

_MAX_MESSAGE = 1 << 20  # a request carries a service's environment: a few KiB
_READY_DEADLINE_S = 120.0  # importing the services' shared modules, cold, on a slow machine
_STOP_DEADLINE_S = 5.0
_PR_SET_NAME = 15  # prctl(2)


class ForkserverError(Exception):
    """The fork server could not be started or could not fork a service."""


# -- the fork server (its own process) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Start:
    """What a forked child runs: `module` as __main__, with this environment and log."""

    module: str
    env: dict[str, str]
    cwd: str
    log_fd: int


def _send(sock: socket.socket, message: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
    socket.send_fds(sock, [json.dumps(message).encode()], list(fds))


def _preload(modules: Sequence[str]) -> list[str]:
    """Import `modules`; the names of those that failed (their service then fails as it would
    have alone, with its traceback in its own log). A name that a package puts in sys.modules
    itself (Cython's `_cython_3_*`, cffi's `_openssl`, `_cares`) cannot be imported on its own
    and sorts before that package: it is asked again once the others are imported."""
    failed = [name for name in modules if not _imported(name)]
    return [name for name in failed if not _imported(name)]


def _imported(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:  # any import error is the service's to report
        return False
    return True


def _serve(ctl: socket.socket, modules: Sequence[str]) -> _Start | None:
    """The fork server's loop. Returns in a forked child only (what it is to run); None when
    the supervisor has gone (its end of the socket closed)."""
    failed = _preload(modules)
    gc.collect()
    gc.freeze()  # what the imports made is never collected: no child copies it for that
    sel = selectors.DefaultSelector()
    sel.register(ctl, selectors.EVENT_READ, None)
    _send(ctl, {"ready": True, "modules": len(modules), "failed": failed})
    while True:
        for key, _ in sel.select():
            pid = key.data
            if pid is not None:  # a child exited: reap it and say so
                sel.unregister(key.fd)
                os.close(key.fd)
                _, status = os.waitpid(pid, 0)
                _send(ctl, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})
                continue
            try:
                raw, fds, _, _ = socket.recv_fds(ctl, _MAX_MESSAGE, 1)
            except ConnectionResetError:  # the supervisor closed its end with a message unread
                return None
            if not raw:
                for fd in fds:
                    os.close(fd)
                return None
            start = _fork(ctl, sel, raw, fds)
            if start is not None:
                return start


def _fork(
    ctl: socket.socket, sel: selectors.BaseSelector, raw: bytes, fds: list[int]
) -> _Start | None:
    """Fork the child a request asks for; returns its _Start in the child, None here."""
    ask: dict[str, Any] = {}
    try:
        ask = json.loads(raw)
        if len(fds) != 1:
            raise ForkserverError("a start needs the service's log descriptor")
        if threading.active_count() != 1:
            raise ForkserverError("the fork server has threads: it cannot fork safely")
        start = _Start(str(ask["module"]), dict(ask["env"]), str(ask["cwd"]), fds[0])
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        pid = os.fork()
    except Exception as e:  # told to the supervisor, which logs it
        for fd in fds:
            os.close(fd)
        _send(ctl, {"id": ask.get("id"), "error": f"{type(e).__name__}: {e}"})
        return None
    if pid == 0:
        # the Python objects holding the fork server's descriptors close them here, before
        # anything else could be given those numbers
        sel.close()
        ctl.close()
        return start
    try:
        pidfd = os.pidfd_open(pid)
    except OSError as e:  # no pidfds here: the child is not kept, the supervisor runs it alone
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        _send(ctl, {"id": ask["id"], "error": f"pidfd_open: {e}"})
        return None
    finally:
        os.close(start.log_fd)
    sel.register(pidfd, selectors.EVENT_READ, pid)
    _send(ctl, {"id": ask["id"], "pid": pid}, [pidfd])
    return None


def _become(start: _Start) -> None:
    """In the child: what `python -OO -m <module>` would have been, then run it."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(start.log_fd, 1)
    os.dup2(start.log_fd, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the pidfds of the other children, the log's
    os.chdir(start.cwd)
    os.environ.clear()
    os.environ.update(start.env)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _name_process("hp-" + start.module.rsplit(".", 1)[-1])
    sys.argv = [start.module]
    runpy.run_module(start.module, run_name="__main__", alter_sys=True)


def _name_process(name: str) -> None:
    """The name `ps` and `top` show (/proc/PID/comm, 15 bytes at most): the command line stays
    the fork server's, so this is how a service is told apart."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def main(argv: Sequence[str]) -> int:
    ctl = socket.socket(fileno=int(argv[0]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor stops it, not a terminal
    start = _serve(ctl, argv[1:])
    if start is None:
        return 0
    _become(start)
    return 0


# -- the supervisor's side --------------------------------------------------------------------


@dataclass(eq=False)
class Forked:
    """A child of the fork server: its pid, a pidfd to signal it by, its exit code to come."""

    pid: int
    pidfd: int
    exited: asyncio.Future[int] = field(repr=False)

    def signal(self, sig: int) -> None:
        """Send `sig` unless it has exited (a reaped pid is never signalled: the pidfd)."""
        if self.exited.done():
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, sig)

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


class Forkserver:
    """The supervisor's fork server: started on first use (and again if it died), closed with
    the stack. `spawn` forks a service from it."""

    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str], modules: Sequence[str], log_path: Path
    ) -> None:
        self.argv = list(argv)  # python and its flags: the services' own (deploy/bytecode.py)
        self.env = dict(env)
        self.modules = list(modules)
        self.log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._lock = asyncio.Lock()
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._asked: dict[int, asyncio.Future[Forked]] = {}
        self._children: dict[int, Forked] = {}
        self._next_id = 0
        self._failed: str | None = None
        self._closed = False
        self._down: asyncio.Event | None = None  # set once it is gone (`_end` waits for it)

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    async def start(self) -> None:
        """Start the fork server unless it runs; returns once its imports are done."""
        async with self._lock:
            if self._sock is not None:
                return
            if self._failed is not None:  # once: every service then starts on its own
                raise ForkserverError(self._failed)
            if self._closed:
                raise ForkserverError("the fork server was closed with the stack")
            loop = asyncio.get_running_loop()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            ours.setblocking(False)
            fd = os.open(
                self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
            )
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *self.argv,
                    "-m",
                    "deploy.forkserver",
                    str(theirs.fileno()),
                    *self.modules,
                    env=self.env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=fd,
                    stderr=fd,
                    pass_fds=(theirs.fileno(),),
                    start_new_session=True,
                )
            except OSError:
                ours.close()
                raise
            finally:
                os.close(fd)
                theirs.close()
            self._sock = ours
            self._ready = loop.create_future()
            loop.add_reader(ours.fileno(), self._on_message)
            try:
                ready = await asyncio.wait_for(asyncio.shield(self._ready), _READY_DEADLINE_S)
            except (TimeoutError, ForkserverError) as e:
                await self._end()
                self._failed = (
                    f"the fork server did not get ready: {e or 'timed out'} (see {self.log_path})"
                )
                raise ForkserverError(self._failed) from None
            if ready.get("failed"):
                log.warning("the fork server could not import", extra={"failed": ready["failed"]})

    async def spawn(self, module: str, env: Mapping[str, str], log_fd: int, cwd: str) -> Forked:
        """Fork `module` with `env`, its output to `log_fd` (a copy is sent: the caller keeps
        and closes its own). ForkserverError if the fork server cannot."""
        await self.start()
        sock = self._sock
        if sock is None:
            raise ForkserverError("the fork server has stopped")
        self._next_id += 1
        ask_id = self._next_id
        answer: asyncio.Future[Forked] = asyncio.get_running_loop().create_future()
        self._asked[ask_id] = answer
        message = {"id": ask_id, "module": module, "env": dict(env), "cwd": cwd}
        try:
            _send(sock, message, [log_fd])
            return await answer
        finally:
            self._asked.pop(ask_id, None)

    def _on_message(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            raw, fds, _flags, _addr = socket.recv_fds(sock, _MAX_MESSAGE, 1)
        except BlockingIOError:
            return
        except OSError:
            raw, fds = b"", []
        if not raw:  # the fork server has gone
            self._gone()
            return
        message = json.loads(raw)
        if "ready" in message:
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(message)
        elif "exited" in message:
            child = self._children.pop(int(message["exited"]), None)
            if child is not None and not child.exited.done():
                child.exited.set_result(int(message["code"]))
                child.close()  # nothing is signalled after its exit
        else:
            self._answered(message, fds)

    def _answered(self, message: Mapping[str, Any], fds: list[int]) -> None:
        """A start's answer. The child is known from here on, so an exit told right after it
        is not missed; one whose caller has gone (its start cancelled) is killed."""
        answer = self._asked.get(int(message.get("id") or 0))
        if "error" in message:
            if answer is not None and not answer.done():
                answer.set_exception(ForkserverError(str(message["error"])))
            return
        child = Forked(int(message["pid"]), fds[0], asyncio.get_running_loop().create_future())
        self._children[child.pid] = child
        if answer is None or answer.done():
            child.signal(signal.SIGKILL)
            return
        answer.set_result(child)

    def _gone(self) -> None:
        """The fork server exited: nothing more comes from it. Its children run on; each one's
        exit is then known from its pidfd alone, without a code (-1)."""
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._down is not None:
            self._down.set()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(ForkserverError("it exited"))
        for answer in self._asked.values():
            if not answer.done():
                answer.set_exception(ForkserverError("the fork server exited"))
        children, self._children = self._children, {}
        for child in children.values():
            if child.exited.done() or child.pidfd < 0:
                continue

            def ended(c: Forked = child) -> None:
                loop.remove_reader(c.pidfd)
                if not c.exited.done():
                    c.exited.set_result(-1)
                c.close()

            loop.add_reader(child.pidfd, ended)

    async def _end(self) -> None:
        """Stop the fork server. Our end is half-closed first: it answers every start it was
        sent before it sees the end and then exits, and those answers are read (the child of
        a start whose caller has gone is killed on its answer, `_answered`); then the process
        is waited for. Closing at once would leave such a child running, answered to nobody."""
        end = asyncio.get_running_loop().time() + _STOP_DEADLINE_S
        sock = self._sock
        if sock is not None:
            down = self._down = asyncio.Event()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(end):
                    await down.wait()
            if self._sock is not None:  # it did not close its end in time
                self._gone()
        proc = self._proc
        if proc is not None:
            try:
                async with asyncio.timeout_at(end):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()

    async def close(self) -> None:
        """End the fork server (the services it forked are stopped by then)."""
        async with self._lock:
            self._closed = True
            await self._end()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
