"""The alert rules (services/notify/conditions.py): each condition holds from its threshold on,
not a moment before, and clears when its cause is gone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from libs.service.config import load_config
from services.notify.conditions import (
    AppFacts,
    BackupFacts,
    CertFacts,
    Disk,
    Facts,
    Memory,
    decide,
)
from services.notify.config import NotifyConfig

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
APP = "5f2e7d4d-0000-4000-8000-000000000001"


def _cfg(**extra: str) -> NotifyConfig:
    return load_config(
        NotifyConfig, {"HP_DATABASE_URL": "postgresql://x/y", "HP_NATS_URL": "nats://x", **extra}
    )


CFG = _cfg()


def _app(**kw: object) -> AppFacts:
    base: dict[str, object] = {
        "app_id": APP,
        "name": "Static website at blog.example.org",
        "installed": True,
        "running": True,
        "down_since": None,
        "unhealthy_since": None,
        "unhealthy_detail": "",
        "deaths": (),
        "oom_at": None,
    }
    base.update(kw)
    return AppFacts(**base)  # type: ignore[arg-type]


def _keys(facts: Facts, now: datetime, cfg: NotifyConfig = CFG) -> set[str]:
    return set(decide(facts, now, cfg))


def test_an_app_is_down_only_after_five_minutes_and_only_while_it_should_run() -> None:
    died = _app(down_since=T0, deaths=(T0,))
    assert _keys(Facts(apps=[died]), T0 + timedelta(seconds=299)) == set()
    alerts = decide(Facts(apps=[died]), T0 + timedelta(seconds=300), CFG)
    assert set(alerts) == {f"app-down:{APP}"}
    a = alerts[f"app-down:{APP}"]
    assert a.title == "Static website at blog.example.org is down"
    assert a.severity == "critical" and a.category == "apps"
    assert "5 minutes" in a.detail
    # stopped by its user: not down
    assert _keys(Facts(apps=[_app(down_since=T0, running=False)]), T0 + timedelta(hours=1)) == set()
    # an operation in progress or failed (not installed): no app alerts
    failed = _app(down_since=T0, installed=False)
    assert _keys(Facts(apps=[failed]), T0 + timedelta(hours=1)) == set()


def test_restarting_repeatedly_counts_deaths_in_a_window_and_clears_after_quiet_time() -> None:
    two = _app(deaths=(T0, T0 + timedelta(minutes=1)))
    assert _keys(Facts(apps=[two]), T0 + timedelta(minutes=2)) == set()
    three = _app(deaths=(T0, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)))
    assert _keys(Facts(apps=[three]), T0 + timedelta(minutes=3)) == {f"app-restarting:{APP}"}
    # 15 minutes after the last death without another: cleared
    assert _keys(Facts(apps=[three]), T0 + timedelta(minutes=17)) == set()
    # three deaths spread wider than the window are not "repeatedly"
    spread = _app(deaths=(T0, T0 + timedelta(minutes=10), T0 + timedelta(minutes=20)))
    assert _keys(Facts(apps=[spread]), T0 + timedelta(minutes=21)) == set()


def test_out_of_memory_and_unhealthy() -> None:
    oom = _app(oom_at=T0)
    assert _keys(Facts(apps=[oom]), T0 + timedelta(minutes=1)) == {f"app-oom:{APP}"}
    assert _keys(Facts(apps=[oom]), T0 + timedelta(minutes=16)) == set()
    sick = _app(unhealthy_since=T0, unhealthy_detail="/ answered HTTP 502")
    alerts = decide(Facts(apps=[sick]), T0 + timedelta(minutes=4), CFG)
    assert set(alerts) == {f"app-unhealthy:{APP}"}
    assert "HTTP 502" in alerts[f"app-unhealthy:{APP}"].detail
    # down and unhealthy at once: told once, as down
    both = _app(unhealthy_since=T0, down_since=T0)
    assert _keys(Facts(apps=[both]), T0 + timedelta(minutes=6)) == {f"app-down:{APP}"}


def test_certificates() -> None:
    fresh = CertFacts("blog.example.org", T0 + timedelta(days=60), None, "")
    assert _keys(Facts(certs=[fresh]), T0) == set()
    failed = CertFacts("blog.example.org", T0 + timedelta(days=20), T0, "rejected: no A record")
    alerts = decide(Facts(certs=[failed]), T0, CFG)
    assert set(alerts) == {"cert-failed:blog.example.org"}
    assert "no A record" in alerts["cert-failed:blog.example.org"].detail
    ending = CertFacts("blog.example.org", T0 + timedelta(days=7), None, "")
    assert _keys(Facts(certs=[ending]), T0 - timedelta(seconds=1)) == set()
    assert _keys(Facts(certs=[ending]), T0 + timedelta(seconds=1)) == {
        "cert-expiring:blog.example.org"
    }
    gone = decide(Facts(certs=[ending]), T0 + timedelta(days=8), CFG)
    assert "has expired" in gone["cert-expiring:blog.example.org"].title


def test_backups() -> None:
    ok = BackupFacts(True, T0, T0, None, "")
    assert _keys(Facts(backup=ok), T0 + timedelta(hours=35)) == set()
    assert _keys(Facts(backup=ok), T0 + timedelta(hours=36)) == {"backup-stale"}
    failed = BackupFacts(True, T0, T0, T0 + timedelta(hours=1), "the target is full")
    alerts = decide(Facts(backup=failed), T0 + timedelta(hours=2), CFG)
    assert set(alerts) == {"backup-failed"}
    assert "the target is full" in alerts["backup-failed"].detail
    # a later success clears the failure
    later = BackupFacts(True, T0, T0 + timedelta(hours=3), T0 + timedelta(hours=1), "x")
    assert _keys(Facts(backup=later), T0 + timedelta(hours=4)) == set()
    # never succeeded, scheduled 36 h ago; not scheduled: nothing expected
    assert _keys(Facts(backup=BackupFacts(True, T0, None, None, "")), T0 + timedelta(hours=37)) == {
        "backup-stale"
    }
    off = BackupFacts(False, T0, None, None, "")
    assert _keys(Facts(backup=off), T0 + timedelta(days=9)) == set()


def test_disk_levels_and_memory() -> None:
    p = Path("/var/lib/homeport")
    assert _keys(Facts(disks=[Disk(p, 89.9, 10)]), T0) == set()
    assert _keys(Facts(disks=[Disk(p, 90.0, 10)]), T0) == {"disk:90:/var/lib/homeport"}
    assert _keys(Facts(disks=[Disk(p, 96.0, 10)]), T0) == {
        "disk:90:/var/lib/homeport",
        "disk:95:/var/lib/homeport",
    }
    assert _keys(Facts(memory=Memory(50.0, 1.0)), T0) == set()
    assert _keys(Facts(memory=Memory(4.0, None)), T0) == {"memory"}
    assert _keys(Facts(memory=Memory(None, 55.0)), T0) == {"memory"}


def test_updates_name_the_app() -> None:
    facts = Facts(apps=[_app()], platform_update="1.4.0", app_updates={APP: ("1.0.0", "2.0.0")})
    alerts = decide(facts, T0, CFG)
    assert alerts["update:platform"].title == "Homeport 1.4.0 is available"
    assert alerts[f"update:app:{APP}"].title == (
        "Update available for Static website at blog.example.org: 1.0.0 → 2.0.0"
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=7200), max_size=8),
    st.integers(min_value=0, max_value=9000),
)
def test_restart_rule_property(offsets: list[int], later: int) -> None:
    """It holds exactly when some 15-minute window held 3 deaths and the last death is less
    than 15 minutes old."""
    deaths = tuple(sorted(T0 + timedelta(seconds=o) for o in offsets))
    now = T0 + timedelta(seconds=later)
    if deaths and now < deaths[-1]:
        now = deaths[-1]
    window = timedelta(seconds=900)
    crowded = any(sum(1 for d in deaths if timedelta(0) <= e - d < window) >= 3 for e in deaths)
    fresh = bool(deaths) and now - deaths[-1] < timedelta(seconds=900)
    got = f"app-restarting:{APP}" in _keys(Facts(apps=[_app(deaths=deaths)]), now)
    assert got == (crowded and fresh)


def test_memory_is_read_from_the_kernel(tmp_path: Path) -> None:
    from services.notify.measure import disks, memory

    real = memory(Path("/proc"))
    assert real.available_percent is not None and 0 < real.available_percent <= 100
    # a kernel reporting pressure (the files as Linux writes them)
    (tmp_path / "pressure").mkdir()
    (tmp_path / "meminfo").write_text(
        "MemTotal:       24576000 kB\nMemFree:          100000 kB\nMemAvailable:     983040 kB\n"
    )
    (tmp_path / "pressure" / "memory").write_text(
        "some avg10=61.00 avg60=55.20 avg300=20.00 total=123\n"
        "full avg10=1.00 avg60=0.50 avg300=0.10 total=45\n"
    )
    m = memory(tmp_path)
    assert m.available_percent == 4.0 and m.psi_some_avg60 == 55.2
    alert = decide(Facts(memory=m), T0, CFG)["memory"]
    assert "4.0 % of memory available" in alert.detail
    # a path that does not exist yet says nothing; two paths on one file system count once
    assert disks([tmp_path / "nowhere"]) == []
    assert len(disks([tmp_path, tmp_path / "pressure"])) == 1
