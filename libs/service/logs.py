"""JSON-lines logging to stderr, with the service name and the current correlation id."""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from libs.ctxvars import bound

__all__ = [
    "REDACTED",
    "JsonFormatter",
    "bind_correlation",
    "configure_logging",
    "correlation_id",
    "redact",
]

REDACTED = "[redacted]"

correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)

_SECRET_KEY = re.compile(r"password|secret|token|key|authorization", re.IGNORECASE)
# `scheme://user:password@host` -> `scheme://user:[redacted]@host`
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]*(?P<at>@)", re.I)
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}
_BASE = ("ts", "level", "service", "event", "correlation_id", "logger")


def bind_correlation(cid: str | None) -> bound[str | None]:
    """Set the correlation id for log lines written inside the block (this task only)."""
    return bound(correlation_id, cid)


def redact(value: Any) -> Any:
    """Replace values under secret-looking keys (recursively) and passwords inside URLs."""
    if isinstance(value, dict):
        return {k: REDACTED if _SECRET_KEY.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _URL_PASSWORD.sub(rf"\g<head>{REDACTED}\g<at>", value)
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, service, event, correlation_id, logger, extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        cid = record.__dict__.get("correlation_id") or correlation_id.get()
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "event": redact(record.getMessage()),
            "correlation_id": cid,
            "logger": record.name,
        }
        for key, value in record.__dict__.items():
            if key in _RECORD_ATTRS or key == "correlation_id":
                continue
            name = key if key not in _BASE else f"extra_{key}"
            out[name] = REDACTED if _SECRET_KEY.search(key) else redact(value)
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exc"] = redact(record.exc_text)
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(out, default=str, ensure_ascii=False)


class _StderrHandler(logging.Handler):
    """Writes to the `sys.stderr` of the moment (or a fixed stream), one line per record."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__()
        self._stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            stream = self._stream or sys.stderr
            stream.write(line + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def configure_logging(service: str, level: str, *, stream: TextIO | None = None) -> None:
    """Send all logging as JSON lines to stderr (or `stream`); calling again replaces it."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(h)
        h.close()
    handler = _StderrHandler(stream)
    handler.setFormatter(JsonFormatter(service))
    root.addHandler(handler)
    root.setLevel(level.upper())
