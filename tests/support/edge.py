"""Requests to the edge as a browser sends them once a host resolves to this machine."""

from __future__ import annotations

import asyncio
import ssl


async def edge_get(
    port: int,
    host: str,
    path: str = "/",
    *,
    tls: bool = True,
    cadata: str | None = None,
    source: str | None = None,
) -> tuple[int, dict[str, str], str]:
    """A raw HTTP/1.1 GET to 127.0.0.1:port for `host` (SNI and Host): (status, headers, body).
    With `cadata` the server's chain must verify against it; without, any certificate is
    accepted (self-signed ones of the local domain). `source`: the address it is sent from
    (another loopback address, e.g. 127.0.0.2)."""
    ctx = None
    if tls:
        ctx = ssl.create_default_context(cadata=cadata)
        if cadata is None:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        port,
        ssl=ctx,
        server_hostname=host if tls else None,
        local_addr=(source, 0) if source else None,
    )
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.decode(errors="replace").partition("\r\n\r\n")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0] else 0
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return status, headers, body


async def refused(port: int, host: str, cadata: str | None = None) -> bool:
    """Whether the edge refuses `host` over HTTPS (handshake refused or closed unanswered)."""
    try:
        status, _, _ = await edge_get(port, host, cadata=cadata)
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
        return True
    return status == 0
