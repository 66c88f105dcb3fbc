"""The short name of the browser or program a User-Agent string names ("Firefox"): what the
activity log and the sign-in notices show of a browser string, never the string itself."""

from __future__ import annotations

import re

__all__ = ["BROWSERS", "browser_family"]

# The first that matches names the browser: order matters, as most strings name several
# (Edge's says Chrome and Safari too, Chrome's says Safari).
BROWSERS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), family)
    for pattern, family in (
        (r"\bEdg(e|A|iOS)?/", "Edge"),
        (r"\b(OPR|Opera)/", "Opera"),
        (r"\bSamsungBrowser/", "Samsung Internet"),
        (r"\bVivaldi/", "Vivaldi"),
        (r"\b(Firefox|FxiOS)/", "Firefox"),
        (r"\b(HeadlessChrome|Chrome|Chromium|CriOS)/", "Chrome"),
        (r"\bVersion/[0-9.]+ (Mobile/\S+ )?Safari/", "Safari"),
        (r"^homeport/", "the homeport command"),
        (r"^curl/", "curl"),
        (r"^Wget/", "Wget"),
        (r"^(python-requests|aiohttp|Python-urllib|python-httpx)/", "a Python program"),
    )
)


def browser_family(user_agent: str | None) -> str | None:
    """The short name of the browser or program of a User-Agent string; "another program"
    when none is known, None without a string."""
    if not user_agent or not user_agent.strip():
        return None
    for pattern, family in BROWSERS:
        if pattern.search(user_agent):
            return family
    return "another program"
