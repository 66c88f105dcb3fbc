"""What `homeport update` runs of a release (`python -m deploy.install --repair`): only the
repair steps — users, folders, configuration, keyrings, unit files, roles — never one that
checks ports, starts or restarts units, waits for health or touches Docker (the updater
restarts and checks health itself, and rolls back on its own terms)."""

from __future__ import annotations

import pytest

from deploy import install
from deploy.install import REPAIR_STEPS, Installer, Options


def test_the_repair_steps_start_nothing() -> None:
    assert [name for name, _, _ in REPAIR_STEPS] == [
        "users", "dirs", "config", "keyring", "units", "roles",
    ]  # fmt: skip
    starting = {
        Installer._checks, Installer._current, Installer._postgres, Installer._docker,
        Installer._base_image, Installer._units, Installer._health, Installer._upgrades,
    }  # fmt: skip
    assert not starting & {step for _, _, step in REPAIR_STEPS}


def test_repair_runs_the_repair_steps_and_no_other(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []

    def step(name: str) -> object:
        return lambda _installer: ran.append(name)

    monkeypatch.setattr(install, "REPAIR_STEPS", [(n, "m", step(n)) for n in ("a", "b")])
    monkeypatch.setattr(install, "STEPS", [("full", "m", step("full install"))])
    lines: list[str] = []
    Installer(Options("9.9.9"), say=lines.append).repair()
    assert ran == ["a", "b"] and lines == ["[1/2] a: m", "[2/2] b: m"]
