"""The fork server of `homeport up` (deploy/forkserver.py): a service forked from it is what
`python -OO -m <module>` would have been, its exit and signals reach the supervisor, and the
imported code stays shared between the services."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import signal
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from deploy.forkserver import Forkserver, ForkserverError
from deploy.supervision import ServiceRunner
from tests.support.procs import parent_pid
from tests.support.stateful import real_run_settings
from tests.support.waits import wait_until

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")

# Writes what it sees as a service to $OUT, then exits with $CODE.
_PROBE = """
import json, os, sys
from libs.events.envelope import uuid7_str
seen = {
    "ids": [uuid7_str()[-12:] for _ in range(3)],  # random bits, not the time
    "name": __name__,
    "env": dict(os.environ),
    "cwd": os.getcwd(),
    "stdin": sys.stdin.read(),
    "fds": sorted(int(f) for f in os.listdir("/proc/self/fd")),
    "session": os.getsid(0) == os.getpid(),
    "optimize": sys.flags.optimize,
    "argv": sys.argv,
    "comm": open("/proc/self/comm").read().strip(),
    "sigint": repr(__import__("signal").getsignal(__import__("signal").SIGINT)),
}
with open(os.environ["OUT"] + ".tmp", "w") as f:
    json.dump(seen, f)
os.rename(os.environ["OUT"] + ".tmp", os.environ["OUT"])
print("to the log", flush=True)
print("and its errors", file=sys.stderr, flush=True)
if os.environ.get("FAIL"):
    raise RuntimeError("failing on purpose")
sys.exit(int(os.environ.get("CODE", "0")))
"""

# Waits for a signal: SIGTERM ends it unless $STUBBORN (then only SIGKILL does).
_WAITER = """
import os, signal, sys, time
if os.environ.get("STUBBORN"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(os.environ["OUT"], "w") as out:
    out.write(str(os.getpid()))
while True:
    time.sleep(60)
"""

_BROKEN = "raise ImportError('broken on purpose')\n"


@pytest.fixture
def code(tmp_path: Path) -> Path:
    """A folder of modules the fork server can import: fsprobe, fswaiter, fsbroken."""
    folder = tmp_path / "code"
    folder.mkdir()
    (folder / "fsprobe.py").write_text(_PROBE)
    (folder / "fswaiter.py").write_text(_WAITER)
    (folder / "fsbroken.py").write_text(_BROKEN)
    return folder


@pytest.fixture
async def server(tmp_path: Path, code: Path) -> AsyncIterator[Forkserver]:
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{REPO}:{code}", "SHARED": "yes"}
    fs = Forkserver(
        [sys.executable, "-OO"],
        env,
        ["libs.events.envelope", "fsprobe_missing", "fsbroken"],
        tmp_path / "fs.log",
    )
    try:
        yield fs
    finally:
        await fs.close()


def _runner(tmp_path: Path, fs: Forkserver, module: str, **env: str) -> ServiceRunner:
    argv = [sys.executable, "-OO", "-m", module]
    return ServiceRunner(argv, env, tmp_path / f"{module}.log", module=module, forkserver=fs)


async def _until(cond: Callable[[], object], what: str, deadline: float = 20) -> None:
    async def check() -> object:
        return cond()

    await wait_until(check, deadline, what)


async def _seen(out: Path) -> dict[str, object]:
    await _until(out.exists, f"{out} written by the service")
    return dict(json.loads(out.read_text()))


async def test_a_forked_service_is_what_python_m_would_have_been(
    tmp_path: Path, server: Forkserver
) -> None:
    out = tmp_path / "seen.json"
    cwd = os.getcwd()
    runner = _runner(tmp_path, server, "fsprobe", OUT=str(out), CODE="3", HP_OWN="secret-x")
    await runner.start()
    pid = runner.pid
    assert pid is not None and server.pid is not None and pid != server.pid
    assert await asyncio.wait_for(runner.wait(), 20) == 3  # its exit code reaches us
    assert runner.pid is None
    seen = await _seen(out)
    assert seen["name"] == "__main__"
    assert seen["env"] == {"OUT": str(out), "CODE": "3", "HP_OWN": "secret-x"}  # its own only
    assert seen["cwd"] == cwd and seen["stdin"] == ""
    assert seen["fds"] == [0, 1, 2, 3]  # 3: the listing's own, nothing of the fork server's
    assert seen["session"] is True and seen["optimize"] == 2
    assert seen["sigint"] == repr(signal.default_int_handler)
    assert seen["comm"] == "hp-fsprobe"  # what ps shows
    log = (tmp_path / "fsprobe.log").read_text()
    assert "to the log" in log and "and its errors" in log
    # the fork server never held the service's environment
    environ = Path(f"/proc/{server.pid}/environ").read_bytes()
    assert b"secret-x" not in environ and b"SHARED=yes" in environ


async def test_a_child_s_pidfd_is_closed_at_its_exit_and_a_closed_fork_server_starts_nothing(
    tmp_path: Path, server: Forkserver
) -> None:
    fd = os.open(tmp_path / "direct.log", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        child = await server.spawn("fsprobe", {"OUT": str(tmp_path / "d.json")}, fd, os.getcwd())
        assert await asyncio.wait_for(child.exited, 20) == 0
        assert child.pidfd == -1  # not kept open for the life of the stack
        await server.close()
        assert server.pid is None
        with pytest.raises(ForkserverError, match="closed"):
            await server.spawn("fsprobe", {"OUT": str(tmp_path / "e.json")}, fd, os.getcwd())
    finally:
        os.close(fd)
    assert not (tmp_path / "e.json").exists()


async def test_two_forked_services_draw_their_own_random_ids(
    tmp_path: Path, server: Forkserver
) -> None:
    """The correlation ids' generator is seeded once per process at import: a child forked
    from the fork server that imported it seeds its own."""
    seen = []
    for name in ("one", "two"):
        out = tmp_path / f"{name}.json"
        runner = _runner(tmp_path, server, "fsprobe", OUT=str(out))
        await runner.start()
        assert await asyncio.wait_for(runner.wait(), 20) == 0
        seen.append((await _seen(out))["ids"])
    assert seen[0] != seen[1], seen


async def test_a_failing_or_unimportable_service_exits_with_its_traceback_in_its_log(
    tmp_path: Path, server: Forkserver
) -> None:
    failing = _runner(tmp_path, server, "fsprobe", OUT=str(tmp_path / "f.json"), FAIL="1")
    await failing.start()
    assert await asyncio.wait_for(failing.wait(), 20) == 1
    assert "RuntimeError: failing on purpose" in (tmp_path / "fsprobe.log").read_text()
    broken = _runner(tmp_path, server, "fsbroken")
    await broken.start()
    assert await asyncio.wait_for(broken.wait(), 20) == 1
    assert "ImportError: broken on purpose" in (tmp_path / "fsbroken.log").read_text()
    # the fork server itself still serves
    again = _runner(tmp_path, server, "fsprobe", OUT=str(tmp_path / "g.json"))
    await again.start()
    assert await asyncio.wait_for(again.wait(), 20) == 0


async def test_stop_terms_then_kills_and_signals_never_reach_a_reaped_pid(
    tmp_path: Path, server: Forkserver
) -> None:
    polite = _runner(tmp_path, server, "fswaiter", OUT=str(tmp_path / "p"))
    stubborn = _runner(tmp_path, server, "fswaiter", OUT=str(tmp_path / "s"), STUBBORN="1")
    await polite.start()
    await stubborn.start()
    await _until(lambda: (tmp_path / "p").exists() and (tmp_path / "s").exists(), "both up")
    assert await polite.stop(5) is False
    assert await polite.wait() == -signal.SIGTERM
    assert await stubborn.stop(0.5) is True
    assert await stubborn.wait() == -signal.SIGKILL
    assert await polite.stop(5) is False  # stopped already: nothing is signalled


async def test_a_start_whose_caller_left_leaves_no_service_running(
    tmp_path: Path, server: Forkserver
) -> None:
    await server.start()
    out = tmp_path / "w"
    runner = _runner(tmp_path, server, "fswaiter", OUT=str(out))
    start = asyncio.ensure_future(runner.start())
    await asyncio.sleep(0)  # the request is sent; the caller leaves before the answer
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start

    def orphans() -> list[int]:
        assert server.pid is not None
        kids = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        return [int(k) for k in kids]

    await _until(lambda: not orphans(), "the orphaned service killed and reaped")


async def test_a_start_cut_short_by_the_stack_closing_leaves_no_service_running(
    tmp_path: Path, server: Forkserver
) -> None:
    """The stack closes while a start it gave up on is still with the fork server (sent, not
    answered): the child forked for it is killed, not left running without a supervisor."""
    for i in range(2):
        await server.start()
        out = tmp_path / f"cut{i}"
        runner = _runner(tmp_path, server, "fswaiter", OUT=str(out))
        start = asyncio.ensure_future(runner.start())
        while not server._asked:  # until the request is sent, not answered
            await asyncio.sleep(0)
        start.cancel()
        with pytest.raises(asyncio.CancelledError):
            await start
        await server.close()  # at once: the answer is not in yet
        # a child that ran wrote its pid (it may have been killed before it could)
        with contextlib.suppress(AssertionError):
            await _until(lambda o=out: o.exists() and o.read_text(), "the child's pid", 1)
        if out.exists():
            pid = int(out.read_text())
            await _until(lambda p=pid: not _alive(p), f"the cut start's child {pid} ended", 10)
        server._closed = False  # the same fork server object, started again


async def test_the_fork_server_gone_its_services_exits_are_still_seen_and_it_comes_back(
    tmp_path: Path, server: Forkserver
) -> None:
    out = tmp_path / "w"
    runner = _runner(tmp_path, server, "fswaiter", OUT=str(out))
    await runner.start()
    await _until(out.exists, "the service up")
    first = server.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    await _until(lambda: server.pid is None, "the fork server's death seen")
    assert runner.pid is not None  # the service runs on
    waiting = asyncio.ensure_future(runner.wait())
    os.kill(runner.pid, signal.SIGTERM)
    assert await asyncio.wait_for(waiting, 20) == -1  # its exit, without a code
    again = _runner(tmp_path, server, "fsprobe", OUT=str(tmp_path / "a.json"))
    await again.start()
    assert server.pid not in (None, first)
    assert await asyncio.wait_for(again.wait(), 20) == 0


async def test_a_fork_server_without_a_pidfd_for_its_child_kills_it_and_the_service_runs_alone(
    tmp_path: Path, server: Forkserver, code: Path
) -> None:
    """pidfd_open refused after the fork (here: no descriptor left, EMFILE): the child is not
    left running beside the service the supervisor then starts on its own."""
    await server.start()
    pid = server.pid
    assert pid is not None
    # room for the log's descriptor it receives (the lowest free number), none for a pidfd
    used = {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}
    free = [n for n in range(len(used) + 2) if n not in used]
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (free[1], free[1]))
    out = tmp_path / "alone.json"
    runner = _runner(tmp_path, server, "fsprobe", OUT=str(out), PYTHONPATH=str(code))
    await runner.start()
    assert runner.pid is not None and parent_pid(runner.pid) == os.getpid()  # on its own
    assert await asyncio.wait_for(runner.wait(), 20) == 0
    assert server.pid == pid  # it serves on
    assert Path(f"/proc/{pid}/task/{pid}/children").read_text().split() == []


async def test_a_fork_server_that_cannot_start_leaves_services_starting_on_their_own(
    tmp_path: Path, code: Path
) -> None:
    env = {"PATH": os.environ["PATH"]}
    # an interpreter that exits at once instead of serving
    fs = Forkserver([sys.executable, "-c", "raise SystemExit(5)"], env, [], tmp_path / "fs.log")
    try:
        with pytest.raises(ForkserverError, match="did not get ready"):
            await fs.start()
        out = tmp_path / "seen.json"
        argv = [sys.executable, "-OO", "-m", "fsprobe"]
        runner = ServiceRunner(
            argv,
            {"OUT": str(out), "PYTHONPATH": str(code), "CODE": "4"},
            tmp_path / "own.log",
            module="fsprobe",
            forkserver=fs,
        )
        await runner.start()  # on its own, warned about
        assert await asyncio.wait_for(runner.wait(), 20) == 4
        assert (await _seen(out))["env"]["PYTHONPATH"] == str(code)  # type: ignore[index]
        with pytest.raises(ForkserverError):  # not tried again for every service
            await fs.start()
    finally:
        await fs.close()


async def test_only_a_module_that_cannot_be_imported_is_warned_about(
    tmp_path: Path, code: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a package that registers a module under a name of its own, as Cython and cffi do: that
    # name sorts first and is not importable by itself, yet it is there once the package is
    (code / "fsregisters.py").write_text(
        "import sys, types\nsys.modules['_fsregistered'] = types.ModuleType('_fsregistered')\n"
    )
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{REPO}:{code}"}
    modules = ["_fsregistered", "fsbroken", "fsregisters", "libs.events.envelope"]
    fs = Forkserver([sys.executable, "-OO"], env, modules, tmp_path / "fs.log")
    try:
        with caplog.at_level(logging.WARNING, logger="homeport.stack"):
            await fs.start()
        warned = [r for r in caplog.records if r.getMessage() == "the fork server could not import"]
        assert [getattr(r, "failed", None) for r in warned] == [["fsbroken"]]
    finally:
        await fs.close()


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise AssertionError(f"no Pss for {pid}")


async def test_services_share_the_code_the_fork_server_imported(tmp_path: Path) -> None:
    """Four services importing aiohttp and asyncpg: forked, their memory (PSS, shared pages
    split) is well under that of the same four started on their own."""
    folder = tmp_path / "heavy"
    folder.mkdir()
    (folder / "heavy.py").write_text(
        textwrap.dedent("""
        import os, time, aiohttp.web, asyncpg
        open(os.environ["OUT"], "w").close()
        time.sleep(60)
        """)
    )
    base = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{REPO}:{folder}"}
    fs = Forkserver(
        [sys.executable, "-OO"],
        base,
        ["heavy_missing", "aiohttp.web", "asyncpg"],
        tmp_path / "fs.log",
    )
    totals = {}
    try:
        for how, server in (("forked", fs), ("alone", None)):
            runners = [
                ServiceRunner(
                    [sys.executable, "-OO", "-m", "heavy"],
                    {**base, "OUT": str(tmp_path / f"{how}{i}")},
                    tmp_path / f"{how}{i}.log",
                    module="heavy",
                    forkserver=server,
                )
                for i in range(4)
            ]
            for r in runners:
                await r.start()
            await _until(
                lambda h=how: all((tmp_path / f"{h}{i}").exists() for i in range(4)), how, 60
            )
            pids = [r.pid for r in runners]
            assert all(p is not None for p in pids)
            totals[how] = sum(_pss_kib(p) for p in pids if p is not None)
            if how == "forked":
                assert fs.pid is not None
                totals[how] += _pss_kib(fs.pid)  # the fork server's share counts too
            for r in runners:
                await r.stop(5)
    finally:
        await fs.close()
    assert totals["forked"] < 0.6 * totals["alone"], totals


async def test_random_starts_stops_and_kills_leave_every_service_accounted_for(
    tmp_path: Path, code: Path
) -> None:
    """Stateful: services started, stopped, killed from outside, started again, and the fork
    server itself killed, in any order. Each one is running exactly while its runner has a pid
    (a live process, a child of the fork server that forked it while that one runs); each exit
    gives the code of what ended it (or -1 once its fork server is gone); nothing outlives the
    run."""
    loop = asyncio.get_running_loop()
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": f"{REPO}:{code}"}
    server = Forkserver([sys.executable, "-OO"], env, ["fswaiter_missing"], tmp_path / "fs.log")
    seen_pids: set[int] = set()

    def call(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=60)

    class Services(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.runners: list[_Tracked] = []

        @rule(stubborn=st.booleans())
        def start(self, stubborn: bool) -> None:
            n = len(self.runners)
            out = tmp_path / f"ready{n}-{uuid4().hex[:6]}"
            extra = {"STUBBORN": "1"} if stubborn else {}
            runner = _runner(tmp_path, server, "fswaiter", OUT=str(out), **extra)
            self.runners.append(_Tracked(runner, out, stubborn))
            self._start(self.runners[-1])

        def _start(self, t: _Tracked) -> None:
            with contextlib.suppress(FileNotFoundError):
                t.out.unlink()
            call(t.runner.start())
            assert t.runner.pid is not None
            seen_pids.add(t.runner.pid)
            t.forked_by = server.pid
            call(_until(t.out.exists, "the service ready"))

        def _running(self) -> list[_Tracked]:
            return [t for t in self.runners if t.runner.pid is not None]

        def _expect(self, t: _Tracked, signalled: int) -> None:
            code = call(asyncio.wait_for(t.runner.wait(), 20))
            alive = t.forked_by is not None and t.forked_by == server.pid
            assert code == (-signalled if alive else -1), (code, signalled, alive)

        @precondition(lambda self: bool(self._running()))
        @rule(i=st.integers(min_value=0))
        def stop(self, i: int) -> None:
            t = self._running()[i % len(self._running())]
            killed = call(t.runner.stop(0.3 if t.stubborn else 10))
            assert killed is t.stubborn
            self._expect(t, signal.SIGKILL if t.stubborn else signal.SIGTERM)

        @precondition(lambda self: bool(self._running()))
        @rule(i=st.integers(min_value=0))
        def kill_from_outside(self, i: int) -> None:
            t = self._running()[i % len(self._running())]
            assert t.runner.pid is not None
            os.kill(t.runner.pid, signal.SIGKILL)
            self._expect(t, signal.SIGKILL)

        @precondition(lambda self: any(t.runner.pid is None for t in self.runners))
        @rule(i=st.integers(min_value=0))
        def start_again(self, i: int) -> None:
            stopped = [t for t in self.runners if t.runner.pid is None]
            self._start(stopped[i % len(stopped)])

        @precondition(lambda self: server.pid is not None)
        @rule()
        def kill_the_fork_server(self) -> None:
            assert server.pid is not None
            os.kill(server.pid, signal.SIGKILL)
            call(_until(lambda: server.pid is None, "the fork server's death seen"))

        @invariant()
        def running_exactly_while_it_has_a_pid(self) -> None:
            for t in self.runners:
                pid = t.runner.pid
                if pid is None:
                    continue
                assert Path(f"/proc/{pid}").exists(), pid
                if t.forked_by is not None and t.forked_by == server.pid:
                    assert parent_pid(pid) == server.pid

        def teardown(self) -> None:
            for t in self._running():
                call(t.runner.stop(0.3))

    config = real_run_settings(examples=6, steps=8)
    try:
        await asyncio.to_thread(run_state_machine_as_test, Services, settings=config)
    finally:
        await server.close()
    await _until(lambda: not [p for p in seen_pids if _alive(p)], "every service gone")


@dataclass(eq=False)
class _Tracked:
    runner: ServiceRunner
    out: Path
    stubborn: bool
    forked_by: int | None = None


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
