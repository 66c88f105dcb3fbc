"""The alert rules: from facts (the read model), measurements and what other services answer,
the set of conditions that hold now, each with its key, category, severity and words.

`decide()` is a pure function of its inputs and the time: the evaluator (evaluate.py) compares
its answer with the open alerts and records what opened and what cleared.

| key                         | holds while                                                      |
|-----------------------------|------------------------------------------------------------------|
| app-down:<app>              | it died, should run, and is not back after `app_down_seconds`     |
| app-restarting:<app>        | `restart_count` deaths within the window; clears after quiet time |
| app-oom:<app>               | the kernel killed it for memory within the quiet time             |
| app-unhealthy:<app>         | apps recorded it unhealthy (its configured period), and not down  |
| cert-failed:<name>          | the last order or renewal of the certificate failed               |
| cert-expiring:<name>        | the certificate in force ends within `cert_days`                  |
| backup-failed               | the last backup run failed (after the last success)               |
| backup-stale                | scheduled, and no success within `backup_hours`                   |
| disk:<level>:<path>         | the file system of path is at least `level` % full                |
| memory                      | available memory under its share, or the kernel reports pressure  |
| update:platform             | a newer signed platform release is available                     |
| update:app:<app>            | the catalog has a newer version of an installed app               |
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from services.notify.config import NotifyConfig

__all__ = [
    "Alert",
    "AppFacts",
    "BackupFacts",
    "CertFacts",
    "Disk",
    "Facts",
    "Memory",
    "decide",
]


@dataclass(frozen=True, slots=True)
class Alert:
    key: str
    category: str
    severity: str
    title: str
    detail: str


@dataclass(frozen=True, slots=True)
class AppFacts:
    app_id: str
    name: str  # "<manifest> at <host>"
    installed: bool
    running: bool
    down_since: datetime | None
    unhealthy_since: datetime | None
    unhealthy_detail: str
    deaths: tuple[datetime, ...]
    oom_at: datetime | None


@dataclass(frozen=True, slots=True)
class CertFacts:
    name: str
    not_after: datetime | None
    failed_at: datetime | None
    failed_message: str


@dataclass(frozen=True, slots=True)
class BackupFacts:
    scheduled: bool
    scheduled_since: datetime | None
    last_success: datetime | None
    last_failure: datetime | None
    failure_reason: str


@dataclass(frozen=True, slots=True)
class Disk:
    path: Path
    used_percent: float
    free_bytes: int


@dataclass(frozen=True, slots=True)
class Memory:
    available_percent: float | None
    psi_some_avg60: float | None


@dataclass(frozen=True, slots=True)
class Facts:
    apps: Sequence[AppFacts] = ()
    certs: Sequence[CertFacts] = ()
    backup: BackupFacts | None = None
    disks: Sequence[Disk] = ()
    memory: Memory | None = None
    platform_update: str | None = None  # the newer version
    app_updates: Mapping[str, tuple[str, str]] = field(default_factory=dict)  # id -> (now, new)


def _ago(now: datetime, then: datetime) -> str:
    s = max(0, int((now - then).total_seconds()))
    if s < 120:
        return f"{s} seconds"
    if s < 7200:
        return f"{s // 60} minutes"
    if s < 172800:
        return f"{s // 3600} hours"
    return f"{s // 86400} days"


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} bytes"


def decide(facts: Facts, now: datetime, cfg: NotifyConfig) -> dict[str, Alert]:
    """Every condition that holds at `now`, by key."""
    out: dict[str, Alert] = {}

    def add(a: Alert) -> None:
        out[a.key] = a

    for app in facts.apps:
        for a in _app(app, now, cfg):
            add(a)
    for cert in facts.certs:
        for a in _cert(cert, now, cfg):
            add(a)
    if facts.backup is not None:
        for a in _backup(facts.backup, now, cfg):
            add(a)
    for d in facts.disks:
        for level, severity in (
            (cfg.notify_disk_critical, "critical"),
            (cfg.notify_disk_warning, "warning"),
        ):
            if d.used_percent >= level:
                add(
                    Alert(
                        f"disk:{level:g}:{d.path}",
                        "system",
                        severity,
                        f"Disk {d.used_percent:.0f} % full at {d.path}",
                        f"The file system holding {d.path} is {d.used_percent:.1f} % full"
                        f" ({_size(d.free_bytes)} free; alert at {level:g} %). Remove old data or"
                        " backups, or give the server more disk, before apps and the platform"
                        " can no longer write.",
                    )
                )
    if facts.memory is not None:
        m = facts.memory
        low = m.available_percent is not None and m.available_percent < cfg.notify_memory_available
        pressed = m.psi_some_avg60 is not None and m.psi_some_avg60 >= cfg.notify_memory_psi
        if low or pressed:
            seen = []
            if m.available_percent is not None:
                seen.append(f"{m.available_percent:.1f} % of memory available")
            if m.psi_some_avg60 is not None:
                seen.append(f"tasks waited for memory {m.psi_some_avg60:.0f} % of the last minute")
            add(
                Alert(
                    "memory",
                    "system",
                    "warning",
                    "The server is short of memory",
                    "; ".join(seen).capitalize()
                    + ". Apps may be slow or killed: lower some apps' memory limits, stop apps"
                    " you do not use, or give the server more memory.",
                )
            )
    if facts.platform_update:
        add(
            Alert(
                "update:platform",
                "updates",
                "info",
                f"Homeport {facts.platform_update} is available",
                f"A newer signed release ({facts.platform_update}) is available. Update from"
                " the System page; it rolls back by itself if it fails.",
            )
        )
    names = {a.app_id: a.name for a in facts.apps}
    for app_id, (current, new) in sorted(facts.app_updates.items()):
        if app_id not in names:
            continue
        add(
            Alert(
                f"update:app:{app_id}",
                "updates",
                "info",
                f"Update available for {names[app_id]}: {current} → {new}",
                f"Version {new} of {names[app_id]} is in the catalog (installed: {current})."
                " Update it from the app's page; a snapshot is taken first.",
            )
        )
    return out


def _app(app: AppFacts, now: datetime, cfg: NotifyConfig) -> list[Alert]:
    if not app.installed:
        return []
    out: list[Alert] = []
    down = (
        app.running
        and app.down_since is not None
        and now - app.down_since >= timedelta(seconds=cfg.notify_app_down_seconds)
    )
    if down:
        assert app.down_since is not None
        out.append(
            Alert(
                f"app-down:{app.app_id}",
                "apps",
                "critical",
                f"{app.name} is down",
                f"Its container stopped {_ago(now, app.down_since)} ago and has not come back."
                " Look at its log on the app's page; restart or repair it there.",
            )
        )
    window = timedelta(seconds=cfg.notify_restart_window_seconds)
    quiet = timedelta(seconds=cfg.notify_quiet_seconds)
    recent = [d for d in app.deaths if now - d < window]
    last_death = max(app.deaths) if app.deaths else None
    # restarting repeatedly: enough deaths in a window that ended less than the quiet time ago
    windows = [sum(1 for d in app.deaths if timedelta(0) <= end - d < window) for end in app.deaths]
    if (
        last_death is not None
        and now - last_death < quiet
        and max(windows, default=0) >= cfg.notify_restart_count
    ):
        out.append(
            Alert(
                f"app-restarting:{app.app_id}",
                "apps",
                "warning",
                f"{app.name} keeps restarting",
                f"It stopped {max(windows)} times within {_ago(now, now - window)}"
                f" ({len(recent)} in the last window). Look at its log on the app's page.",
            )
        )
    if app.oom_at is not None and now - app.oom_at < quiet:
        out.append(
            Alert(
                f"app-oom:{app.app_id}",
                "apps",
                "warning",
                f"{app.name} ran out of memory",
                f"The kernel stopped it for using all its memory {_ago(now, app.oom_at)} ago."
                " Give it a higher memory limit on the app's page.",
            )
        )
    if app.running and app.unhealthy_since is not None and not down and app.down_since is None:
        out.append(
            Alert(
                f"app-unhealthy:{app.app_id}",
                "apps",
                "warning",
                f"{app.name} is unhealthy",
                f"Its health check has failed since {_ago(now, app.unhealthy_since)} ago"
                + (f": {app.unhealthy_detail}" if app.unhealthy_detail else "")
                + ".",
            )
        )
    return out


def _cert(cert: CertFacts, now: datetime, cfg: NotifyConfig) -> list[Alert]:
    out: list[Alert] = []
    if cert.failed_at is not None:
        out.append(
            Alert(
                f"cert-failed:{cert.name}",
                "certificates",
                "warning",
                f"The certificate for {cert.name} could not be renewed",
                f"The last order failed {_ago(now, cert.failed_at)} ago ({cert.failed_message})."
                " It is tried again by itself; check the domain's DNS records on the Domains"
                " page.",
            )
        )
    if cert.not_after is not None and cert.not_after - now < timedelta(days=cfg.notify_cert_days):
        left = cert.not_after - now
        ends = "has expired" if left <= timedelta(0) else f"expires in {_ago(now, now - left)}"
        out.append(
            Alert(
                f"cert-expiring:{cert.name}",
                "certificates",
                "critical",
                f"The certificate for {cert.name} {ends}",
                f"It is valid until {cert.not_after:%Y-%m-%d %H:%M} UTC. Browsers refuse the"
                " site once it has expired; see the certificate on the Domains page.",
            )
        )
    return out


def _backup(b: BackupFacts, now: datetime, cfg: NotifyConfig) -> list[Alert]:
    out: list[Alert] = []
    if b.last_failure is not None and (b.last_success is None or b.last_failure > b.last_success):
        out.append(
            Alert(
                "backup-failed",
                "backups",
                "warning",
                "A backup failed",
                f"The backup run {_ago(now, b.last_failure)} ago failed"
                + (f": {b.failure_reason}" if b.failure_reason else "")
                + ". See the Backups page.",
            )
        )
    limit = timedelta(hours=cfg.notify_backup_hours)
    since = b.last_success or b.scheduled_since
    if b.scheduled and since is not None and now - since >= limit:
        last = (
            f"The last one succeeded {_ago(now, b.last_success)} ago."
            if b.last_success
            else "None has succeeded since backups were scheduled."
        )
        out.append(
            Alert(
                "backup-stale",
                "backups",
                "warning",
                f"No backup succeeded in {cfg.notify_backup_hours:g} hours",
                f"{last} See the Backups page.",
            )
        )
    return out
