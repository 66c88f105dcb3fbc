"""A small service for the runner's process tests.

Run as `python -m tests.service.sample_service MODE MARKER`.
MODE "serve": GET /slow?seconds=N is one unit of work; it writes "begun" and "finished" to MARKER.
MODE "crash": a spawned consumer raises shortly after start.
MODE "loop": writes the module of its event loop's class to MARKER at start, then stops.
Both write "cleanup" to MARKER from an on_cleanup hook.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from aiohttp import web

from libs.service.config import ServiceConfig, load_config
from libs.service.runner import Service, main


def _note(marker: Path, what: str) -> None:
    with marker.open("a") as f:
        f.write(what + "\n")


def build() -> Service:
    """The sample service, wired like a real one."""
    mode, marker = sys.argv[1], Path(sys.argv[2])
    svc = Service("sample", load_config(ServiceConfig))

    async def slow(request: web.Request) -> web.Response:
        async with svc.work("slow-request"):
            _note(marker, "begun")
            await asyncio.sleep(float(request.query.get("seconds", "1")))
            _note(marker, "finished")
        return web.Response(text="done")

    async def consume() -> None:
        await asyncio.sleep(0.2)
        raise RuntimeError("consumer lost its subscription")

    async def start() -> None:
        if mode == "crash":
            svc.spawn(consume(), "consumer")
        if mode == "loop":
            _note(marker, type(asyncio.get_running_loop()).__module__)
            svc.request_stop("the loop is noted")

    async def cleanup() -> None:
        _note(marker, "cleanup")

    svc.http_app.router.add_get("/slow", slow)
    svc.on_start(start)
    svc.on_cleanup(cleanup)
    return svc


if __name__ == "__main__":
    main(build)
