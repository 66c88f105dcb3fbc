"""Backup benchmarks: our repository library on a local directory against restic, same tree.

- `backup_vs_restic`: first backup of the tree into an empty repository; MB/s ours over restic's,
  target >= 0.8. Also the peak RSS of our backup process, target < 200 MiB (issue 14).
- `backup_incremental_vs_restic`: after 1 % of the tree changed, a backup into a repository that
  holds the previous state; seconds ours over restic's, target <= 1.25, and new bytes stored (the
  growth of the repository directory), ours over restic's, target <= 1.2.
- `restore_vs_restic`: full restore of a snapshot into an empty directory; MB/s, target >= 0.8.

Ours runs as a child process, `python -c _CHILD` importing only the repository library and the
LocalTarget (as the backup service would run it), so its peak RSS (`wait4`'s ru_maxrss) is its
own; restic is Debian's `restic` (repository format 2, compression `auto`, the defaults of
`restic init`/`backup`). Both are timed from process start to exit. restic gets a fresh cache
directory per repository (`--cache-dir`, next to the repository, kept across the rounds of that
repository): that is how restic normally runs (it reads its index and the parent's trees from
the cache), and a private directory keeps the user's ~/.cache/restic out of the figures.

The tree is generated once per run (seeded) under the bench's temp directory: many small files
(20,000 of 1-16 KiB per GiB, two thirds text, one third random), a database dump (SQL text, a
quarter of the size) and four large incompressible files (the rest). HP_BENCH_BACKUP_MB sets
its size (the issue's targets are for 1024 MB). Rounds alternate which side goes first, and
`sync` runs between measurements so one side's dirty pages are not written during the other's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import Bench, BenchError, Benchmark, Result, _env_int, elapsed_since, say
from services.backup.repo import Repository, new_identity
from services.backup.targets.local import LocalTarget

__all__ = ["BENCHMARKS"]

_BACKUP_VS_RESTIC = 0.8  # MB/s ours / restic, at least
_INCREMENTAL_VS_RESTIC = 1.25  # seconds ours / restic, at most
_NEW_BYTES_VS_RESTIC = 1.2  # bytes added to the repository, ours / restic, at most
_RESTORE_VS_RESTIC = 0.8  # MB/s ours / restic, at least
_RSS_MIB = 200.0  # peak RSS of our backup process, below

_ISSUE_MB = 1024  # the tree size the issue's targets are stated for
_DEFAULT_MB = 256  # what `make bench` uses unless HP_BENCH_BACKUP_MB says otherwise
_SEED = 14
_KiB = 1024
_MiB = 1024 * _KiB
_PASSWORD = "homeport-bench"  # restic's repository password (a throwaway repository)
_PROJECT = Path(__file__).resolve().parents[1]

# Our side, in its own process: `python -c _CHILD backup|restore REPO ...`, identity in the env.
_CHILD = """
import json, os, sys
from pathlib import Path
from libs.service.runner import run_on_service_loop
from services.backup.repo import Repository
from services.backup.targets.local import LocalTarget

async def main(op, repo_dir, tmp_dir, *args):
    repo = await Repository.open(LocalTarget(Path(repo_dir)), tmp_dir=tmp_dir)
    if op == "backup":
        info = await repo.backup(Path(args[0]), {"bench": "backup"}, labels={"kind": "bench"},
                                 cache_dir=Path(tmp_dir) / "files-cache")
        out = {"id": info.id, "bytes": info.stats.bytes, "new_bytes": info.stats.new_bytes,
               "stored_bytes": info.stats.stored_bytes, "files": info.stats.files}
    else:
        res = await repo.restore(args[0], Path(args[1]), os.environ["HP_BENCH_IDENTITY"])
        out = {"files": res.files, "bytes": res.bytes, "skipped": len(res.skipped)}
    with open("/proc/self/status") as f:
        out["hwm_kib"] = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    print(json.dumps(out))

run_on_service_loop(main(*sys.argv[1:]))  # the loop of the backup service
"""


# -- the tree -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Tree:
    root: Path
    mib: int
    small: list[str] = field(default_factory=list)
    large: list[str] = field(default_factory=list)
    dump: str = "db/dump.sql"
    files: int = 0
    bytes: int = 0

    def describe(self) -> str:
        sizes = [(self.root / p).stat().st_size / 1e6 for p in self.large]
        small = sum((self.root / p).stat().st_size for p in self.small) / 1e6
        dump = (self.root / self.dump).stat().st_size / 1e6
        return (
            f"{self.bytes / 1e6:,.0f} MB in {self.files:,} files: {len(self.small):,} small "
            f"(1-16 KiB, {small:,.0f} MB), a {dump:,.0f} MB SQL dump, {len(sizes)} "
            f"incompressible files of {'/'.join(f'{s:,.0f}' for s in sizes)} MB"
        )


def _words(rng: random.Random) -> list[str]:
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    weights = [26 - i for i in range(26)]
    return ["".join(rng.choices(letters, weights, k=rng.randint(2, 10))) for _ in range(3000)]


def _text(rng: random.Random, words: list[str], size: int) -> bytes:
    """About `size` bytes of word soup in lines (compresses about 2-3x with zstd)."""
    out: list[str] = []
    have = 0
    while have < size:
        line = " ".join(rng.choices(words, k=rng.randint(4, 14))) + "\n"
        out.append(line)
        have += len(line)
    return "".join(out).encode()[:size]


def _dump_rows(rng: random.Random, first: int, size: int) -> bytes:
    """About `size` bytes of pg_dump-like COPY rows, ids from `first` (compresses well)."""
    apps = ("nextcloud", "wiki", "gitea", "matrix", "vaultwarden", "immich", "jellyfin")
    out: list[str] = []
    have, i = 0, first
    while have < size:
        k = rng.getrandbits(32)
        row = (
            f"{i}\t{apps[k % 7]}-{k % 997:03d}\tuser-{k % 113}@example.org\t"
            f"2024-{1 + k % 12:02d}-{1 + k % 28:02d} {k % 24:02d}:{k % 60:02d}:{k % 59:02d}+00\t"
            f'{{"replicas": {1 + k % 3}, "memory": "{256 << (k % 4)}M"}}\t'
            f"{(k % 100000) / 1000:.3f}\tt\n"
        )
        out.append(row)
        have += len(row)
        i += 1
    return "".join(out).encode()[:size]


def _random(rng: random.Random, size: int) -> bytes:
    return b"".join(rng.randbytes(min(_MiB, size - o)) for o in range(0, size, _MiB))


def _small_content(rng: random.Random, words: list[str], i: int) -> bytes:
    size = rng.randint(_KiB, 16 * _KiB)
    if i % 3 == 2:
        return rng.randbytes(size)
    head = f"# file {i} version {rng.getrandbits(64):016x}\n".encode()
    return head + _text(rng, words, size - len(head))


def _build_tree(root: Path, mib: int) -> _Tree:
    """The deterministic tree (see the module docstring), written under `root`."""
    rng = random.Random(_SEED)
    words = _words(rng)
    tree = _Tree(root, mib)
    total = mib * _MiB
    n_small = max(100, round(20_000 * mib / _ISSUE_MB))
    small_bytes = 0
    for i in range(n_small):
        rel = f"files/{i // 1000:02d}/{i // 100 % 10}/f{i:05d}.{'bin' if i % 3 == 2 else 'txt'}"
        data = _small_content(rng, words, i)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        tree.small.append(rel)
        small_bytes += len(data)
    dump_size = total // 4
    (root / "db").mkdir(parents=True)
    with (root / tree.dump).open("wb") as f:
        f.write(b"COPY public.events (id, app, owner, at, settings, score, ok) FROM stdin;\n")
        done, row = 0, 1
        while done < dump_size:
            block = _dump_rows(rng, row, min(8 * _MiB, dump_size - done))
            f.write(block)
            done += len(block)
            row += block.count(b"\n")
    rest = max(total - small_bytes - dump_size, 4 * _MiB)
    (root / "media").mkdir()
    for k, weight in enumerate((4, 3, 2, 1)):
        rel = f"media/video{k}.bin"
        with (root / rel).open("wb") as f:
            size = rest * weight // 10
            for o in range(0, size, 8 * _MiB):
                f.write(_random(rng, min(8 * _MiB, size - o)))
        tree.large.append(rel)
    tree.files = n_small + 1 + len(tree.large)
    tree.bytes = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    os.sync()
    return tree


def _overwrite(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def _mutate(tree: _Tree, r: int) -> int:
    """Change about 1 % of the tree (round `r` picks which): every 100th small file rewritten,
    1 % of the dump's bytes and 1 % of the large files' bytes overwritten in place. Bytes
    changed."""
    rng = random.Random(_SEED * 1000 + r)
    words = _words(random.Random(_SEED))
    changed = 0
    for i in range(r % 100, len(tree.small), 100):
        data = _small_content(rng, words, i)
        (tree.root / tree.small[i]).write_bytes(data)
        changed += len(data)
    dump = tree.root / tree.dump
    size = dump.stat().st_size
    n = size // 100
    at = rng.randrange(0, size - n)
    _overwrite(dump, at, _dump_rows(rng, 10_000_000 * (r + 1), n))
    changed += n
    large = [tree.root / p for p in tree.large]
    n = sum(p.stat().st_size for p in large) // 100
    victim = large[r % len(large)]
    at = rng.randrange(0, max(victim.stat().st_size - n, 1))
    _overwrite(victim, at, _random(rng, n))
    changed += n
    tree.files, tree.bytes = _tree_size(tree.root)  # the small files changed size
    os.sync()
    return changed


_TREES: dict[Path, _Tree] = {}


async def _tree(b: Bench) -> _Tree:
    """The run's tree: built by the first backup benchmark of the run, shared by the others."""
    root = b.servers.root / "backup-tree"
    if root not in _TREES:
        mib = _env_int(os.environ, "HP_BENCH_BACKUP_MB", _DEFAULT_MB, 16)
        t0 = time.perf_counter()
        tree = await asyncio.to_thread(_build_tree, root, mib)
        _TREES[root] = tree
        say(f"  tree ({elapsed_since(t0):.1f} s to make, seed {_SEED}): {tree.describe()}")
        if mib != _ISSUE_MB:
            say(
                f"  (HP_BENCH_BACKUP_MB={mib}; the issue's targets are stated for a"
                f" {_ISSUE_MB} MB tree: set HP_BENCH_BACKUP_MB={_ISSUE_MB} for that run)"
            )
    else:
        say(f"  tree (as left by the previous benchmark): {_TREES[root].describe()}")
    return _TREES[root]


def _tree_size(root: Path) -> tuple[int, int]:
    """(regular files, bytes) below `root`."""
    files = nbytes = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            files += 1
            nbytes += st.st_size
    return files, nbytes


# -- running the two sides ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Proc:
    seconds: float
    cpu: float  # user + system seconds of the process and its threads
    rss_mib: float  # peak resident set size
    out: str


def _hwm_mib(pid: int) -> float:
    """VmHWM (peak RSS of the process's current program) of a live process, else 0."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> _Proc:
    """Run `cmd` to its end: wall seconds, CPU seconds (wait4), peak RSS, its output.

    The peak RSS is VmHWM sampled from /proc every 10 ms (plus, for ours, the VmHWM the child
    reads itself just before it exits): wait4's ru_maxrss would not do, as it keeps the RSS of
    the forked copy of this (large) process from before the exec."""
    with log.open("wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=_PROJECT, close_fds=True
        )
    waiting = asyncio.ensure_future(asyncio.to_thread(os.wait4, proc.pid, 0))
    peak = 0.0
    try:
        while not waiting.done():
            peak = max(peak, _hwm_mib(proc.pid))
            await asyncio.wait([waiting], timeout=0.01)
        _, status, usage = waiting.result()
    except asyncio.CancelledError:
        proc.kill()  # the waiting thread reaps it
        raise
    seconds = elapsed_since(t0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        tail = " | ".join(text.strip().splitlines()[-5:])
        raise BenchError(
            f"{Path(cmd[0]).name} {cmd[1] if len(cmd) > 1 else ''} exited "
            f"{proc.returncode}: {tail[-800:]}"
        )
    return _Proc(seconds, usage.ru_utime + usage.ru_stime, peak, text)


def _repo_bytes(path: Path) -> int:
    return _tree_size(path)[1]


@dataclass(slots=True)
class _Ours:
    """Our repository library on a LocalTarget at `repo`, driven through child processes."""

    repo: Path
    work: Path
    identity: str
    recipient: str
    snapshot: str = ""

    name = "ours"

    @classmethod
    async def create(cls, work: Path) -> _Ours:
        work.mkdir(parents=True)
        (work / "tmp").mkdir()
        (work / "repo").mkdir(mode=0o700)  # the target's directory is the admin's to make
        identity, recipient = new_identity()
        await Repository.init(LocalTarget(work / "repo"), [recipient])
        return cls(work / "repo", work, identity, recipient)

    def _env(self) -> dict[str, str]:
        return {**os.environ, "HP_BENCH_IDENTITY": self.identity}

    def _cmd(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-c",
            _CHILD,
            args[0],
            str(self.repo),
            str(self.work / "tmp"),
            *args[1:],
        ]

    async def _run(self, *args: str) -> tuple[_Proc, dict[str, Any]]:
        p = await _spawn(self._cmd(*args), self._env(), self.work / "log")
        out: dict[str, Any] = json.loads(p.out.strip().splitlines()[-1])
        return dataclasses.replace(p, rss_mib=max(p.rss_mib, out["hwm_kib"] / 1024)), out

    async def backup(self, tree: _Tree) -> _Proc:
        p, out = await self._run("backup", str(tree.root))
        if out["bytes"] != tree.bytes:
            raise BenchError(f"ours backed up {out['bytes']:,} bytes, the tree has {tree.bytes:,}")
        self.snapshot = out["id"]
        return p

    async def restore(self, dest: Path) -> _Proc:
        return (await self._run("restore", self.snapshot, str(dest)))[0]


@dataclass(slots=True)
class _Restic:
    """restic with a local repository and its own cache directory."""

    repo: Path
    work: Path
    binary: str
    snapshot: str = ""

    name = "restic"

    @classmethod
    async def create(cls, work: Path) -> _Restic:
        binary = shutil.which("restic")
        if binary is None:
            raise BenchError(
                "restic is missing: run deploy/install-system-deps.sh (Debian package restic)"
            )
        work.mkdir(parents=True)
        side = cls(work / "repo", work, binary)
        await _spawn(side._cmd("init", "-q"), side._env(), work / "log")
        return side

    def _env(self) -> dict[str, str]:
        return {**os.environ, "RESTIC_PASSWORD": _PASSWORD}

    def _cmd(self, *args: str) -> list[str]:
        return [self.binary, *args, "-r", str(self.repo), "--cache-dir", str(self.work / "cache")]

    async def backup(self, tree: _Tree) -> _Proc:
        cmd = self._cmd("backup", "--json", "--host", "bench", str(tree.root))
        p = await _spawn(cmd, self._env(), self.work / "log")
        for line in reversed(p.out.splitlines()):
            with contextlib.suppress(ValueError):
                msg: dict[str, Any] = json.loads(line)
                if msg.get("message_type") == "summary":
                    self.snapshot = msg["snapshot_id"]
                    if msg["total_bytes_processed"] != tree.bytes:
                        raise BenchError(
                            f"restic backed up {msg['total_bytes_processed']:,} bytes, "
                            f"the tree has {tree.bytes:,}"
                        )
                    return p
        raise BenchError(f"restic backup printed no summary: {p.out[-500:]}")

    async def restore(self, dest: Path) -> _Proc:
        cmd = self._cmd("restore", self.snapshot, "--target", str(dest), "-q")
        return await _spawn(cmd, self._env(), self.work / "log")


_Side = _Ours | _Restic


@dataclass(slots=True)
class _Rounds:
    """Per-side figures of the measured rounds."""

    values: dict[str, list[float]] = field(default_factory=lambda: {"ours": [], "restic": []})
    rss: dict[str, list[float]] = field(default_factory=lambda: {"ours": [], "restic": []})
    cpu: dict[str, list[float]] = field(default_factory=lambda: {"ours": [], "restic": []})
    stored: dict[str, list[float]] = field(default_factory=lambda: {"ours": [], "restic": []})

    def median(self, what: str, side: str) -> float:
        xs: dict[str, list[float]] = getattr(self, what)
        return statistics.median(xs[side])


async def _interleave(
    rounds: int,
    measure: Callable[[str, int], Awaitable[tuple[float, _Proc, int]]],
    unit: str,
    prepare: Callable[[int], Awaitable[None]] | None = None,
) -> _Rounds:
    """`rounds` rounds, ours first in even rounds, restic first in odd ones; `measure` gives
    (value, process, bytes added to the repository)."""
    res = _Rounds()
    for r in range(rounds):
        if prepare is not None:
            await prepare(r)
        for name in ("ours", "restic") if r % 2 == 0 else ("restic", "ours"):
            await asyncio.to_thread(os.sync)
            value, p, stored = await measure(name, r)
            res.values[name].append(value)
            res.rss[name].append(p.rss_mib)
            res.cpu[name].append(p.cpu)
            res.stored[name].append(stored)
            say(
                f"  round {r + 1}  {name:<7} {value:>9,.2f} {unit}  ({p.seconds:.2f} s wall,"
                f" {p.cpu:.2f} s cpu, peak RSS {p.rss_mib:,.0f} MiB"
                + (f", {stored / 1e6:,.1f} MB added to the repository)" if stored else ")")
            )
    for name in ("ours", "restic"):
        say(
            f"  median   {name:<7} {res.median('values', name):>9,.2f} {unit}  "
            f"(cpu {res.median('cpu', name):.2f} s, peak RSS {max(res.rss[name]):,.0f} MiB)"
        )
    return res


async def _sides(work: Path) -> dict[str, _Side]:
    return {
        "ours": await _Ours.create(work / "ours"),
        "restic": await _Restic.create(work / "restic"),
    }


def _rss_miss(peak: float, tree: _Tree) -> tuple[str, ...]:
    if peak < _RSS_MIB:
        return ()
    return (f"peak RSS of our backup {peak:,.0f} MiB for {tree.mib} MB (target < {_RSS_MIB:.0f})",)


@contextlib.contextmanager
def _workdir(b: Bench, name: str) -> Any:
    work = b.servers.root / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- the benchmarks -----------------------------------------------------------------------


async def backup_vs_restic(b: Bench) -> Result:
    tree = await _tree(b)
    say(
        "  first backup into an empty repository; ours: python -c (repository library, "
        "LocalTarget), restic: init (format 2, compression auto), backup with a fresh cache dir"
    )
    with _workdir(b, "backup-first") as work:

        async def measure(name: str, r: int) -> tuple[float, _Proc, int]:
            where = work / f"{name}-{r}"
            side: _Side = await (_Ours.create(where) if name == "ours" else _Restic.create(where))
            try:
                await asyncio.to_thread(os.sync)
                p = await side.backup(tree)
                return tree.bytes / 1e6 / p.seconds, p, _repo_bytes(side.repo)
            finally:
                await asyncio.to_thread(shutil.rmtree, where, True)

        res = await _interleave(b.cfg.rounds, measure, "MB/s")
    ratio = res.median("values", "ours") / res.median("values", "restic")
    peak = max(res.rss["ours"])
    say(
        f"  repository size: ours {res.median('stored', 'ours') / 1e6:,.0f} MB, "
        f"restic {res.median('stored', 'restic') / 1e6:,.0f} MB (tree {tree.bytes / 1e6:,.0f} MB)"
    )
    say(f"  peak RSS of our backup process: {peak:,.0f} MiB (target < {_RSS_MIB:.0f} MiB)")
    say(f"  ratio    ours/restic = {ratio:.3f} (throughput)")
    return Result("backup_vs_restic", ratio, _BACKUP_VS_RESTIC, misses=_rss_miss(peak, tree))


async def backup_incremental_vs_restic(b: Bench) -> Result:
    tree = await _tree(b)
    with _workdir(b, "backup-incremental") as work:
        sides = await _sides(work)
        p_ours, p_restic = await sides["ours"].backup(tree), await sides["restic"].backup(tree)
        say(
            f"  first backups (not counted): ours {p_ours.seconds:.1f} s, "
            f"restic {p_restic.seconds:.1f} s"
        )
        changed: list[int] = []

        async def prepare(r: int) -> None:
            changed.append(await asyncio.to_thread(_mutate, tree, r))

        async def measure(name: str, r: int) -> tuple[float, _Proc, int]:
            side = sides[name]
            before = await asyncio.to_thread(_repo_bytes, side.repo)
            p = await side.backup(tree)
            return p.seconds, p, await asyncio.to_thread(_repo_bytes, side.repo) - before

        say(
            "  each round changes about 1 % of the tree, then both back it up into their "
            "repository holding the previous state"
        )
        res = await _interleave(b.cfg.rounds, measure, "s", prepare)
    say(f"  changed per round: {statistics.median(changed) / 1e6:,.1f} MB (median)")
    ratio = res.median("values", "ours") / res.median("values", "restic")
    new_ours, new_restic = res.median("stored", "ours"), res.median("stored", "restic")
    new_ratio = new_ours / max(new_restic, 1)
    peak = max(res.rss["ours"])
    say(f"  peak RSS of our backup process: {peak:,.0f} MiB (target < {_RSS_MIB:.0f} MiB)")
    say(f"  ratio    ours/restic = {ratio:.3f} (time)")
    say(
        f"  new bytes stored (median): ours {new_ours / 1e6:,.1f} MB, restic "
        f"{new_restic / 1e6:,.1f} MB, ratio {new_ratio:.2f} (target <= {_NEW_BYTES_VS_RESTIC:g})"
    )
    misses = _rss_miss(peak, tree)
    if new_ratio > _NEW_BYTES_VS_RESTIC:
        misses += (
            f"new bytes stored ours/restic = {new_ratio:.2f} (target <= {_NEW_BYTES_VS_RESTIC:g})",
        )
    return Result(
        "backup_incremental_vs_restic", ratio, _INCREMENTAL_VS_RESTIC, "<=", misses=misses
    )


async def restore_vs_restic(b: Bench) -> Result:
    tree = await _tree(b)
    with _workdir(b, "restore") as work:
        sides = await _sides(work)
        p_ours, p_restic = await sides["ours"].backup(tree), await sides["restic"].backup(tree)
        say(
            f"  backups to restore from (not counted): ours {p_ours.seconds:.1f} s, "
            f"restic {p_restic.seconds:.1f} s; each round restores into a new directory"
        )

        async def measure(name: str, r: int) -> tuple[float, _Proc, int]:
            dest = work / f"{name}-dest-{r}"
            try:
                p = await sides[name].restore(dest)
                files, nbytes = await asyncio.to_thread(_tree_size, dest)
                if (files, nbytes) != (tree.files, tree.bytes):
                    raise BenchError(
                        f"{name} restored {files:,} files, {nbytes:,} bytes; the tree has "
                        f"{tree.files:,} files, {tree.bytes:,} bytes"
                    )
                return tree.bytes / 1e6 / p.seconds, p, 0
            finally:
                await asyncio.to_thread(shutil.rmtree, dest, True)

        res = await _interleave(b.cfg.rounds, measure, "MB/s")
    ratio = res.median("values", "ours") / res.median("values", "restic")
    say(f"  ratio    ours/restic = {ratio:.3f} (throughput)")
    return Result("restore_vs_restic", ratio, _RESTORE_VS_RESTIC)


BENCHMARKS: dict[str, Benchmark] = {
    "backup_vs_restic": Benchmark("backup_vs_restic", backup_vs_restic, _BACKUP_VS_RESTIC),
    "backup_incremental_vs_restic": Benchmark(
        "backup_incremental_vs_restic",
        backup_incremental_vs_restic,
        _INCREMENTAL_VS_RESTIC,
        op="<=",
    ),
    "restore_vs_restic": Benchmark("restore_vs_restic", restore_vs_restic, _RESTORE_VS_RESTIC),
}
