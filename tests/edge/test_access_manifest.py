"""How an app signs users in (manifest `signIn`), and the apps service refusing an access list
that nothing would enforce: an app that signs nobody in cannot be limited to some users."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from libs.events.bus import Invalid
from services.apps.config import BUNDLED_CATALOG
from services.apps.manifest import ManifestError, parse_manifest
from tests.apps import appskit
from tests.apps.appskit import STATIC, Apps, running_apps

BASE: dict[str, Any] = {
    "manifestVersion": 1,
    "id": "org.example.app",
    "version": "1.0.0",
    "title": "App",
    "tagline": "An app",
    "httpPort": 8080,
    "image": "example.org/app:1.0",
}


def test_sign_in_defaults_to_ldap_with_the_ldap_addon_and_to_the_edge_otherwise() -> None:
    assert parse_manifest(BASE).sign_in == "edge"
    assert parse_manifest({**BASE, "addons": {"ldap": {}}}).sign_in == "ldap"
    for how in ("edge", "none"):
        m = parse_manifest({**BASE, "addons": {"ldap": {}}, "signIn": how})
        assert m.sign_in == how
        assert parse_manifest(m.to_json()) == m


@pytest.mark.parametrize(
    "extra",
    [
        {"signIn": "oauth"},
        {"signIn": 1},
        {"signIn": "ldap"},  # without the ldap addon
        {"signIn": "none", "singleUser": True},
    ],
)
def test_bad_sign_in_is_refused_naming_the_field(extra: dict[str, Any]) -> None:
    with pytest.raises(ManifestError) as e:
        parse_manifest({**BASE, **extra})
    assert e.value.field == "signIn"


def _catalog(dest: Path) -> Path:
    """The bundled static website as 1.0.0 (signed in at the edge) and 1.0.1 (public by
    nature: signIn none)."""
    src = BUNDLED_CATALOG / STATIC / "1.0.0"
    for version, change in (("1.0.0", {}), ("1.0.1", {"signIn": "none"})):
        d = dest / STATIC / version
        shutil.copytree(src, d)
        manifest = json.loads((d / "manifest.json").read_text())
        manifest.update({"version": version, **change})
        (d / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return dest


apps_env_for = appskit.apps_env_for  # the fixture


@pytest.fixture
async def apps(
    monkeypatch: pytest.MonkeyPatch, apps_env_for: appskit.EnvFor, tmp_path: Path
) -> AsyncIterator[Apps]:
    env = apps_env_for(_catalog(tmp_path / "catalog"))
    async with running_apps(monkeypatch, env) as running:
        yield running


@pytest.mark.slow
async def test_a_restriction_nothing_would_enforce_is_refused(apps: Apps) -> None:
    entry = await apps.ask("catalog_app", {"manifest_id": STATIC, "version": "1.0.1"})
    assert entry["sign_in"] == "none"
    edge = await apps.ask("catalog_app", {"manifest_id": STATIC, "version": "1.0.0"})
    assert edge["sign_in"] == "edge"  # what the edge reads to know it must ask who is there
    someone = str(uuid.uuid4())
    for access in ({"all_users": False, "user_ids": [someone]}, {"groups": [someone]}):
        payload = {"manifest_id": STATIC, "version": "1.0.1", "location": "site", "access": access}
        with pytest.raises(Invalid) as refused:
            await apps.cmd("install", payload)
        assert refused.value.field == "access"
        assert "public" in refused.value.message and "all_users" in refused.value.message
    assert (await apps.ask("apps", {}))["items"] == []
    count = await apps.store.pool.fetchval(
        "SELECT count(*) FROM events.events WHERE stream LIKE 'app-%'"
    )
    assert count == 0
