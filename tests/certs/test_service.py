"""The certs service against a real Pebble: fallback at once, ACME orders, renewal, retries,
custom uploads, files healed from events, DNS-01 through a stand-in dns service, kill -9."""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest
from cryptography.hazmat.primitives import serialization
from nats.aio.client import Client as NATS

from libs.events.bus import Conflict, Invalid, NotFound
from libs.events.sealing import is_sealed
from services.certs.certificates import inspect
from services.certs.engine import retry_delay
from tests.certs.certskit import (
    Certs,
    CertsProcess,
    OwnCa,
    certs_env,
    connected,
    dns_stand_in,
    domain,
    eventually,
    key_matches,
    leaf_of,
    other_key,
    running_certs,
    serving_tokens,
    verify_chain,
)
from tests.support.pebble import PebbleServer, query_txt

pytestmark = pytest.mark.timeout(240)


def _env(
    dsn: str, nats_url: str, tmp_path: Path, pebble: PebbleServer, **extra: str
) -> dict[str, str]:
    return certs_env(dsn=dsn, nats_url=nats_url, tmp_path=tmp_path, pebble=pebble, extra=extra)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _pair(certs: Certs, host: str) -> tuple[str, str]:
    d = certs.certs_dir / host
    return (d / "fullchain.pem").read_text(), (d / "privkey.pem").read_text()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_url)
    yield conn
    await conn.close()


async def test_ensure_serves_a_fallback_at_once_then_the_acme_certificate(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    certs_pebble: PebbleServer,
) -> None:
    d = domain()
    blog, www = f"blog.{d}", f"www.{d}"
    env = _env(dsn, nats_url, tmp_path, certs_pebble)
    async with (
        running_certs(monkeypatch, env) as certs,
        serving_tokens(certs.acme_dir, certs_pebble.http_port) as asked,
    ):
        started = await certs.cmd("ensure", {"names": [blog, www]})
        assert started["primary"] == blog and started["state"] == "ordering"
        assert started["task_id"]
        # nginx can serve the vhost now: a self-signed certificate for both names
        chain, key = _pair(certs, blog)
        fallback = inspect(chain)
        assert fallback.self_signed and fallback.names == (blog, www)
        assert key_matches(chain, key)
        assert _mode(certs.certs_dir / blog) == 0o700
        assert _mode(certs.certs_dir / blog / "privkey.pem") == 0o600
        # the same order while it runs
        again = await certs.cmd("ensure", {"names": [blog, www]})
        assert again["task_id"] == started["task_id"]

        done = await certs.wait_task(started["task_id"])
        assert done["type"] == "TaskSucceeded", done
        chain, key = _pair(certs, blog)
        verify_chain(chain, certs_pebble.root_pem, blog)
        verify_chain(chain, certs_pebble.root_pem, www)
        assert key_matches(chain, key)
        assert _mode(certs.certs_dir / blog / "privkey.pem") == 0o600
        assert asked, "Pebble never fetched the token"
        assert [p.name for p in certs.acme_dir.iterdir()] == []  # tokens withdrawn
        assert _mode(certs.acme_dir) == 0o755

        files = await certs.ask("files", {"host": www})
        assert files == {
            "cert": str(certs.certs_dir / blog / "fullchain.pem"),
            "key": str(certs.certs_dir / blog / "privkey.pem"),
            "kind": "acme",
        }
        item = await certs.item(blog)
        leaf = leaf_of(chain)
        assert item["kind"] == "acme" and item["state"] == "valid"
        assert item["names"] == [blog, www]
        assert item["not_after"] == leaf.not_valid_after_utc.isoformat()
        assert item["days_left"] == (leaf.not_valid_after_utc - datetime.now(UTC)).days > 30
        assert item["issuer"] and "Pebble" in item["issuer"]
        assert item["last_error"] is None and item["next_attempt_at"] is None

        # a valid certificate: nothing to do, no new order
        assert await certs.cmd("ensure", {"names": [www]}) == {
            "primary": blog,
            "state": "valid",
            "task_id": None,
        }
        assert (await certs.types(blog)).count("CertificateOrdered") == 1

        with pytest.raises(NotFound) as missing:
            await certs.ask("files", {"host": f"other.{d}"})
        assert missing.value.field == "host"
        with pytest.raises(Invalid) as bad:
            await certs.cmd("ensure", {"names": ["bad name"]})
        assert bad.value.field == "names"
        with pytest.raises(Invalid) as wild:
            await certs.cmd("ensure", {"names": [f"*.{d}"]})
        assert wild.value.field == "challenge"

        # forget: files gone, nothing served, not listed
        assert await certs.cmd("forget", {"primary": blog}) == {"primary": blog, "forgotten": True}
        assert not (certs.certs_dir / blog).exists()
        with pytest.raises(NotFound):
            await certs.ask("files", {"host": blog})
        assert [i["primary"] for i in (await certs.ask("certificates", {}))["items"]] == []
        with pytest.raises(NotFound):
            await certs.cmd("renew", {"primary": blog})


async def test_renew_then_a_failed_order_keeps_serving_and_is_retried(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    certs_pebble: PebbleServer,
) -> None:
    d = domain()
    app, fresh = f"app.{d}", f"fresh.{d}"
    env = _env(dsn, nats_url, tmp_path, certs_pebble, HP_RETRY_MIN_S="1", HP_RETRY_MAX_S="2")
    async with running_certs(monkeypatch, env) as certs:
        async with serving_tokens(certs.acme_dir, certs_pebble.http_port):
            first = await certs.cmd("ensure", {"names": [app]})
            assert (await certs.wait_task(first["task_id"]))["type"] == "TaskSucceeded"
            old_chain, _ = _pair(certs, app)
            renewing = await certs.cmd("renew", {"primary": app})
            assert renewing["task_id"] != first["task_id"]
            assert (await certs.wait_task(renewing["task_id"]))["type"] == "TaskSucceeded"
            new_chain, new_key = _pair(certs, app)
            assert inspect(new_chain).fingerprint_sha256 != inspect(old_chain).fingerprint_sha256
            verify_chain(new_chain, certs_pebble.root_pem, app)
            assert key_matches(new_chain, new_key)

        # nobody serves the tokens now: the orders fail
        failing = await certs.cmd("renew", {"primary": app})
        ended = await certs.wait_task(failing["task_id"])
        assert ended["type"] == "TaskFailed" and ended["code"] == "unreachable", ended
        assert app in ended["message"]
        assert _pair(certs, app)[0] == new_chain  # the previous certificate still serves
        assert (await certs.ask("files", {"host": app}))["kind"] == "acme"
        failed = [
            e
            for e in await certs.stream(app)
            if e.type == "CertificateRenewalFailed" and e.data["task_id"] == failing["task_id"]
        ]
        assert len(failed) == 1 and failed[0].data["code"] == "unreachable"
        retry_at = datetime.fromisoformat(failed[0].data["retry_at"])
        delay = (retry_at - failed[0].recorded_at).total_seconds()
        assert 0.5 < delay <= 2.5  # retry_min_s 1, retry_max_s 2

        new = await certs.cmd("ensure", {"names": [fresh]})
        assert (await certs.wait_task(new["task_id"]))["type"] == "TaskFailed"
        item = await certs.item(fresh)
        assert item["kind"] == "fallback" and item["state"] in ("failed", "ordering")
        assert (await certs.ask("files", {"host": fresh}))["kind"] == "fallback"
        assert inspect(_pair(certs, fresh)[0]).self_signed

        # the tokens are served again: the loop retries both on its own, and they succeed
        async with serving_tokens(certs.acme_dir, certs_pebble.http_port):

            async def both_valid() -> bool:
                items = {i["primary"]: i for i in (await certs.ask("certificates", {}))["items"]}
                return all(
                    items[p]["state"] == "valid" and items[p]["kind"] == "acme"
                    for p in (app, fresh)
                )

            await eventually(both_valid, 60, "the retries to succeed")
        reasons = [
            e.data["reason"] for e in await certs.stream(fresh) if e.type == "CertificateOrdered"
        ]
        assert reasons[0] == "new" and set(reasons[1:]) == {"retry"}
        item = await certs.item(fresh)
        assert item["last_error"] is None and item["next_attempt_at"] is None
        verify_chain(_pair(certs, fresh)[0], certs_pebble.root_pem, fresh)


def test_backoff_doubles_from_min_to_max_and_follows_retry_after() -> None:
    transient = [retry_delay("connection", None, n, 60, 1000) for n in range(1, 7)]
    assert transient == [60, 120, 240, 480, 960, 1000]
    assert retry_delay("rate_limited", 3600, 1, 60, 600) == 3600
    assert retry_delay("rate_limited", None, 1, 60, 600) == 600
    # a challenge the CA could not check: at most once an hour (unless the max is lower)
    assert retry_delay("unauthorized", None, 1, 60, 21600) == 3600
    assert retry_delay("unreachable", None, 1, 1, 2) == 2


async def test_custom_certificates_are_checked_served_and_never_renewed(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    certs_pebble: PebbleServer,
) -> None:
    d = domain()
    shop = f"shop.{d}"
    ca = OwnCa.make()
    # due for renewal (10 days left) and the loop checks every 1.8 s
    env = _env(dsn, nats_url, tmp_path, certs_pebble, HP_CHECK_HOURS="0.0005")
    async with running_certs(monkeypatch, env) as certs:
        chain, key = ca.issue([shop, f"*.{d}"], days=10)

        async def refused(payload: dict[str, Any]) -> str | None:
            with pytest.raises(Invalid) as caught:
                await certs.cmd("upload", payload)
            return caught.value.field

        assert await refused({"names": [shop], "chain_pem": chain, "key_pem": other_key()}) == "key"
        assert (
            await refused({"names": [f"mail.{shop}"], "chain_pem": chain, "key_pem": key})
            == "names"
        )
        old, old_key = ca.issue([shop], not_before=datetime.now(UTC) - timedelta(days=100), days=90)
        assert (
            await refused({"names": [shop], "chain_pem": old, "key_pem": old_key}) == "certificate"
        )
        broken = chain.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
        other_ca = OwnCa.make()
        mixed = broken + other_ca.inter.public_bytes(serialization.Encoding.PEM).decode()
        assert await refused({"names": [shop], "chain_pem": mixed, "key_pem": key}) == "chain"
        assert (
            await refused({"names": [shop], "chain_pem": "nonsense", "key_pem": key})
            == "certificate"
        )
        assert await certs.types(shop) == []  # nothing recorded

        uploaded = await certs.cmd("upload", {"names": [shop], "chain_pem": chain, "key_pem": key})
        assert uploaded["kind"] == "custom" and uploaded["primary"] == shop
        assert uploaded["days_left"] in (9, 10)
        served = await certs.ask("files", {"host": shop})
        assert served["kind"] == "custom"
        assert Path(served["cert"]).read_text() == chain
        assert Path(served["key"]).read_text() == key
        # the wildcard in it covers other hosts of the domain too
        assert (await certs.ask("files", {"host": f"blog.{d}"}))["kind"] == "custom"
        assert await certs.cmd("ensure", {"names": [f"blog.{d}"]}) == {
            "primary": shop,
            "state": "valid",
            "task_id": None,
        }
        with pytest.raises(Conflict) as custom:
            await certs.cmd("renew", {"primary": shop})
        assert custom.value.field == "primary"

        await eventually(_after(4.0), 10, "a few renewal checks")
        assert await certs.types(shop) == ["CustomCertificateUploaded"]
        item = await certs.item(shop)
        assert item["kind"] == "custom" and item["state"] == "valid"
        assert item["issuer"] == "CN=test own issuing CA"


def _after(seconds: float) -> Any:
    import time

    end = time.monotonic() + seconds

    async def check() -> bool:
        return time.monotonic() >= end

    return check


async def test_restart_rewrites_lost_files_from_events_with_keys_sealed(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    certs_pebble: PebbleServer,
) -> None:
    d = domain()
    site, shop = f"site.{d}", f"shop.{d}"
    ca = OwnCa.make()
    custom_chain, custom_key = ca.issue([shop])
    env = _env(dsn, nats_url, tmp_path, certs_pebble)
    async with running_certs(monkeypatch, env) as certs:
        async with serving_tokens(certs.acme_dir, certs_pebble.http_port):
            started = await certs.cmd("ensure", {"names": [site]})
            assert (await certs.wait_task(started["task_id"]))["type"] == "TaskSucceeded"
        await certs.cmd(
            "upload", {"names": [shop], "chain_pem": custom_chain, "key_pem": custom_key}
        )
        site_pair = _pair(certs, site)
        shop_pair = _pair(certs, shop)

    shutil.rmtree(tmp_path / "certs")
    async with running_certs(monkeypatch, env) as certs:
        assert _pair(certs, site) == site_pair
        assert _pair(certs, shop) == shop_pair
        assert _mode(certs.certs_dir / site / "privkey.pem") == 0o600
        assert (await certs.ask("files", {"host": site}))["kind"] == "acme"
        assert (await certs.ask("files", {"host": shop}))["kind"] == "custom"

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT type, data::text FROM events.events WHERE stream LIKE 'cert-%' OR stream LIKE"
            " 'acme-%'"
        )
    finally:
        await conn.close()
    types = {r["type"] for r in rows}
    assert {"AcmeAccountRegistered", "CertificateIssued", "CustomCertificateUploaded"} <= types
    for r in rows:
        assert "PRIVATE KEY" not in r["data"], r["type"]
        data = json.loads(r["data"])
        for name in ("key", "account_key"):
            if name in data:
                assert is_sealed(data[name]), (r["type"], name)
    assert site_pair[1].split("\n")[1] not in "".join(r["data"] for r in rows)


async def test_wildcard_over_dns01_through_the_dns_service(
    monkeypatch: pytest.MonkeyPatch,
    dsn: str,
    nats_url: str,
    tmp_path: Path,
    certs_pebble: PebbleServer,
    nc: NATS,
) -> None:
    d = domain()
    wildcard = f"*.{d}"
    env = _env(dsn, nats_url, tmp_path, certs_pebble)
    async with (
        dns_stand_in(nc, certs_pebble.dns) as dns,
        running_certs(monkeypatch, env) as certs,
    ):
        started = await certs.cmd("ensure", {"names": [wildcard, d], "challenge": "dns-01"})
        assert started["primary"] == wildcard
        folder = certs.certs_dir / f"_wildcard.{d}"
        assert inspect((folder / "fullchain.pem").read_text()).self_signed
        done = await certs.wait_task(started["task_id"])
        assert done["type"] == "TaskSucceeded", done
        chain = (folder / "fullchain.pem").read_text()
        verify_chain(chain, certs_pebble.root_pem, f"blog.{d}")
        verify_chain(chain, certs_pebble.root_pem, d)
        assert {n for n, _ in dns.published} == {f"_acme-challenge.{d}"}
        assert len(dns.published) == 2 and sorted(dns.removed) == sorted(dns.published)
        assert query_txt(certs_pebble.dns.dns_port, f"_acme-challenge.{d}") == []
        served = await certs.ask("files", {"host": f"blog.{d}"})
        assert served == {
            "cert": str(folder / "fullchain.pem"),
            "key": str(folder / "privkey.pem"),
            "kind": "acme",
        }
        assert (await certs.ask("files", {"host": d}))["kind"] == "acme"
        with pytest.raises(NotFound):
            await certs.ask("files", {"host": f"deep.blog.{d}"})  # one label only


async def test_an_order_cut_by_kill_9_is_run_again_at_the_next_start(
    dsn: str, nats_url: str, tmp_path: Path, certs_pebble: PebbleServer, nc: NATS
) -> None:
    d = domain()
    env = _env(dsn, nats_url, tmp_path, certs_pebble)
    proc = CertsProcess(env, tmp_path / "certs.log")
    async with dns_stand_in(nc, certs_pebble.dns, hang=True) as dns, connected(env) as certs:
        proc.start()
        try:

            async def answers() -> bool:
                try:
                    await certs.ask("certificates", {})
                except Exception:
                    return False
                return True

            await eventually(answers, 60, "the certs process to answer")
            started = await certs.cmd("ensure", {"names": [d], "challenge": "dns-01"})
            task_id = started["task_id"]

            async def publishing() -> bool:
                return bool(dns.published)

            await eventually(publishing, 60, "the order to publish its TXT record")
            proc.kill9()
            assert (await certs.types(d)) == ["CertificateOrdered"]  # no outcome recorded
            state = await certs.store.pool.fetchval(
                "SELECT state FROM certs.certificates WHERE primary_name = $1", d
            )
            assert state == "ordering"

            dns.hang = False
            shutil.rmtree(tmp_path / "certs")
            proc.start()
            done = await certs.wait_task(task_id, timeout=120)
            assert done["type"] == "TaskSucceeded", (done, proc.tail())
            assert await certs.types(d) == ["CertificateOrdered", "CertificateIssued"]
            chain = (certs.certs_dir / d / "fullchain.pem").read_text()
            verify_chain(chain, certs_pebble.root_pem, d)
        finally:
            code = proc.stop()
        assert code == 0, proc.tail()
