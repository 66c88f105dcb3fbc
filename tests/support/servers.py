"""What a test does when a server it needs is missing, and the pieces every test server shares:
a port free for TCP and UDP, starting one for a session, a child process writing to a log
until it answers, stopping a child process, removing a session's folder at its end."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeVar

import pytest

from deploy.embedded import free_port

__all__ = [
    "IN_CI",
    "free_udp_tcp_port",
    "need_server",
    "remove_tree",
    "spawn_logged",
    "started",
    "stop_process",
    "wait_answering",
]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need_server(what: str, err: Exception) -> NoReturn:
    """Under CI a missing server fails the run; elsewhere the skip says why."""
    msg = f"{what} unavailable: {err}"
    if IN_CI:
        pytest.fail(msg + " (CI=true: servers are required)", pytrace=False)
    print(f"SKIP: {msg}")
    pytest.skip(msg)


class _Server(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


_S = TypeVar("_S", bound=_Server)


def started(server: _S, what: str, *errors: type[Exception]) -> Iterator[_S]:
    """Body of a session fixture: `server` started (a skip, a failure under CI=true, if it
    raises OSError or one of `errors`), stopped at the end."""
    try:
        server.start()
    except (OSError, *errors) as e:
        need_server(what, e)
    yield server
    server.stop()


def _unescaped(field: str) -> str:
    """A path of /proc/self/mountinfo: space, tab, newline and backslash are octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def remove_tree(root: Path) -> None:
    """Remove a folder a session made (its servers' data: a Postgres cluster is hundreds of
    MB; left behind by every run, they fill the disk, and the disk alerts of the notify tests
    then fire). Never into a file system mounted below it: with a mount there, the folder is
    left, and said so."""
    root = root.resolve()
    try:
        with open("/proc/self/mountinfo") as f:
            points = [Path(_unescaped(line.split()[4])) for line in f]
    except OSError:
        points = []
    mounted = [p for p in points if p == root or root in p.parents]
    if mounted:
        print(f"NOTE: {root} left in place: {mounted[0]} is mounted below it")
        return
    shutil.rmtree(root, ignore_errors=True)


def free_udp_tcp_port() -> int:
    """A port on 127.0.0.1 free for both TCP and UDP right now, from the ports `free_port`
    hands out: below the kernel's ephemeral range, so no outgoing connection takes it before
    its server binds it (a CI run saw Pebble's HTTP-01 port, given by bind(0) at the session's
    start, taken by the time a test served the challenge there: "address already in use")."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError("no port free for both TCP and UDP on 127.0.0.1")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Terminate `proc` and reap it; killed if it has not exited within `timeout` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


def spawn_logged(argv: Sequence[str], log: Path, **popen: Any) -> subprocess.Popen[bytes]:
    """Start `argv` with no stdin, its stdout and stderr written to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, **popen
        )


def wait_answering(
    proc: subprocess.Popen[bytes],
    log: Path,
    probe: Callable[[], object],
    *,
    what: str,
    deadline_s: float,
    error: type[Exception] = OSError,
    step: float = 0.1,
) -> None:
    """Call `probe` until it returns without OSError. `error` with the tail of `log` if `proc`
    exits first, or (`proc` then stopped) if `deadline_s` seconds pass."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise error(f"{what} exited with {proc.returncode}: {_tail(log)}")
        try:
            probe()
            return
        except OSError:
            time.sleep(step)
    stop_process(proc)
    raise error(f"{what} did not answer within {deadline_s:g} s: {_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]
