"""Hypothesis settings for stateful runs against real services and processes."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

__all__ = ["real_run_settings"]


def real_run_settings(examples: int, steps: int) -> settings:
    """`examples` runs of up to `steps` steps: the same ones every time under CI, no deadline
    (real servers take their time) and no shrinking (a real service is not replayed exactly:
    a failure shows its whole run)."""
    return settings(
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        database=None,
        derandomize=os.environ.get("CI") == "true",
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
    )
