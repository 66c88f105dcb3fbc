"""The errors of the wire contract: what a handler reports to its caller, by `code`.

The gateway maps each code to an HTTP status; a service's own error tree (`errors.py`) roots
at one class and mixes these in, so callers catch one type and the wire still gets its code.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BusError",
    "Conflict",
    "DeadlineExceeded",
    "Forbidden",
    "Internal",
    "Invalid",
    "NotFound",
    "Unauthorized",
    "Unavailable",
    "error_from_wire",
]


class BusError(Exception):
    """An error a handler reports to its caller; `code` is what the gateway maps to HTTP."""

    code: ClassVar[str] = "internal"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "field": self.field}

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(code={self.code!r}, message={self.message!r}, field={self.field!r})"


class Invalid(BusError):
    """The input is wrong; `field` names the input field."""

    code = "invalid"


class Unauthorized(BusError):
    """The caller is not authenticated."""

    code = "unauthorized"


class Forbidden(BusError):
    """The caller may not do this."""

    code = "forbidden"


class NotFound(BusError):
    """The thing asked for does not exist."""

    code = "not_found"


class Conflict(BusError):
    """The request conflicts with the current state (reload and decide again)."""

    code = "conflict"


class Unavailable(BusError):
    """Nobody can serve the request now: no responders, a connection problem, shutting down."""

    code = "unavailable"


class DeadlineExceeded(BusError):
    """The request was not answered before its deadline."""

    code = "deadline_exceeded"


class Internal(BusError):
    """Something unexpected failed; the details are in the server's log, never on the wire."""

    code = "internal"

    def __init__(
        self, message: str = "internal error", *, field: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, field=field)
        if code is not None and code != type(self).code:
            # An error code this side does not know (a newer peer): kept as it came.
            self.__dict__["code"] = code


_BY_CODE: dict[str, type[BusError]] = {
    cls.code: cls
    for cls in (
        Invalid, Unauthorized, Forbidden, NotFound, Conflict, Unavailable, DeadlineExceeded,
        Internal,
    )
}  # fmt: skip


def error_from_wire(d: dict[str, Any]) -> BusError:
    """The typed error of a reply's `error` object; an unknown code gives Internal keeping it."""
    if not isinstance(d, dict):
        return Internal(f"malformed error in reply: {d!r:.200}")
    code, message, field = d.get("code"), d.get("message"), d.get("field")
    if not isinstance(code, str) or not code:
        code = "internal"
    if not isinstance(message, str):
        message = f"error {code} without a message"
    if not isinstance(field, str):
        field = None
    cls = _BY_CODE.get(code)
    if cls is None or cls is Internal:
        return Internal(message, field=field, code=code)
    return cls(message, field=field)
