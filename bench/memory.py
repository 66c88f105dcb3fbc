"""Benchmark of the platform's memory at rest: `idle_memory`.

The whole platform is started as `make run` does (`homeport up` in a temporary data directory,
the tests' dockerd for the apps service), setup is completed with the one-time setup token
(POST /api/v1/setup), and once it has settled with no apps the PSS (Pss of
/proc/<pid>/smaps_rollup: shared pages split between the processes sharing them) of every part
is summed: the Postgres clusters that run, with their backends, NATS, nginx (the gateway's
children), the relay and every service, and the fork server the services are forked from
(deploy/forkserver.py). Docker, apps and the `homeport up` supervisor itself are
not counted (the supervisor is shown apart: under systemd there is none). What runs is what is
measured: the addon Postgres (apps' databases) starts only once an app needs a database, so with
no apps it does not run and is not counted (nor in the baseline).

The baseline, in the same round: one bare Python process per service (`import asyncio, time`,
then sleep), all running at once, plus the same Postgres/NATS/nginx processes measured above.
The issue's target is absolute: at most 250 MiB for the platform (median of the rounds, 3 at
most: each starts a whole stack). The ratio to the baseline is printed too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import Bench, BenchError, Benchmark, Result, say
from deploy.state import process_alive, read_state

__all__ = ["BENCHMARKS", "PartMemory", "measure_parts", "pss_mib"]

_TARGET = 250.0  # MiB of PSS, at most
_ROUNDS = 3
_ROOT = Path(__file__).resolve().parents[1]
_UP_DEADLINE_S = 180.0
# after setup: projections caught up, timers run, idle connections closed (IDLE_CONNECTION_S)
_SETTLE_S = 45.0
_SAMPLES = 3  # PSS samples after settling, 2 s apart; the median is kept
_BARE = "import asyncio, sys, time; print('ready', flush=True); time.sleep(3600)"
_ADMIN = {
    "username": "admin",
    "email": "admin@example.test",
    "password": "a long bench passphrase for setup",
}
# Parts counted as "the same Postgres/NATS/nginx" of the baseline.
_SERVERS = ("postgres", "addon-postgres", "nats", "nginx")
_NOT_COUNTED = ("docker",)
_SERVER_COMMS = ("postgres", "nats-server", "nginx")


def pss_mib(pid: int) -> float:
    """PSS of one process in MiB (0 when it is gone or unreadable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return 0.0
    return 0.0


def _children_of() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _tree(pid: int, children: Mapping[int, list[int]]) -> Iterator[int]:
    todo = [pid]
    while todo:
        p = todo.pop()
        yield p
        todo.extend(children.get(p, ()))


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


PartMemory = dict[str, tuple[float, int]]  # part name -> (MiB of PSS, number of processes)


def measure_parts(state: Mapping[str, Any]) -> PartMemory:
    """PSS per part of a running stack (`stack.json`): each part's process and descendants.

    nginx, run by the gateway, is its own entry; so is the supervisor (`homeport up`), and
    the fork server the services are forked from (deploy/forkserver.py: it is not a part, and
    its share of the code the services share is counted).
    """
    children = _children_of()
    out: dict[str, tuple[float, int]] = {}

    def add(name: str, pid: int) -> None:
        mib, n = out.get(name, (0.0, 0))
        out[name] = (mib + pss_mib(pid), n + 1)

    for part in state.get("parts", []):
        pid = part.get("pid")
        if not isinstance(pid, int) or part.get("name") in _NOT_COUNTED:
            continue
        for p in _tree(pid, children):
            add("nginx" if _comm(p) == "nginx" else str(part["name"]), p)
    forkserver = state.get("forkserver")
    if isinstance(forkserver, dict) and isinstance(forkserver.get("pid"), int):
        add("forkserver", int(forkserver["pid"]))  # the services' shared code: counted
    if isinstance(state.get("pid"), int):
        add("(supervisor)", int(state["pid"]))
    return out


def _stack_pids(state: Mapping[str, Any], children: Mapping[int, list[int]]) -> set[int]:
    pids: set[int] = set()
    for part in state.get("parts", []):
        if isinstance(part.get("pid"), int):
            pids.update(_tree(part["pid"], children))
    forkserver = state.get("forkserver")
    if isinstance(forkserver, dict) and isinstance(forkserver.get("pid"), int):
        pids.add(int(forkserver["pid"]))
    return pids


def _binary(pid: int) -> tuple[int, int] | None:
    """The file a process runs (device, inode): the same file maps the same pages."""
    try:
        st = os.stat(f"/proc/{pid}/exe")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def strangers(state: Mapping[str, Any]) -> list[str]:
    """Processes outside the stack running the very binary of one of its servers (Postgres,
    NATS, nginx). PSS splits a shared page between every process mapping it, theirs too: while
    they run, the platform's figure is lower than it is alone (seen: 15 MiB less with a second
    stack's Postgres and NATS running)."""
    children = _children_of()
    ours = _stack_pids(state, children)
    servers = {b for p in ours if _comm(p) in _SERVER_COMMS and (b := _binary(p)) is not None}
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in ours:
            pid = int(entry.name)
            if _comm(pid) in _SERVER_COMMS and _binary(pid) in servers:
                found.append(f"{_comm(pid)} {pid}")
    return found


def _counted(parts: PartMemory) -> float:
    return sum(mib for name, (mib, _) in parts.items() if not name.startswith("("))


def _servers(parts: PartMemory) -> float:
    return sum(parts.get(name, (0.0, 0))[0] for name in _SERVERS)


def _services(state: Mapping[str, Any]) -> list[str]:
    return [p["name"] for p in state.get("parts", []) if p.get("kind") == "service"]


class _Stack:
    """A `homeport up` child in a temporary data directory; stopped and removed at the end."""

    def __init__(self, docker_url: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="hp-bench-mem-"))
        self.root.chmod(0o755)  # as root, the postgres user must reach its data dir through this
        self.data = self.root / "data"
        self.out = self.root / "up.out"
        self.err = self.root / "up.err"
        self.docker_url = docker_url
        self.proc: asyncio.subprocess.Process | None = None
        self.pids: dict[int, str] = {}

    async def start(self) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HP_")}
        env["HP_DOCKER_HOST"] = self.docker_url
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "cli.main",
                "up",
                "--data-dir",
                str(self.data),
                cwd=_ROOT,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        end = time.monotonic() + _UP_DEADLINE_S
        while time.monotonic() < end:
            if self.proc.returncode is not None:
                raise BenchError(f"homeport up exited ({self.proc.returncode}): {self.tail()}")
            if "Dashboard:" in self.out.read_text():
                return self.state()
            await asyncio.sleep(0.2)
        raise BenchError(f"homeport up not ready within {_UP_DEADLINE_S:.0f} s: {self.tail()}")

    def state(self) -> dict[str, Any]:
        state = read_state(self.data)
        if state is None:
            raise BenchError(f"no stack.json in {self.data}: {self.tail()}")
        for p in state.get("parts", []):
            if isinstance(p.get("pid"), int):
                self.pids[p["pid"]] = p["name"]
        return state

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.err.read_text()[-2000:]
        return "(no output)"

    async def set_up(self, state: Mapping[str, Any]) -> None:
        """Complete setup as the wizard does: the first administrator, with the setup token."""
        token = (self.data / "setup-token").read_text().strip()
        url = str(state["dashboard_url"]).rstrip("/") + "/api/v1/setup"
        async with (
            aiohttp.ClientSession() as http,
            http.post(url, json={**_ADMIN, "setup_token": token}) as r,
        ):
            if r.status not in (200, 201):
                raise BenchError(f"setup answered {r.status}: {await r.text()}")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        with contextlib.suppress(BenchError):
            self.state()
        for pid, name in self.pids.items():  # what a failed stop left (Postgres: SIGQUIT)
            if process_alive(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGQUIT if "postgres" in name else signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


async def _bare_pythons(n: int) -> float:
    """Summed PSS of `n` bare Python processes running at once (MiB)."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _BARE,
            cwd=_ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(n)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            await asyncio.wait_for(p.stdout.readline(), 30)
        await asyncio.sleep(0.5)
        return sum(pss_mib(p.pid) for p in procs)
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            await p.wait()


def _median_parts(samples: list[PartMemory]) -> PartMemory:
    names = list(dict.fromkeys(name for s in samples for name in s))
    return {
        name: (
            statistics.median(s.get(name, (0.0, 0))[0] for s in samples),
            max(s.get(name, (0.0, 0))[1] for s in samples),
        )
        for name in names
    }


def _table(parts: PartMemory) -> None:
    for name, (mib, n) in sorted(parts.items(), key=lambda kv: -kv[1][0]):
        say(f"    {name:<16} {mib:7.1f} MiB  ({n} process{'es' if n != 1 else ''})")


async def idle_memory(b: Bench) -> Result:
    from bench.apps import _docker_url  # Docker for the apps service, as that bench finds it

    docker_url = _docker_url()
    rounds = min(b.cfg.rounds, _ROUNDS)
    ours: list[float] = []
    base: list[float] = []
    per_round: list[PartMemory] = []
    shared: set[str] = set()  # other processes of the servers' binaries seen (`strangers`)
    for r in range(rounds):
        stack = _Stack(docker_url)
        try:
            t0 = time.monotonic()
            state = await stack.start()
            await stack.set_up(state)
            say(f"  round {r + 1}  up and set up in {time.monotonic() - t0:.0f} s; settling")
            await asyncio.sleep(_SETTLE_S)
            samples = []
            for i in range(_SAMPLES):
                if i:
                    await asyncio.sleep(2)
                samples.append(measure_parts(stack.state()))
                shared.update(strangers(stack.state()))
            parts = _median_parts(samples)
            bare = await _bare_pythons(len(_services(state)))
        finally:
            await stack.stop()
        total, servers = _counted(parts), _servers(parts)
        ours.append(total)
        base.append(bare + servers)
        per_round.append(parts)
        n = len(_services(state))
        say(
            f"  round {r + 1}  ours {total:.1f} MiB; baseline {bare + servers:.1f} MiB"
            f" ({n} bare Pythons {bare:.1f} + Postgres/NATS/nginx {servers:.1f})"
        )
        _table(parts)
    parts = _median_parts(per_round)
    say("  per part, median of the rounds (PSS):")
    _table(parts)
    ours_mib, base_mib = statistics.median(ours), statistics.median(base)
    say(f"  median   ours {ours_mib:.1f} MiB, baseline {base_mib:.1f} MiB")
    say(f"  ratio    ours/baseline = {ours_mib / base_mib:.3f}")
    misses: tuple[str, ...] = ()
    if shared:
        misses = (
            f"other processes ran the platform's server binaries ({', '.join(sorted(shared))}):"
            " they take a share of its pages, so its PSS reads low; stop them and run again",
        )
    return Result("idle_memory", ours_mib, _TARGET, "<=", misses=misses)


BENCHMARKS: dict[str, Benchmark] = {
    "idle_memory": Benchmark("idle_memory", idle_memory, _TARGET, op="<=", alone=True),
}


def _main() -> None:  # `python -m bench.memory <data dir>`: the table of a running stack
    state = read_state(Path(sys.argv[1]))
    if state is None:
        raise SystemExit(f"no stack.json in {sys.argv[1]}")
    parts = measure_parts(state)
    _table(parts)
    say(f"    {'total':<16} {_counted(parts):7.1f} MiB (supervisor not counted)")
    say(json.dumps({k: round(v[0], 1) for k, v in parts.items()}))


if __name__ == "__main__":
    _main()
