"""A small HTTP/1.1 server for the probes (/healthz, /readyz, /metrics) of a service that has
no other HTTP route.

aiohttp (its client, server and their dependencies) costs a process ~11 MiB of heap for as long
as it runs; most services answer only their probes over HTTP, so they are served by this
instead, and aiohttp is imported only by a service that declares routes of its own
(`Service.http_app`). One request per connection (`Connection: close`), GET and HEAD only,
requests bounded in size and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

__all__ = ["ProbeResponse", "ProbeServer"]

# status, content type, body
ProbeResponse = tuple[int, str, bytes]
ProbeHandler = Callable[[Mapping[str, str]], Awaitable[ProbeResponse]]

_MAX_HEAD = 8192  # bytes of request line and headers
_READ_TIMEOUT = 10.0  # seconds for a client to send its request
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

log = logging.getLogger("homeport.probes")


class ProbeServer:
    """Serves `routes` (path -> handler of the request headers) on host:port."""

    def __init__(self, routes: Mapping[str, ProbeHandler]) -> None:
        self._routes = dict(routes)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return 0
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port (OSError when it cannot)."""
        self._server = await asyncio.start_server(self._serve, host, port, limit=_MAX_HEAD)

    async def stop(self, grace: float) -> None:
        """Stop listening; requests in progress get `grace` seconds, then are cancelled."""
        if self._server is None:
            return
        self._server.close()
        if self._open:
            _, pending = await asyncio.wait(set(self._open), timeout=grace)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
        self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._open.add(task)
        try:
            status, ctype, body, head = await self._answer(reader)
            reason = _REASONS.get(status, "")
            lines = [
                f"HTTP/1.1 {status} {reason}",
                f"Content-Type: {ctype}",
                f"Content-Length: {len(body)}",
                "Connection: close",
            ]
            if status == 405:
                lines.append("Allow: GET, HEAD")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            if not head:
                writer.write(body)
            await writer.drain()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            if task is not None:
                self._open.discard(task)

    async def _answer(self, reader: asyncio.StreamReader) -> tuple[int, str, bytes, bool]:
        try:
            async with asyncio.timeout(_READ_TIMEOUT):
                raw = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.LimitOverrunError, ValueError):
            return 400, "text/plain", b"request head too large\n", False
        request_line, *header_lines = raw.decode("latin-1").split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return 400, "text/plain", b"bad request line\n", False
        method, target, _ = parts
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"method not allowed\n", False
        headers: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, sep, value = line.partition(":")
                if not sep:
                    return 400, "text/plain", b"bad header line\n", False
                headers[name.strip().title()] = value.strip()
        handler = self._routes.get(target.split("?", 1)[0])
        if handler is None:
            return 404, "text/plain", b"404: Not Found", head
        try:
            status, ctype, body = await handler(headers)
        except Exception:
            log.exception("probe %s failed", target)
            return 500, "text/plain", b"500: Internal Server Error", head
        return status, ctype, body, head
