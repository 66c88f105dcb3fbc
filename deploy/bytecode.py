"""How the services' Python runs: `-OO`, from byte code compiled ahead into a cache of their own.

`-OO` leaves docstrings (and asserts) out of the code objects a process keeps: 0.8-1.6 MiB less
per service, about 9 MiB for the platform at rest. Byte code for that level (`*.opt-2.pyc`) is
not what pip or Debian ship, and a service that finds none compiles every module it imports in
memory at each start (time, and heap it keeps). So the services get `PYTHONPYCACHEPREFIX`: a
cache folder of their own, filled ahead by `warm` (a process per service importing its
start-up modules under -OO, which writes the byte code of all they load at start: the standard
library, the packages and ours; it also notes which modules two services or more load, for
`homeport up`'s fork server: `preload`). With the prefix set, Python reads and writes byte
code only there, so nothing is written into the system's or the venv's folders. Identity keeps
its common-password list there too, in the form it looks passwords up in
(services/identity/common_passwords.py: made by the warming, checked against the installed list
at each start).

- `homeport up`: the cache is `<venv>/homeport-bytecode` (the venv's own folder), warmed at a
  start unless its stamp (`warmed`, written after a warming that succeeded) names the same
  interpreter, modules and sources: warming a warm cache still imports every service's modules
  (a second or more of a start, for nothing). A stale stamp costs only time: Python checks each
  byte-code file against its source anyway. The services may write the cache too, so what they
  import later (on first use) is kept for the next start.
- A server: `<release>/bytecode`, warmed by the installer and by `homeport update` as root
  (`warm_release`) once `/opt/homeport/current` points at the release; the units point at it
  through `current` too, read-only to the services. Byte code is found by the path a module is
  loaded from, so the warming runs through the same paths as the units: the venv's python by way
  of `current`, in `current` (whose real path the platform's own modules are loaded from).

`python -m deploy.bytecode PREFIX [MODULE...]` warms PREFIX (default: every service's modules).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from deploy.state import write_atomic

__all__ = [
    "OPTIMIZE_FLAG",
    "PREFIX_VARIABLE",
    "PRELOAD_FILE",
    "STAMP_FILE",
    "embedded_prefix",
    "fingerprint",
    "is_warm",
    "mark_warm",
    "preload",
    "service_argv",
    "service_env",
    "startup_modules",
    "warm",
    "warm_release",
]

OPTIMIZE_FLAG = "-OO"
PREFIX_VARIABLE = "PYTHONPYCACHEPREFIX"
PRELOAD_FILE = "preload.json"  # in the prefix: what the fork server imports (`preload`)
STAMP_FILE = "warmed"  # in the prefix: the fingerprints of what was warmed last, newest first
_MARKS_KEPT = 8
_WARM_TIMEOUT_S = 300.0
_IMPORT_ONE = (
    "import importlib, json, sys\nimportlib.import_module(sys.argv[1])\n"
    "print(json.dumps(sorted(sys.modules)))\n"
)


def service_argv(python: str, module: str) -> list[str]:
    """The command line of a service: `python -OO -m <module>`."""
    return [python, OPTIMIZE_FLAG, "-m", module]


def embedded_prefix() -> Path:
    """The byte-code cache of `homeport up`: beside the venv's own files."""
    return Path(sys.prefix) / "homeport-bytecode"


def service_env(env: dict[str, str], prefix: Path, *, writable: bool) -> dict[str, str]:
    """`env` with the services' byte-code cache; `writable` lets them add to it."""
    out = dict(env)
    out[PREFIX_VARIABLE] = str(prefix)
    if writable:
        out.pop("PYTHONDONTWRITEBYTECODE", None)
    else:
        out["PYTHONDONTWRITEBYTECODE"] = "1"
    return out


def startup_modules(modules: Sequence[str]) -> list[str]:
    """What `python -m <module>` runs for each of `modules`: `<package>.__main__` for a package."""
    out = []
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        out.append(f"{name}.__main__" if spec.submodule_search_locations is not None else name)
    return out


def warm(python: str, prefix: Path, modules: Sequence[str], *, cwd: Path) -> None:
    """Import each of `modules` under -OO with `prefix` as the byte-code cache, so that it
    holds the byte code of everything they load at start, and note in it the modules two of
    them or more import (`preload`). One process a module, as many at once as there are
    cores. Raises OSError or CalledProcessError."""
    prefix.mkdir(parents=True, exist_ok=True)
    env = service_env(dict(os.environ), prefix, writable=True)

    def imports(module: str) -> set[str]:
        out = _run([python, OPTIMIZE_FLAG, "-c", _IMPORT_ONE, module], cwd, env, _WARM_TIMEOUT_S)
        return set(json.loads(out.splitlines()[-1]))  # the last line: a module may print

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        seen = list(pool.map(imports, modules))
    counts = Counter(name for names in seen for name in names)
    shared = sorted(n for n, c in counts.items() if c >= 2 and n != "__main__")
    write_atomic(prefix / PRELOAD_FILE, json.dumps(shared).encode())


def preload(prefix: Path) -> list[str] | None:
    """The modules the last warming of `prefix` saw two services or more import at start:
    what the fork server of `homeport up` imports (deploy/forkserver.py). A module only one
    service imports is left to it: imported in the fork server, the pages it writes would be
    kept twice (~15 MiB for the platform at rest). None without a list."""
    try:
        names = json.loads((prefix / PRELOAD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return names


def fingerprint(python: str, modules: Sequence[str], roots: Iterable[Path], *, cwd: Path) -> str:
    """What a warming depends on: the interpreter, the modules, the working directory, the
    size and time of every source file under `roots` (our packages), and the time of each
    folder on the import path (a package installed, upgraded or removed changes it)."""
    h = hashlib.sha256()
    h.update(repr((python, sys.version, list(modules), str(cwd))).encode())
    for entry in sys.path:
        if not entry:  # the working directory: its sources are among `roots`
            continue
        try:
            h.update(f"\0{entry}\0{os.stat(entry).st_mtime_ns}".encode())
        except OSError:
            continue
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                try:
                    st = os.stat(path)
                except OSError:
                    continue
                h.update(f"\0{path}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _marks(prefix: Path) -> list[str]:
    try:
        return (prefix / STAMP_FILE).read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return []


def is_warm(prefix: Path, mark: str) -> bool:
    """Whether the cache in `prefix` was warmed for the fingerprint `mark`."""
    return mark in _marks(prefix)


def mark_warm(prefix: Path, mark: str) -> None:
    """Record that the cache in `prefix` is warm for `mark` (after a warming that succeeded).
    The last few marks are kept: checkouts in other folders may share this venv's cache."""
    stamp = prefix / STAMP_FILE
    marks = [mark, *(m for m in _marks(prefix) if m != mark)][:_MARKS_KEPT]
    tmp = stamp.with_name(f".{STAMP_FILE}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(marks) + "\n", encoding="utf-8")
    os.replace(tmp, stamp)


def warm_release(current: Path, *, timeout: float = _WARM_TIMEOUT_S) -> None:
    """Warm `<current>/bytecode` for the release `current` points at, as its units run it.
    Raises OSError or CalledProcessError (stderr: the reason)."""
    python = str(current / "venv" / "bin" / "python")
    _run([python, "-m", "deploy.bytecode", str(current / "bytecode")], current, None, timeout)


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None, timeout: float) -> bytes:
    """Run `argv`; its standard output (CalledProcessError with its stderr if it fails)."""
    return subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=True,
        timeout=timeout,
    ).stdout


def _main(argv: Sequence[str]) -> int:
    if not argv:
        print("usage: python -m deploy.bytecode PREFIX [MODULE...]", file=sys.stderr)
        return 2
    from deploy.planning import discover_modules

    names = list(argv[1:]) or [m.module for m in discover_modules()]
    try:
        warm(sys.executable, Path(argv[0]), startup_modules(names), cwd=Path.cwd())
    except subprocess.CalledProcessError as e:
        tail = (e.stderr or b"").decode(errors="replace").strip().splitlines()[-1:]
        print(f"warming the byte code failed: {tail[0] if tail else e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
