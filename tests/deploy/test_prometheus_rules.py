"""The Prometheus alert rules of deploy/prometheus/, checked with promtool (Debian package
`prometheus`): they load; each alert fires for its condition at the right time, not before,
and resolves (the unit tests in deploy/prometheus/tests/); rules made to fire too early fail
those unit tests; every metric a rule reads is exported by the Homeport service the README
names for it (its process's /metrics exposition) or is one of node_exporter's; and the real
backup service, started again, shows the outcomes the backup rules read, not "never"."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
import yaml
from nats.aio.msg import Msg

from libs.contracts.notify import CATEGORIES
from services.backup.service import metrics as backup_metrics
from tests.backup.servicekit import Backup, backup_env, running_backup
from tests.support.servers import need_server
from tests.support.waits import wait_until

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "deploy" / "prometheus"
RULES = HERE / "homeport.rules.yml"
UNIT_TESTS = HERE / "tests" / "homeport.test.yml"
README = HERE / "README.md"

# The README's exporter names -> the module whose import builds that service's process (its
# metrics are registered at import, so the exposition lists them before any sample is set).
SERVICES = {
    "apps": "services.apps.__main__",
    "backup": "services.backup.__main__",
    "certs": "services.certs.__main__",
    "firewall": "services.firewall.__main__",
}
# node_exporter's metrics the rules may read: its standard names (filesystem, meminfo and
# pressure collectors), not exported by Homeport.
NODE_EXPORTER = frozenset(
    {
        "node_filesystem_avail_bytes",
        "node_filesystem_size_bytes",
        "node_filesystem_readonly",
        "node_memory_MemAvailable_bytes",
        "node_memory_MemTotal_bytes",
        "node_pressure_memory_waiting_seconds_total",
    }
)
_PROMQL_WORDS = frozenset({"and", "or", "unless", "bool", "offset"})

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        need_server(
            "promtool",
            FileNotFoundError(
                "not on PATH: run deploy/install-system-deps.sh (package prometheus)"
            ),
        )
    return found


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in _rules()}


def _run(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def _duration(text: str) -> float:
    """Seconds of a Prometheus duration such as `1d2h`, `38h1m`, `45m`."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text}"
    return sum(int(n) * units[u] for n, u in parts)


def _metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(on|ignoring|by|without|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[m.end() :].lstrip().startswith("("):  # a function
            continue
        if m.group() not in _PROMQL_WORDS:
            names.add(m.group())
    return names


def _counted(expr: str) -> set[str]:
    """The metrics an expression takes rate() or increase() of (counters)."""
    return set(re.findall(r"\b(?:rate|increase)\(\s*([A-Za-z_:][A-Za-z0-9_:]*)", expr))


def _exposition(module: str) -> dict[str, str]:
    """Metric name -> type, as the /metrics of the process `module` builds shows them."""
    code = (
        f"import sys, {module}\n"
        "from libs.service.metrics import render_metrics\n"
        "sys.stdout.buffer.write(render_metrics()[0])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", out.stdout, re.M))


def _readme_table() -> Iterator[tuple[str, str, set[str]]]:
    """(alert, exporter, metrics) of each row of the README's table."""
    for line in README.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("Homeport"):
            exporter, _, metrics = cells[4].partition(":")
            yield cells[0], exporter.strip(), set(re.findall(r"`([A-Za-z_:][\w:]*)`", metrics))


# -- the rules load, and say what they are about --------------------------------------------


def test_promtool_accepts_the_rules_and_each_alert_has_severity_category_and_text(
    promtool: str,
) -> None:
    out = _run(promtool, "check", "rules", str(RULES), cwd=HERE)
    assert out.returncode == 0, out.stdout + out.stderr
    rules = _rules()
    assert f"SUCCESS: {len(rules)} rules found" in out.stdout, out.stdout
    assert all("alert" in r for r in rules), "only alert rules here"
    assert len(_alerts()) == len(rules), "each alert name once"
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["labels"]["category"] in CATEGORIES, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


# -- each alert fires on time, not before, and resolves -------------------------------------


def test_each_alert_fires_at_its_time_not_before_and_resolves(promtool: str) -> None:
    out = _run(promtool, "test", "rules", UNIT_TESTS.name, cwd=UNIT_TESTS.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout

    # every alert has a check before it fires, one where it fires, and one after it resolved
    seen: dict[str, list[tuple[float, bool]]] = {}
    for group in yaml.safe_load(UNIT_TESTS.read_text())["tests"]:
        for check in group["alert_rule_test"]:
            when = _duration(check["eval_time"])
            seen.setdefault(check["alertname"], []).append((when, bool(check["exp_alerts"])))
    assert set(seen) == set(_alerts()), "a unit test for every alert, and no other"
    for alert, checks in seen.items():
        fired = [t for t, firing in checks if firing]
        quiet = [t for t, firing in checks if not firing]
        assert fired, f"{alert}: no check where it fires"
        assert any(t < min(fired) for t in quiet), f"{alert}: no check before it fires"
        assert any(t > min(fired) for t in quiet), f"{alert}: no check that it resolves"


# Each alert made to fire too early (or too widely): its unit tests must notice.
EAGER = {
    "HomeportAppDown": ("for", "5m", "4m"),
    "HomeportAppRestarting": ("expr", ">= 3", ">= 2"),
    "HomeportAppOutOfMemory": ("expr", "> 0", ">= 0"),
    "HomeportAppUnhealthy": ("expr", " unless on (app_id, location) homeport_app_up == 0", ""),
    "HomeportCertificateRenewalFailed": ("expr", "> 0", ">= 0"),
    "HomeportCertificateExpiresSoon": ("expr", "7 * 86400", "7 * 86400 + 120"),
    "HomeportBackupFailed": ("expr", " > ", " >= "),
    "HomeportBackupMissing": ("expr", "36 * 3600", "36 * 3600 - 60"),
    "HomeportDiskFull90": ("for", "5m", "4m"),
    "HomeportDiskFull95": ("expr", ">= 0.95", ">= 0.94"),
    "HomeportMemoryPressure": ("for", "10m", "9m"),
    "HomeportPlatformUpdateAvailable": ("for", "24h", "23h59m"),
    "HomeportAppUpdateAvailable": ("for", "24h", "23h59m"),
    "HomeportAddressBanned": ("expr", "> 0", ">= 0"),
}


def test_rules_made_to_fire_too_early_fail_their_unit_tests(promtool: str, tmp_path: Path) -> None:
    doc = yaml.safe_load(RULES.read_text())
    assert set(EAGER) == set(_alerts())
    for group in doc["groups"]:
        for rule in group["rules"]:
            key, old, new = EAGER[rule["alert"]]
            assert old in rule[key], f"{rule['alert']}: {old!r} not in its {key}"
            rule[key] = rule[key].replace(old, new, 1)
    (tmp_path / "homeport.rules.yml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (tmp_path / "tests").mkdir()
    shutil.copy(UNIT_TESTS, tmp_path / "tests" / UNIT_TESTS.name)
    out = _run(promtool, "check", "rules", "homeport.rules.yml", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr  # still valid rules, only wrong

    out = _run(promtool, "test", "rules", UNIT_TESTS.name, cwd=tmp_path / "tests")
    assert out.returncode != 0
    failed = set(re.findall(r"alertname: (\w+), time:", out.stdout + out.stderr))
    assert failed == set(EAGER), f"not caught: {sorted(set(EAGER) - failed)}"


# -- every metric the rules read exists ------------------------------------------------------


def test_every_metric_the_rules_read_is_exported_where_the_readme_says() -> None:
    alerts = _alerts()
    table = {alert: (exporter, metrics) for alert, exporter, metrics in _readme_table()}
    assert set(table) == set(alerts), "the README's table has a row for each alert, no other"
    expositions = {name: _exposition(module) for name, module in SERVICES.items()}
    for alert, rule in alerts.items():
        used = _metrics(rule["expr"])
        exporter, listed = table[alert]
        assert used == listed, f"{alert}: the README lists {sorted(listed)}, the rule reads {used}"
        if exporter == "node_exporter":
            assert used <= NODE_EXPORTER, f"{alert}: {sorted(used - NODE_EXPORTER)}"
            continue
        assert exporter in SERVICES, f"{alert}: unknown exporter {exporter!r}"
        types = expositions[exporter]
        for name in used:
            assert name.startswith("homeport_"), f"{alert}: {name}"
            assert name in types, f"{alert}: {name} is not on the {exporter} service's /metrics"
            wanted = "counter" if name in _counted(rule["expr"]) else "gauge"
            assert types[name] == wanted, f"{alert}: {name} is a {types[name]}, read as {wanted}"


# -- the backup service's gauges hold across a restart -----------------------------------------


@asynccontextmanager
async def _no_apps_installed(nats_url: str) -> AsyncIterator[None]:
    """A STAND-IN for the apps service's `apps` query only (the real one needs dockerd): a
    platform with no app installed."""
    nc = await nats.connect(nats_url)

    async def answer(msg: Msg) -> None:
        await msg.respond(json.dumps({"ok": True, "result": {"items": []}}).encode())

    try:
        await nc.subscribe("hp.qry.apps.apps.*", queue="hp.apps", cb=answer)
        await nc.flush()
        yield
    finally:
        await nc.close()


async def _backup_gauges(backup: Backup) -> dict[str, float]:
    url = f"http://127.0.0.1:{backup.svc.port}/metrics"
    async with aiohttp.ClientSession() as http, http.get(url) as r:
        text = await r.text()
    return {
        name: float(value)
        for name, value in re.findall(r"^(homeport_backup_\w+) (\S+)$", text, re.M)
    }


async def _back_up(backup: Backup) -> tuple[str, dict[str, Any]]:
    return await backup.task_end((await backup.cmd("back_up", {}))["task_id"])


async def test_the_backup_service_started_again_shows_its_last_outcomes_and_set_up_time(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, tmp_path: Path, uniq: str
) -> None:
    (tmp_path / "certs" / "my.example.com").mkdir(parents=True)
    (tmp_path / "certs" / "my.example.com" / "fullchain.pem").write_text("CERT\n")
    extra = {"HP_SCHEDULE_LOOP": "true"}  # its ticks set the set-up gauge (none is due now)
    env = backup_env(dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, uniq=uniq, extra=extra)
    async with running_backup(monkeypatch, env) as backup:

        async def not_set_up() -> bool:
            gauges = await _backup_gauges(backup)
            return gauges["homeport_backup_scheduled_since_timestamp_seconds"] == 0

        await wait_until(not_set_up, 10, "the set-up gauge at 0 (no target, no key)")
        async with _no_apps_installed(nats_url):
            await backup.cmd("set_target", {"kind": "local", "path": str(tmp_path / "disk")})
            await backup.cmd("setup_key", {})
            ended, data = await _back_up(backup)
            assert ended == "TaskSucceeded", data
        ended, data = await _back_up(backup)  # the apps service does not answer: a failure
        assert ended == "TaskFailed", data

    for gauge in (
        backup_metrics.LAST_SUCCESS,
        backup_metrics.LAST_FAILURE,
        backup_metrics.SCHEDULED_SINCE,
    ):
        gauge.set(0)  # as a new process starts

    async with running_backup(monkeypatch, env) as backup:
        rows = await backup.store.pool.fetch(
            "SELECT type, max(extract(epoch FROM recorded_at))::float8 AS at FROM events.events"
            " WHERE type IN ('BackupKeySet', 'TaskSucceeded', 'BackupFailed') GROUP BY type"
        )
        events = {r["type"]: r["at"] for r in rows}
        assert events["TaskSucceeded"] < events["BackupFailed"]

        async def set_up() -> bool:
            gauges = await _backup_gauges(backup)
            return gauges["homeport_backup_scheduled_since_timestamp_seconds"] > 0

        await wait_until(set_up, 10, "the set-up gauge after the start")
        gauges = await _backup_gauges(backup)
        assert gauges["homeport_backup_last_success_timestamp_seconds"] == pytest.approx(
            events["TaskSucceeded"], abs=0.01
        )
        assert gauges["homeport_backup_last_failure_timestamp_seconds"] == pytest.approx(
            events["BackupFailed"], abs=0.01
        )
        assert gauges["homeport_backup_scheduled_since_timestamp_seconds"] == pytest.approx(
            events["BackupKeySet"], abs=0.01
        )
