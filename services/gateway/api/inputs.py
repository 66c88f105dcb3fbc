"""What no route may be handed: NUL bytes and text that is not UTF-8 in the URL path, the query
string or a header value. Checked for every request before authentication, so an anonymous
caller gets a 400 naming the input rather than a 500 from whatever reads it later.

JSON numbers beyond the parser's limits are refused where the body is parsed (app.py, with
libs.contracts.schema's `json_int` and `json_float`).
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from aiohttp import web

from services.gateway.api.problems import Problem

__all__ = ["check_inputs"]

# A header value aiohttp could not decode as UTF-8 holds surrogate escapes (U+DC80-U+DCFF).
_UNFIT = re.compile("[\x00\ud800-\udfff]")
_MAX_NAME = 40


def check_inputs(request: web.Request) -> None:
    """Raise Problem("invalid") naming the first unfit path segment, parameter or header."""
    # Most requests have no escape in the URL: then nothing in it can decode to a NUL or to
    # bytes that are not UTF-8, and the raw text itself is searched once.
    raw_path = request.raw_path
    if "%" in raw_path or not _fit(raw_path):
        _check_url(request)
    headers = request.headers
    if not _fit("".join(headers.values())):
        for header, text in headers.items():
            # Cookies are exempt: another host of the domain may set odd ones on a parent
            # domain, and only ours are read (a bad value of ours is simply no session).
            if header.lower() != "cookie" and _UNFIT.search(text):
                raise Problem(
                    "invalid",
                    f"header {header[:_MAX_NAME]} must be UTF-8 text without NUL bytes",
                    field=header[:_MAX_NAME],
                )


def _fit(text: str) -> bool:
    """No NUL and no surrogate escape in `text`; ASCII text (most) is told without the
    regular expression, which takes ten times as long."""
    if text.isascii():
        return "\x00" not in text
    return _UNFIT.search(text) is None


def _check_url(request: web.Request) -> None:
    raw_path, _, raw_query = request.raw_path.partition("?")
    for name, segment in request.match_info.items():
        if "\x00" in segment:
            raise Problem("invalid", f"{name} must not contain a NUL byte", field=name)
    if _decoded(raw_path) is None:
        raise Problem("invalid", "the URL path is not UTF-8 text: percent-encode UTF-8 bytes")
    for part in raw_query.split("&"):
        raw_name, _, raw_value = part.partition("=")
        given = _decoded(raw_name)
        if given is None:
            raise Problem("invalid", "a query parameter's name is not UTF-8 text")
        label = given[:_MAX_NAME]
        if "\x00" in given:
            raise Problem("invalid", "a query parameter's name contains a NUL byte")
        value = _decoded(raw_value)
        if value is None:
            raise Problem(
                "invalid",
                f"query parameter {label} is not UTF-8 text: percent-encode UTF-8 bytes",
                field=label,
            )
        if "\x00" in value:
            raise Problem(
                "invalid", f"query parameter {label} must not contain a NUL byte", field=label
            )


def _decoded(raw: str) -> str | None:
    """`raw` percent-decoded (`+` is a space), or None if the bytes are not UTF-8."""
    try:
        return unquote_to_bytes(raw.replace("+", " ")).decode("utf-8")
    except UnicodeDecodeError:
        return None
