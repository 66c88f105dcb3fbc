"""Renewal by the certs service's own loop: a certificate with fewer than `renew_days` days
left is renewed without anyone asking (Pebble configured to issue 20-day certificates)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.certs.certificates import inspect
from tests.certs.certskit import certs_env, domain, running_certs, serving_tokens
from tests.support.pebble import ChallDns, PebbleServer, run_challdns, run_pebble

pytestmark = pytest.mark.timeout(180)

TWENTY_DAYS = 20 * 24 * 3600


@pytest.fixture(scope="module")
def short_pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PebbleServer]:
    workdir = tmp_path_factory.mktemp("short-pebble")
    dns: Iterator[ChallDns] = run_challdns(workdir)
    challdns = next(dns)
    yield from run_pebble(
        workdir / "pebble",
        challdns,
        nosleep=True,
        env={"PEBBLE_AUTHZREUSE": "0"},
        validity_seconds=TWENTY_DAYS,
    )
    next(dns, None)  # runs the rest of run_challdns: it stops the DNS server


async def test_a_certificate_due_for_renewal_is_renewed_by_the_loop(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    short_pebble: PebbleServer,
) -> None:
    host = f"blog.{domain()}"
    env = certs_env(
        dsn=dsn,
        nats_url=nats_url,
        tmp_path=tmp_path,
        pebble=short_pebble,
        extra={"HP_RENEW_DAYS": "30", "HP_CHECK_HOURS": "0.001"},  # a check every ~3.6 s
    )
    async with (
        running_certs(monkeypatch, env) as certs,
        serving_tokens(certs.acme_dir, short_pebble.http_port),
    ):
        started = await certs.cmd("ensure", {"names": [host]})
        assert (await certs.wait_task(started["task_id"]))["type"] == "TaskSucceeded"
        chain = (certs.certs_dir / host / "fullchain.pem").read_text()
        first = inspect(chain)
        assert (first.not_after - first.not_before).days <= 20  # due: under 30 days left

        end = time.monotonic() + 60
        while time.monotonic() < end:
            issued = [
                e
                for e in await certs.store.read_stream(f"cert-{host}")
                if e.type == "CertificateIssued"
            ]
            if len(issued) >= 2:
                break
            await asyncio.sleep(0.5)
        else:
            raise AssertionError("the loop did not renew the certificate within 60 s")
        assert issued[1].data["fingerprint"] != issued[0].data["fingerprint"]
        ordered = [
            e.data.get("reason")
            for e in await certs.store.read_stream(f"cert-{host}")
            if e.type == "CertificateOrdered"
        ]
        assert "renewal" in ordered, ordered
