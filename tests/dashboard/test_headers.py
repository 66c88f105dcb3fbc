"""The dashboard's answers meet SECURITY.md "HTTP": from the gateway and through the edge.

No inline script or style (the CSP forbids them, and the page must not need them), every asset
named with its SRI hash, nothing but the built files served, state changes accepted from the
dashboard's own origin (through nginx, on a port that is not 443) and refused from another.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest
from aiohttp.abc import ResolveResult

from tests.dashboard.dashkit import DIST, PlatformStarter
from tests.support.edge import edge_get
from tests.support.nginx import LoopbackResolver
from tests.support.waits import wait_until

pytestmark = pytest.mark.timeout(180)

_CSP_MUST = ("object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'", "script-src 'self'")


def _check_headers(h: dict[str, str], *, html: bool) -> None:
    csp = h["content-security-policy"]
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
    for part in _CSP_MUST:
        assert part in csp, (part, csp)
    assert h["strict-transport-security"] == "max-age=31536000; includeSubDomains"
    assert h["x-content-type-options"] == "nosniff"
    assert h["referrer-policy"] == "strict-origin-when-cross-origin"
    assert h["cross-origin-resource-policy"] == "same-origin"
    assert h["x-frame-options"] == "DENY"
    if html:
        assert h["cache-control"] == "no-store"


def _assets(html: str) -> list[tuple[str, str]]:
    """(path, integrity) of every script and stylesheet the page loads."""
    tags = re.findall(r"<(?:script|link)\b[^>]*>", html)
    out = []
    for tag in tags:
        src = re.search(r'(?:src|href)="([^"]+)"', tag)
        if src is None or 'rel="icon"' in tag:
            continue
        integrity = re.search(r'integrity="([^"]+)"', tag)
        assert integrity is not None, f"no SRI hash on {tag}"
        out.append((src.group(1), integrity.group(1)))
    return out


def test_built_page_has_no_inline_code_and_every_asset_has_its_hash() -> None:
    html = (DIST / "index.html").read_text()
    assert not re.search(r"<script\b(?![^>]*\bsrc=)", html), "an inline <script>"
    assert "<style" not in html and " style=" not in html and "javascript:" not in html
    assets = _assets(html)
    assert {Path(p).suffix for p, _ in assets} == {".js", ".css"}
    for path, integrity in assets:
        body = (DIST / path.lstrip("/")).read_bytes()
        digest = base64.b64encode(hashlib.sha384(body).digest()).decode()
        assert integrity == f"sha384-{digest}", path
    # the bundle has no eval-like construct the CSP would refuse at run time
    js = next((DIST / p.lstrip("/")).read_text() for p, _ in assets if p.endswith(".js"))
    assert "eval(" not in js and "new Function(" not in js


async def test_dashboard_headers_from_the_gateway_and_the_edge(
    platform: PlatformStarter,
) -> None:
    async with platform() as edged:
        client = edged.platform.client
        page = await client.call("GET", "/")
        assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
        _check_headers({k.lower(): v for k, v in page.headers.items()}, html=True)
        html = page.body.decode()
        for path, _ in _assets(html):
            asset = await client.call("GET", path)
            assert asset.status == 200, path
            assert "immutable" in asset.headers["Cache-Control"]
            _check_headers({k.lower(): v for k, v in asset.headers.items()}, html=False)
        for bad in ("/assets/../index.html", "/assets/%2e%2e%2fpyproject.toml", "/assets/x.py"):
            assert (await client.call("GET", bad)).status == 404, bad

        # through nginx at my.localhost (the local domain's dashboard vhost)
        async def served() -> bool:
            try:
                status, _, _ = await edge_get(edged.https_port, "my.localhost")
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
                return False
            return status == 200

        await wait_until(served, 30, "nginx to serve my.localhost")
        status, headers, body = await edge_get(edged.https_port, "my.localhost")
        assert status == 200 and '<div id="root">' in body
        _check_headers(headers, html=True)
        status, headers, _ = await edge_get(edged.http_port, "my.localhost", tls=False)
        assert status == 301 and headers["location"] == f"{edged.url}/"

        # CSRF through the edge: the dashboard's own origin (with its port) may change state,
        # another origin may not
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        resolver = aiohttp.resolver.ThreadedResolver()
        conn = aiohttp.TCPConnector(ssl=ctx, resolver=_Loopback(resolver))
        async with aiohttp.ClientSession(connector=conn) as http:
            body_json = {"username": "nobody", "password": "not-the-password"}
            for origin, want in ((edged.url, 401), ("https://evil.localhost", 403)):
                async with http.post(
                    f"{edged.url}/api/v1/session", json=body_json, headers={"Origin": origin}
                ) as r:
                    assert r.status == want, (origin, r.status, await r.text())


class _Loopback(LoopbackResolver):
    """*.localhost resolves to 127.0.0.1, as browsers do; other names through `fallback`."""

    def __init__(self, fallback: aiohttp.abc.AbstractResolver) -> None:
        self.fallback = fallback

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host == "localhost" or host.endswith(".localhost"):
            return await super().resolve(host, port, family)
        return await self.fallback.resolve(host, port, family)

    async def close(self) -> None:
        await self.fallback.close()
