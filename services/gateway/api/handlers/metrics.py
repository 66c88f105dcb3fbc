"""The metrics history the dashboard graphs (services/gateway/metrics_history.py samples it)."""

from __future__ import annotations

from typing import Any

from libs.contracts.schema import array, integer, obj, string
from services.gateway.api.routes import Access, Call, Routes
from services.gateway.metrics_history import APP_MEMORY, RANGES, SYSTEM_METRICS, history

__all__ = ["routes"]

routes = Routes("metrics")

HISTORY_QUERY = obj(
    {
        "range": string(
            enum=list(RANGES), default="1h", description="how far back: 1h, 6h, 24h or 7d"
        )
    }
)
POINT = array(
    {"type": "number"},
    minItems=2,
    maxItems=2,
    description="[unix seconds of the step's start, the average of its samples]",
)
SERIES = obj(
    {
        "metric": string(enum=[*SYSTEM_METRICS, APP_MEMORY]),
        "app_id": string(format="uuid", description="app_memory_bytes only"),
        "location": string(description="app_memory_bytes only: where the app was"),
        "points": array(POINT, maxItems=400),
    },
    required=["metric", "points"],
)
HISTORY = obj(
    {
        "range": string(enum=list(RANGES)),
        "step_seconds": integer(minimum=1, description="the width of each point's step"),
        "series": array(
            SERIES,
            description=(
                "every system series (points may be empty), then one app_memory_bytes series "
                "per app and location with samples in the range"
            ),
        ),
    },
    required=["range", "step_seconds", "series"],
)


@routes.get(
    "/metrics/history",
    access=Access.admin,
    summary="System memory, CPU and disk, and each app's memory, over a range",
    description=(
        "Averaged per step (range / 360: 10 s, 1 min, 4 min or 28 min), at most 360 points "
        "a series, oldest first; the last step is still filling."
    ),
    query=HISTORY_QUERY,
    responses={200: HISTORY},
)
async def metrics_history(call: Call) -> Any:
    return await history(call.pool, call.query.get("range", "1h"))
