"""The web dashboard's files: `index.html` at `/`, content-hashed assets under `/assets/`.

The dashboard is built by `make dashboard` (services/gateway/dashboard/build.mjs) into
`dashboard_dir`; it is a client of `/api/v1` only. index.html names its script and stylesheet
with SRI hashes and is never cached; assets have their hash in the name and are cached for a
year. The root app's `response_headers` (api/security.py) adds the dashboard CSP (no inline
script or style).
Nothing outside `dashboard_dir/assets` is ever served: names are matched, not joined.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from aiohttp import web

__all__ = ["add_dashboard"]

log = logging.getLogger("homeport.gateway.dashboard")

_ASSET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".woff2": "font/woff2",
    ".txt": "text/plain",
}
_IMMUTABLE = "public, max-age=31536000, immutable"
_NOT_BUILT = (
    "The Homeport dashboard is not built on this machine.\n"
    "Run `make dashboard` (or `make run`, which builds it), then reload.\n"
    "The REST API (/api/v1) and the `homeport` command work without it.\n"
)


def add_dashboard(app: web.Application, dist: Path) -> None:
    """Serve the built dashboard in `dist` from `app`'s root."""
    dist = dist.resolve()

    async def index(request: web.Request) -> web.StreamResponse:
        page = dist / "index.html"
        try:
            body = page.read_bytes()
        except FileNotFoundError:
            log.warning("dashboard not built: %s is missing", page)
            return web.Response(status=503, text=_NOT_BUILT, headers={"Retry-After": "30"})
        return web.Response(
            body=body,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-store"},
        )

    async def asset(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        suffix = Path(name).suffix
        if not _ASSET.fullmatch(name) or suffix not in _TYPES:
            raise web.HTTPNotFound(text="no such file\n")
        path = dist / "assets" / name
        if not path.is_file():
            raise web.HTTPNotFound(text="no such file\n")
        return web.FileResponse(
            path,
            headers={"Content-Type": _TYPES[suffix], "Cache-Control": _IMMUTABLE},
        )

    app.router.add_get("/", index)
    app.router.add_get("/assets/{name}", asset)
