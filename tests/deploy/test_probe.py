"""The stack's health probe (deploy/supervision.py `probe`) without aiohttp's client: a 200 is
healthy; any other answer, no answer, or something that is not HTTP is not, within its
deadline. With a session (the CLI's `status`) the verdicts are the same."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
from aiohttp import web

from deploy.embedded import free_port
from deploy.supervision import probe
from libs.service.probes import ProbeResponse, ProbeServer

REPO = Path(__file__).resolve().parents[2]


async def _ok(headers: Mapping[str, str]) -> ProbeResponse:
    return 200, "text/plain", b"ok\n"


async def _unavailable(headers: Mapping[str, str]) -> ProbeResponse:
    return 503, "text/plain", b"starting\n"


@contextlib.asynccontextmanager
async def _probe_server() -> AsyncIterator[str]:
    """A service's probe server (libs/service/probes.py), as most services answer."""
    server = ProbeServer({"/healthz": _ok, "/readyz": _unavailable})
    await server.start("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop(1.0)


@contextlib.asynccontextmanager
async def _aiohttp_server() -> AsyncIterator[str]:
    """A service with routes of its own answers its probes from aiohttp's server."""

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503, text="starting")

    app = web.Application()
    app.router.add_get("/healthz", ok)
    app.router.add_get("/readyz", unavailable)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture(params=["probe_server", "aiohttp_server"])
async def service(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """The base URL of a service's probes, served either way."""
    make = _probe_server if request.param == "probe_server" else _aiohttp_server
    async with make() as base:
        yield base


@contextlib.asynccontextmanager
async def _raw_server(answer: bytes | None) -> AsyncIterator[str]:
    """A server that writes `answer` and closes, or (None) reads and never answers."""
    held: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if answer is None:
            held.append(writer)
            return
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for w in held:
            w.close()
        server.close()
        await server.wait_closed()


async def test_a_200_is_healthy_and_anything_else_is_not(service: str) -> None:
    base = service
    assert await probe(f"{base}/healthz") == (True, "HTTP 200")
    assert await probe(f"{base}/readyz") == (False, "HTTP 503")
    assert await probe(f"{base}/nothing") == (False, "HTTP 404")


async def test_no_answer_or_no_http_is_not_healthy_within_the_deadline() -> None:
    closed = f"http://127.0.0.1:{free_port()}/healthz"
    ok, detail = await probe(closed)
    assert not ok and detail.startswith("no answer"), detail
    async with _raw_server(b"SSH-2.0-OpenSSH_9.2\r\n") as base:
        ok, detail = await probe(f"{base}/healthz")
        assert not ok and "not HTTP" in detail, detail
    async with _raw_server(b"") as base:  # closed at once
        assert (await probe(f"{base}/healthz"))[0] is False
    async with _raw_server(None) as base:  # never answers
        t0 = time.monotonic()
        ok, detail = await probe(f"{base}/healthz", deadline_s=0.3)
        assert not ok and detail.startswith("no answer"), detail
        assert time.monotonic() - t0 < 2.0
    ok, detail = await probe("https://127.0.0.1:1/healthz")
    assert not ok and "http://" in detail


def test_the_stack_runs_without_aiohttp_loaded() -> None:
    """The stack's own modules leave aiohttp's client (~0.1 s to import) to whoever needs it."""
    code = "import sys, deploy.stack, deploy.supervision; print('aiohttp' in sys.modules)"
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "False"
