"""The host names a CA certifies, as the certs service keeps them: lower case, no final dot.

The contract (`libs/contracts/certs.py`) checks the shape of a payload; these turn a checked
name into the one form the streams, the read model and the files are keyed by.
"""

from __future__ import annotations

import re

from libs.contracts.certs import MAX_NAMES
from services.certs.errors import InvalidRequest

__all__ = ["check_host", "check_names"]

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_NAME = re.compile(rf"(\*\.)?({_LABEL}\.)+{_LABEL}")


def check_host(value: object, field: str = "host") -> str:
    """A DNS name a CA can certify (a leading `*.` allowed), lower-cased without a final dot."""
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a host name such as blog.example.com", field=field)
    name = value.strip().rstrip(".").lower()
    if len(name) > 253 or not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"{field}: {value[:80]!r} is not a host name a CA can certify: use two or more "
            "labels of letters, digits and inner hyphens (punycode for international names), "
            "optionally starting with '*.'",
            field=field,
        )
    return name


def check_names(value: object, field: str = "names") -> list[str]:
    """1 to 100 host names, the first being the primary; duplicates dropped."""
    if not isinstance(value, list) or not value or len(value) > MAX_NAMES:
        raise InvalidRequest(f"{field} must be a list of 1 to {MAX_NAMES} host names", field=field)
    out: list[str] = []
    for item in value:
        name = check_host(item, field)
        if name not in out:
            out.append(name)
    return out
