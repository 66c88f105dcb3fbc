"""Page cursors: the position a page ended at, opaque to the caller (`next_cursor`), read back
only as a whole number Postgres can compare (a bigint), else a 400 naming `cursor`."""

from __future__ import annotations

import base64
import binascii
import re

from libs.contracts.errors import Invalid

__all__ = ["cursor_in", "cursor_out"]

_POSITION = re.compile(r"[0-9]{1,18}")  # ASCII digits, below 2**63


def cursor_out(kind: str, position: int) -> str:
    """`kind`: one letter per list, so that one list's cursor is refused by another."""
    return base64.urlsafe_b64encode(f"{kind}:{position}".encode()).decode().rstrip("=")


def cursor_in(kind: str, raw: str) -> int:
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except (ValueError, binascii.Error, UnicodeDecodeError):
        text = ""
    found, _, position = text.partition(":")
    if found != kind or _POSITION.fullmatch(position) is None:
        raise Invalid("cursor must be the next_cursor of a previous page", field="cursor")
    return int(position)
