"""JSON-lines logs: the fields every line carries, correlation ids per task, secrets redacted."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest

from libs.service.logs import REDACTED, bind_correlation, configure_logging, redact

Lines = Callable[[], list[dict[str, Any]]]


@pytest.fixture
def lines() -> Iterator[Lines]:
    """configure_logging("identity", "INFO") into a buffer; the root logger restored after."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buf = io.StringIO()
    configure_logging("identity", "INFO", stream=buf)

    def read() -> list[dict[str, Any]]:
        return [json.loads(line) for line in buf.getvalue().splitlines()]

    try:
        yield read
    finally:
        for h in root.handlers:
            if h not in saved_handlers:
                h.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_a_line_is_one_json_object_with_the_standard_fields(lines: Lines) -> None:
    log = logging.getLogger("homeport.identity")
    with bind_correlation("req-42"):
        log.info("user %s created", "alice", extra={"user_id": "u1", "event": "clash"})
    log.warning("no correlation here")
    log.debug("below the level: not written")
    first, second = lines()
    assert first["level"] == "INFO"
    assert first["service"] == "identity"
    assert first["event"] == "user alice created"
    assert first["correlation_id"] == "req-42"
    assert first["logger"] == "homeport.identity"
    assert first["user_id"] == "u1"
    assert first["extra_event"] == "clash", "an extra must not overwrite a standard field"
    assert datetime.fromisoformat(first["ts"]).utcoffset() is not None
    assert (second["level"], second["correlation_id"]) == ("WARNING", None)


async def test_correlation_ids_stay_with_their_own_task(lines: Lines) -> None:
    log = logging.getLogger("homeport.identity")

    async def handle(cid: str) -> None:
        with bind_correlation(cid):
            await asyncio.sleep(0.01)
            log.info("handled %s", cid)

    await asyncio.gather(handle("a"), handle("b"), handle("c"))
    assert sorted((x["event"], x["correlation_id"]) for x in lines()) == [
        ("handled a", "a"),
        ("handled b", "b"),
        ("handled c", "c"),
    ]


def test_secrets_are_redacted_everywhere_in_the_line(lines: Lines) -> None:
    log = logging.getLogger("homeport.identity")
    url = "postgresql://homeport:hunter2@db.internal:5432/homeport"
    log.info(
        "connecting to %s",
        url,
        extra={
            "password": "hunter2",
            "db_url": url,
            "request": {"user": "alice", "api_key": "hunter2", "hops": [url]},
        },
    )
    try:
        raise ConnectionError(f"could not reach {url}")
    except ConnectionError:
        log.exception("pool failed")
    raw = "\n".join(json.dumps(x) for x in lines())
    assert "hunter2" not in raw
    first, second = lines()
    assert (
        first["event"]
        == f"connecting to postgresql://homeport:{REDACTED}@db.internal:5432/homeport"
    )
    assert first["password"] == REDACTED
    assert first["request"]["api_key"] == REDACTED
    assert first["request"]["user"] == "alice"
    assert first["request"]["hops"] == [
        f"postgresql://homeport:{REDACTED}@db.internal:5432/homeport"
    ]
    assert "ConnectionError" in second["exc"]


def test_redact_leaves_ordinary_values_alone() -> None:
    value = {"name": "blog", "port": 8080, "url": "https://example.org/a:b@c", "tags": ("x",)}
    assert redact(value) == {
        "name": "blog",
        "port": 8080,
        "url": "https://example.org/a:b@c",
        "tags": ["x"],
    }
    assert redact({"Authorization": "Bearer abc"}) == {"Authorization": REDACTED}


def test_configuring_again_replaces_the_handler(lines: Lines) -> None:
    buf = io.StringIO()
    configure_logging("dns", "warning", stream=buf)
    logging.getLogger("homeport.dns").warning("zone example.org missing")
    logging.getLogger("homeport.dns").info("not written")
    assert lines() == [], "the first handler was removed"
    (line,) = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert (line["service"], line["event"]) == ("dns", "zone example.org missing")
