"""Docker's oom events as incidents (services/apps/health.py, OomIncidents): containerd 1.6 on
cgroup v2 may tell one kill of a container twice, 1-3 ms apart (3 of 8 kills of a 32 MiB
container on this machine's dockerd), and a person must see one "out of memory", not two. The
real kill is in test_lifecycle.py (test_health_death_and_out_of_memory_are_recorded)."""

from __future__ import annotations

from services.apps.health import OOM_INCIDENT_S, OomIncidents


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_one_kill_told_twice_is_one_incident_and_apps_are_apart() -> None:
    clock = Clock()
    oom = OomIncidents(clock)
    assert oom.new("a") is True
    clock.now += 0.003  # the same kill, told again
    assert oom.new("a") is False
    assert oom.new("b") is True  # another app's kill is its own
    clock.now += OOM_INCIDENT_S
    assert oom.new("a") is True  # a later kill is another incident


def test_a_container_killed_again_and_again_is_still_told() -> None:
    """The window counts from the last recorded incident, not the last event: events every
    half second for ten seconds are an incident every OOM_INCIDENT_S, never silence."""
    clock = Clock()
    oom = OomIncidents(clock)
    told = 0
    for _ in range(20):
        told += oom.new("a")
        clock.now += 0.5
    assert told == 5
