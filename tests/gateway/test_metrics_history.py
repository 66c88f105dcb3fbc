"""The metrics history through the real gateway (services.gateway.__main__.build): system
samples every HP_METRICS_INTERVAL, rows past HP_METRICS_RETENTION_DAYS pruned, the history
downsampled at /api/v1/metrics/history for admins, the system values on /metrics; with the real
apps service and a running app, that app's memory from the apps `stats` query."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from libs.events.bus import Invalid
from tests.apps.appskit import STATIC, apps_env, running_apps, static_catalog
from tests.gateway.apikit import Cast, Client, running_gateway
from tests.support.bus import relaying
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(240)

SYSTEM = [
    "system_memory_used_bytes",
    "system_memory_total_bytes",
    "system_cpu_busy_ratio",
    "system_disk_used_bytes",
    "system_disk_total_bytes",
]
FAST = {"HP_METRICS_INTERVAL": "0.3"}


@asynccontextmanager
async def connected(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def history(client: Client, token: str, query: str = "") -> dict[str, Any]:
    a = await client.call("GET", f"/api/v1/metrics/history{query}", token=token)
    assert a.status == 200, a.body
    assert isinstance(a.body, dict)
    return a.body


def points(body: dict[str, Any], metric: str, app_id: str | None = None) -> list[list[float]]:
    found = [
        s["points"]
        for s in body["series"]
        if s["metric"] == metric and (app_id is None or s.get("app_id") == app_id)
    ]
    assert len(found) <= 1, body
    return found[0] if found else []


async def test_system_history_pruned_and_exported(
    monkeypatch: pytest.MonkeyPatch,
    token_cast: Cast,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
) -> None:
    root = token_cast.token_root
    async with (
        running_gateway(
            monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path, env=FAST
        ) as gw,
        connected(dsn) as conn,
    ):
        # a sample past the retention (7 days by default) and one within it
        await conn.execute(
            "INSERT INTO gateway.metric_samples (at, metric, value) VALUES"
            " (now() - interval '8 days', 'system_memory_used_bytes', 1),"
            " (now() - interval '6 days', 'system_memory_used_bytes', 2)"
        )

        async def rounds() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM gateway.metric_samples WHERE metric = 'system_cpu_busy_ratio'"
            )
            return bool(n >= 3)  # CPU needs two samples: at least four rounds

        await wait_until(rounds, 30, "four rounds of samples")
        body = await history(gw.client, root)
        assert body["range"] == "1h" and body["step_seconds"] == 10
        # every system series, no app series (apps is not running: it was skipped)
        assert [s["metric"] for s in body["series"]] == SYSTEM
        assert all(set(s) == {"metric", "points"} for s in body["series"])
        last = {m: points(body, m)[-1] for m in SYSTEM}
        now = time.time()
        for metric, (at, _) in last.items():
            assert now - 20 <= at <= now and at % 10 == 0, (metric, at)
        mem_used, mem_total = last[SYSTEM[0]][1], last[SYSTEM[1]][1]
        assert 0 < mem_used <= mem_total
        assert 0 <= last["system_cpu_busy_ratio"][1] <= 1
        disk_used, disk_total = last[SYSTEM[3]][1], last[SYSTEM[4]][1]
        st = os.statvfs(tmp_path)  # the data directory (HP_DATA_DIR)
        assert 0 < disk_used <= disk_total == st.f_blocks * st.f_frsize

        # the old sample is pruned, the recent one kept and shown in the 7-day range
        kept = await conn.fetch(
            "SELECT value FROM gateway.metric_samples WHERE at < now() - interval '1 day'"
        )
        assert [r["value"] for r in kept] == [2.0]
        week = await history(gw.client, root, "?range=7d")
        assert week["range"] == "7d" and week["step_seconds"] == 1680
        first_at, first_value = points(week, "system_memory_used_bytes")[0]
        assert first_value == 2.0
        assert now - 6 * 86400 - 1680 - 60 <= first_at <= now - 6 * 86400
        for s in week["series"]:
            assert len(s["points"]) <= 360
            assert [p[0] for p in s["points"]] == sorted({p[0] for p in s["points"]})
        for name in ("6h", "24h"):
            assert (await history(gw.client, root, f"?range={name}"))["range"] == name

        # the system values are gauges on /metrics
        async with gw.client.http.get(f"{gw.client.base}/metrics") as r:
            exposition = await r.text()
        gauges = {
            line.split()[0]: float(line.split()[1])
            for line in exposition.splitlines()
            if line.startswith("homeport_system_")
        }
        assert set(gauges) == {f"homeport_{m}" for m in SYSTEM}
        assert 0 < gauges["homeport_system_memory_used_bytes"]
        assert gauges["homeport_system_memory_total_bytes"] == mem_total

        # bad input names the field; only admins may read it
        for query in ("?range=2h", "?range=", "?range=1h&range=6h", "?since=1"):
            a = await gw.client.call("GET", f"/api/v1/metrics/history{query}", token=root)
            field = "since" if "since" in query else "range"
            assert a.status == 400 and a.problem["field"] == field, (query, a.body)
        a = await gw.client.call("GET", "/api/v1/metrics/history", token=token_cast.token_alice)
        assert a.status == 403 and a.problem["code"] == "forbidden"
        assert (await gw.client.call("GET", "/api/v1/metrics/history")).status == 401


async def test_a_running_apps_memory_is_in_the_history(
    monkeypatch: pytest.MonkeyPatch,
    token_cast: Cast,
    dsn: str,
    nats_url: str,
    uniq: str,
    tmp_path: Path,
    docker_host: str,
) -> None:
    root = token_cast.token_root
    env = apps_env(
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path,
        docker_host=docker_host,
        prefix=f"m{uniq[:8]}",
        catalog=static_catalog(tmp_path / "catalog"),
        extra={"HP_STATS_INTERVAL": "0.5"},
    )
    async with (
        running_apps(monkeypatch, env) as apps,
        running_gateway(
            monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path, env=FAST
        ) as gw,
        relaying(dsn, nats_url, uniq),
    ):
        assert await apps.ask("stats", {}) == {"items": []}
        with pytest.raises(Invalid) as refused:
            await apps.ask("stats", {"app_id": "x"})
        assert refused.value.field == "app_id"

        body = {
            "manifest_id": STATIC,
            "version": "1.0.0",
            "location": "graphs",
            "access": {"all_users": True},
        }
        started = await gw.client.call("POST", "/api/v1/apps", token=root, body=body)
        assert started.status == 202, started.body
        app_id = started.body["app_id"]
        done = await apps.wait_task(started.body["task_id"])
        assert done["type"] == "TaskSucceeded", done

        # apps keeps its latest stats round: the app, its memory and its limit
        async def stats_listed() -> bool:
            return bool((await apps.ask("stats", {}))["items"])

        await wait_until(stats_listed, 30, "the app in the apps stats")
        (item,) = (await apps.ask("stats", {}))["items"]
        assert item["app_id"] == app_id and item["location"] == "graphs"
        assert 0 < item["memory_bytes"] <= item["memory_limit"]
        assert item["cpu_seconds"] >= 0

        async def graphed() -> bool:
            body = await history(gw.client, root)
            return bool(points(body, "app_memory_bytes", app_id))

        await wait_until(graphed, 30, "the app's memory in the history")
        body = await history(gw.client, root)
        series = [s for s in body["series"] if s["metric"] == "app_memory_bytes"]
        assert [s["metric"] for s in body["series"][:5]] == SYSTEM
        assert [(s["app_id"], s["location"]) for s in series] == [(app_id, "graphs")]
        assert all(v > 0 for _, v in series[0]["points"])

        # a stopped app leaves the stats (and so gets no new samples)
        stopped = await gw.client.call("POST", f"/api/v1/apps/{app_id}/stop", token=root)
        assert stopped.status == 200, stopped.body

        async def gone() -> bool:
            return not (await apps.ask("stats", {}))["items"]

        await wait_until(gone, 30, "the stopped app to leave the apps stats")
