"""The services run with -OO from a byte-code cache of their own (deploy/bytecode.py): once it is
warmed, a service compiles nothing at start, its code carries no docstrings, and both the
embedded stack and the server units start the services that way."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy import bytecode
from deploy.layout import Layout
from deploy.planning import Planner, discover_modules
from deploy.stack import compile_code
from deploy.state import prepare_dir
from deploy.units import render_units, unit_name

REPO = Path(__file__).resolve().parents[2]
# python -v: a module compiled from its source vs one read from byte code
_FROM_SOURCE = re.compile(r"^# code object from (\S+\.py)$", re.M)
_FROM_CACHE = re.compile(r"^# code object from '(\S+\.opt-2\.pyc)'$", re.M)


def _start_imports(prefix: Path, module: str) -> tuple[str, str]:
    """What `python -OO -m <module>` loads at start (imported, not run), as a unit or the stack
    runs it with the cache read-only: (verbose import log, its stdout)."""
    env = bytecode.service_env(dict(os.environ), prefix, writable=False)
    main = bytecode.startup_modules([module])[0]
    code = (
        f"import importlib, sys; m = importlib.import_module({main!r}); "
        "print(sys.flags.optimize, m.__doc__ is None, importlib.__doc__ is None)"
    )
    r = subprocess.run(
        [sys.executable, bytecode.OPTIMIZE_FLAG, "-v", "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stderr, r.stdout


def test_a_warmed_cache_leaves_nothing_to_compile_at_any_service_start(tmp_path: Path) -> None:
    prefix = tmp_path / "bytecode"
    modules = [m.module for m in discover_modules()]
    assert "libs.events.relay" in modules and "services.gateway" in modules
    cold, _ = _start_imports(prefix, "services.firewall")  # nothing there yet
    assert len(_FROM_SOURCE.findall(cold)) > 50

    bytecode.warm(sys.executable, prefix, bytecode.startup_modules(modules), cwd=REPO)
    # what the fork server imports: what two services or more load, not one's own code
    preload = bytecode.preload(prefix)
    assert preload is not None
    assert {"asyncio", "aiohttp.web", "asyncpg", "nats", "libs.service.runner"} <= set(preload)
    assert not [m for m in preload if m.startswith("services.gateway.")]
    assert "docker" not in preload  # apps only
    for module in modules:
        log, out = _start_imports(prefix, module)
        compiled = _FROM_SOURCE.findall(log)
        assert compiled == [], f"{module} compiles at start: {compiled[:5]}"
        cached = _FROM_CACHE.findall(log)
        assert cached and all(p.startswith(str(prefix)) for p in cached), module
        # -OO: the code objects it keeps carry no docstrings (ours and the standard library's)
        assert out.split() == ["2", "True", "True"], (module, out)
    # nothing was written beside the sources (the catalog's signed app folders included)
    assert not list((REPO / "services" / "apps" / "bundled").rglob("*.opt-2.pyc"))


def test_warming_a_cache_it_cannot_write_fails_and_says_so(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    r = subprocess.run(
        [sys.executable, "-m", "deploy.bytecode", str(blocker / "bytecode")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert "Not a directory" in r.stderr or "File exists" in r.stderr, r.stderr[-500:]


def test_the_embedded_stack_starts_every_service_with_oo_and_the_cache(tmp_path: Path) -> None:
    modules = [m for m in discover_modules() if m.name != "apps"]  # apps: Docker, not needed
    (tmp_path / "data").mkdir()
    prepare_dir(tmp_path / "data")
    planner = Planner(
        tmp_path / "data",
        python=sys.executable,
        base_port=None,
        modules=modules,
        log_level="INFO",
        fsync=False,
    )
    plan = planner.plan(None)
    services = [p for p in plan.parts if p.module]
    assert len(services) == len(modules)
    # the fork server they are forked from (deploy/forkserver.py): the same flags and cache,
    # importing what each would import at its start
    forkserver = plan.forkserver
    assert forkserver is not None and forkserver.argv == [sys.executable, "-OO"]
    assert forkserver.env["PYTHONPYCACHEPREFIX"] == str(bytecode.embedded_prefix())
    starts = bytecode.startup_modules([m.module for m in modules])
    assert forkserver.modules == (bytecode.preload(bytecode.embedded_prefix()) or starts)
    assert not [k for k in forkserver.env if k.startswith("HP_")]
    for part in services:
        runner = part.runner
        assert runner.argv == [sys.executable, "-OO", "-m", part.module]  # type: ignore[attr-defined]
        env = runner.env  # type: ignore[attr-defined]
        assert env["PYTHONPYCACHEPREFIX"] == str(bytecode.embedded_prefix())
        assert "PYTHONDONTWRITEBYTECODE" not in env  # what they load later is kept too


def test_every_service_unit_runs_oo_from_the_release_cache(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "root")
    units = render_units(layout)
    for m in discover_modules():
        text = units[unit_name(m.name)]
        assert f"ExecStart={layout.current}/venv/bin/python -OO -m {m.module}\n" in text
        env = re.search(r"^Environment=(.*PYTHONPYCACHEPREFIX.*)$", text, re.M)
        assert env is not None, m.name
        assert f"PYTHONPYCACHEPREFIX={layout.current}/bytecode" in env.group(1).split()
        assert "PYTHONDONTWRITEBYTECODE=1" in env.group(1).split()  # read-only to the services


def _probe_package(src: Path, value: int) -> Path:
    """A package `hpwarmprobe` in `src` whose start (`python -m hpwarmprobe`) imports `mod`."""
    pkg = src / "hpwarmprobe"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text("from hpwarmprobe import mod\n\nprint(mod.VALUE)\n")
    (pkg / "mod.py").write_text(f"VALUE = {value}\n")
    return pkg


def test_a_second_start_skips_the_warming_and_an_edited_source_warms_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, prefix = tmp_path / "src", tmp_path / "bytecode"
    pkg = _probe_package(src, 1)
    monkeypatch.syspath_prepend(str(src))
    monkeypatch.chdir(src)

    def start() -> bool:  # what `homeport up` does before it starts anything
        return compile_code(("hpwarmprobe",), ["hpwarmprobe"], prefix)

    def service_start() -> tuple[list[str], str]:
        """What a service's start compiles from source, and what it prints."""
        env = bytecode.service_env(dict(os.environ), prefix, writable=False)
        r = subprocess.run(
            [sys.executable, bytecode.OPTIMIZE_FLAG, "-v", "-m", "hpwarmprobe"],
            cwd=src,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        return [p for p in _FROM_SOURCE.findall(r.stderr) if "hpwarmprobe" in p], r.stdout.strip()

    assert start() is True  # the first start warms
    stamp = prefix / bytecode.STAMP_FILE
    warmed = stamp.stat()
    assert service_start() == ([], "1")

    assert start() is False  # sources unchanged: nothing compiled, the stamp left as it was
    assert (stamp.stat().st_ino, stamp.stat().st_mtime_ns) == (warmed.st_ino, warmed.st_mtime_ns)

    (pkg / "mod.py").write_text("VALUE = 22\n")  # an edited source
    assert start() is True
    assert stamp.stat().st_ino != warmed.st_ino
    assert service_start() == ([], "22")  # its new byte code is in the cache already
    assert start() is False
