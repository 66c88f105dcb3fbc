"""Baseline servers of `gateway_read_vs_bare`, each run as a child process until SIGTERM:

    python -m bench.bare http PORT
        a bare aiohttp handler answering `GET /api/v1/profile` with a body like the gateway's;
    python -m bench.bare floor PORT NATS_URL
        the same route over the same hops as the gateway, with nothing else: the handler asks
        `whoami` then `profile` over NATS request/reply (plain nats-py, no bus envelope, no
        middleware, no schema checks) and returns the answer;
    python -m bench.bare responder NATS_URL DSN
        answers the floor's two requests with one asyncpg query each, the same SQL identity
        runs, over identity's tables (no keyring: sealed values are returned as stored).

The floor is what the architecture costs (two bus round trips, two queries per request), so
ours ÷ floor is what our code adds and floor ÷ bare what the hops add.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any

import asyncpg
import nats
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from libs.service.runner import run_on_service_loop, service_loop
from services.gateway.api.auth import SESSION_COOKIE
from services.identity.tokens import token_hash

__all__ = ["PROFILE", "main"]

PROFILE = {
    "user_id": "0190c2a4-6f1e-4b8a-9d3c-2e5f7a1b8c9d",
    "username": "root",
    "email": "root@example.test",
    "display_name": None,
    "is_admin": True,
    "disabled": False,
}
WHOAMI = "bench.floor.whoami"
PROFILE_SUBJECT = "bench.floor.profile"
_WHOAMI_SQL = (
    "SELECT s.session_id, s.last_seen, u.user_id, u.username, u.is_admin"
    " FROM identity.sessions s JOIN identity.users u USING (user_id)"
    " WHERE s.session_hash = $1 AND NOT u.disabled AND s.expires_at > now()"
    " AND s.last_seen > now() - make_interval(secs => s.idle_seconds)"
)
_PROFILE_SQL = "SELECT * FROM identity.users WHERE user_id = $1"
_POOL_SIZE = 5  # as libs.events.wiring.connections


def _run_app(app: web.Application, port: int) -> None:
    """Serve `app` on the services' event loop (`service_loop`): the gateway's ratio to it is
    then what our code adds, not what the loop takes off."""
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        access_log=None,
        print=None,
        loop=service_loop(),
    )


# -- http -------------------------------------------------------------------------------------


async def _bare(request: web.Request) -> web.Response:
    return web.json_response(PROFILE, headers={"Cache-Control": "no-store"})


def _serve_http(port: int) -> None:
    app = web.Application()
    app.router.add_get("/api/v1/profile", _bare)
    _run_app(app, port)


# -- floor ------------------------------------------------------------------------------------

_NC = web.AppKey("bench_nc", NATS)


async def _ask(nc: NATS, subject: str, payload: dict[str, Any]) -> dict[str, Any]:
    msg = await nc.request(subject, json.dumps(payload).encode(), timeout=5)
    reply: dict[str, Any] = json.loads(msg.data)
    if "error" in reply:
        raise web.HTTPUnauthorized(text=str(reply["error"]))
    return reply


async def _floor(request: web.Request) -> web.Response:
    nc = request.app[_NC]
    session = request.cookies.get(SESSION_COOKIE)
    if session is None:
        raise web.HTTPUnauthorized()
    who = await _ask(nc, WHOAMI, {"session": session})
    profile = await _ask(nc, PROFILE_SUBJECT, {"user_id": who["user_id"]})
    return web.json_response(profile, headers={"Cache-Control": "no-store"})


def _serve_floor(port: int, nats_url: str) -> None:
    async def connect(app: web.Application) -> Any:
        app[_NC] = await nats.connect(nats_url, name="hp-bench-floor")
        yield
        await app[_NC].close()

    app = web.Application()
    app.cleanup_ctx.append(connect)
    app.router.add_get("/api/v1/profile", _floor)
    _run_app(app, port)


# -- responder --------------------------------------------------------------------------------


async def _respond(nats_url: str, dsn: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=_POOL_SIZE, max_size=_POOL_SIZE)
    nc = await nats.connect(nats_url, name="hp-bench-responder")
    tasks: set[asyncio.Task[None]] = set()

    async def answer(msg: Msg) -> None:
        body = json.loads(msg.data)
        if msg.subject == WHOAMI:
            row = await pool.fetchrow(_WHOAMI_SQL, token_hash(body["session"]))
            reply: dict[str, Any] = (
                {"error": "unauthorized"}
                if row is None
                else {
                    "user_id": str(row["user_id"]),
                    "username": row["username"],
                    "is_admin": row["is_admin"],
                    "scope": "full",
                }
            )
        else:
            row = await pool.fetchrow(_PROFILE_SQL, body["user_id"])
            assert row is not None
            reply = {
                k: str(row[k]) if k == "user_id" else row[k]
                for k in ("user_id", "username", "email", "display_name", "is_admin", "disabled")
            }
        await nc.publish(msg.reply, json.dumps(reply).encode())

    async def receive(msg: Msg) -> None:
        # One task per request, as the bus does: queries run concurrently on the pool.
        task = asyncio.create_task(answer(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for subject in (WHOAMI, PROFILE_SUBJECT):
            await nc.subscribe(subject, queue="hp.bench", cb=receive)
        await nc.flush()
        await stop.wait()
    finally:
        await nc.close()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        await pool.close()


_USAGE = "usage: python -m bench.bare http PORT | floor PORT NATS_URL | responder NATS_URL DSN"


def main(argv: Sequence[str]) -> int:
    match list(argv):
        case ["http", port] if port.isdigit():
            _serve_http(int(port))
        case ["floor", port, nats_url] if port.isdigit():
            _serve_floor(int(port), nats_url)
        case ["responder", nats_url, dsn]:
            run_on_service_loop(_respond(nats_url, dsn))
        case _:
            print(_USAGE, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
