"""The gateway's `edge_host` query without an edge: it answers `unavailable`, so apps does not
wait for a host nothing here will serve; a payload off the contract is refused naming the field.
(With an edge: tests/edge/test_sync.py and tests/e2e/test_edge_local.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from libs.events.bus import Invalid, Unavailable
from tests.gateway.apikit import running_gateway
from tests.support.bus import ActorBus


async def test_without_an_edge_the_query_is_unavailable(
    monkeypatch: pytest.MonkeyPatch, dsn: str, nats_url: str, uniq: str, tmp_path: Path, nc: NATS
) -> None:
    bus = ActorBus(nc)
    async with running_gateway(
        monkeypatch, dsn=dsn, nats_url=nats_url, uniq=uniq, tmp_path=tmp_path
    ):
        with pytest.raises(Unavailable, match="runs no edge"):
            await bus.query("gateway", "edge_host", {"host": "blog.localhost"})
        for payload, field in (
            ({}, "host"),
            ({"host": "Blog.localhost"}, "host"),
            ({"host": "blog.localhost", "port": 443}, "port"),
        ):
            with pytest.raises(Invalid) as e:
                await bus.query("gateway", "edge_host", payload)
            assert e.value.field == field
