"""A tiny service for the stack tests: answers /healthz, /readyz and / on HP_HTTP_PORT.

It follows the service conventions the stack relies on (configured by HP_* variables, JSON log
lines on stderr, a clean exit on SIGTERM) without depending on any real service.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

from aiohttp import web

# Echoed by /healthz so a test can see what the stack passed; none of them holds a secret here.
SHOWN = (
    "HP_DATABASE_URL",
    "HP_NATS_URL",
    "HP_HTTP_HOST",
    "HP_HTTP_PORT",
    "HP_LOG_LEVEL",
    "HP_DRAIN_SECONDS",
    "HP_KEYRING",
    "HP_DATA_DIR",
)


def _log(event: str, **extra: object) -> None:
    print(json.dumps({"service": "sample", "event": event, **extra}), file=sys.stderr, flush=True)


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response(
        {"status": "ok", "pid": os.getpid(), "env": {k: os.environ.get(k) for k in SHOWN}}
    )


async def _index(_: web.Request) -> web.Response:
    return web.Response(text="sample dashboard\n")


async def main() -> None:
    port = int(os.environ["HP_HTTP_PORT"])
    app = web.Application()
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _healthz)
    app.router.add_get("/", _index)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, os.environ.get("HP_HTTP_HOST", "127.0.0.1"), port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _log("listening", port=port)
    await stop.wait()
    _log("stopping")
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
