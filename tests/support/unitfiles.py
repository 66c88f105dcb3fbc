"""Reading rendered systemd unit files in tests."""

from __future__ import annotations

__all__ = ["directives"]


def directives(text: str) -> dict[str, list[str]]:
    """{key: every value it has, in order} of a unit file's KEY=value lines."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out
