"""A service without routes of its own answers its probes without aiohttp (libs.service.probes)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from libs.service.config import ServiceConfig
from libs.service.runner import Service

REPO = Path(__file__).resolve().parents[2]


def _config() -> ServiceConfig:
    return ServiceConfig(
        database_url="postgresql://unused", nats_url="nats://unused", drain_seconds=1.0
    )


async def _raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `request` as is; the status, headers and body of the answer (read to EOF)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines)}
    return int(status_line.split()[1]), headers, body


async def test_probes_answer_as_before_and_anything_else_is_refused() -> None:
    svc = Service("prober", _config())
    up = asyncio.Event()

    async def mark_up() -> None:
        up.set()

    svc.on_start(mark_up)
    task = asyncio.create_task(svc.serve())
    try:
        await asyncio.wait_for(up.wait(), 5)
        await asyncio.sleep(0.05)
        status, headers, body = await _raw(svc.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200 and headers["content-type"] == "application/json; charset=utf-8"
        assert json.loads(body) == {"status": "ok", "service": "prober"}
        assert headers["content-length"] == str(len(body))

        status, _, body = await _raw(svc.port, b"GET /readyz?x=1 HTTP/1.0\r\n\r\n")
        assert (status, json.loads(body)["status"]) == (200, "ready")

        status, headers, body = await _raw(svc.port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0
        accept = b"Accept: application/openmetrics-text; version=1.0.0\r\n"
        status, headers, body = await _raw(
            svc.port, b"GET /metrics HTTP/1.1\r\n" + accept + b"\r\n"
        )
        assert headers["content-type"].startswith("application/openmetrics-text")
        assert body.rstrip().endswith(b"# EOF")

        assert (await _raw(svc.port, b"GET /nothing HTTP/1.1\r\n\r\n"))[0] == 404
        status, headers, _ = await _raw(svc.port, b"POST /healthz HTTP/1.1\r\n\r\n")
        assert status == 405 and headers["allow"] == "GET, HEAD"
        assert (await _raw(svc.port, b"nonsense\r\n\r\n"))[0] == 400
        assert (await _raw(svc.port, b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 2000 + b"\r\n"))[
            0
        ] == 400
    finally:
        svc.request_stop("test over")
        await asyncio.wait_for(task, 10)
    assert svc.exit_code == 0


def test_a_service_without_routes_serves_its_probes_without_importing_aiohttp() -> None:
    code = (
        "import asyncio, sys, urllib.request\n"
        "from libs.service.config import ServiceConfig\n"
        "from libs.service.runner import Service\n"
        "async def main():\n"
        "    svc = Service('bare', ServiceConfig(database_url='postgresql://unused',"
        " nats_url='nats://unused'))\n"
        "    task = asyncio.create_task(svc.serve())\n"
        "    while not svc.port: await asyncio.sleep(0.01)\n"
        "    url = f'http://127.0.0.1:{svc.port}/healthz'\n"
        "    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read())\n"
        "    svc.request_stop('done'); await task\n"
        "    print(body.decode(), 'aiohttp' in sys.modules)\n"
        "asyncio.run(main())\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ['{"status":', '"ok",', '"service":', '"bare"}', "False"]
