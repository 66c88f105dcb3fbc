"""The addon Postgres at the apps service's start: asked for when an app already uses it (a
platform updated from a version that always ran it), then made true to the apps recorded in the
background. Readiness never waits for it: nothing at start needs it."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from services.apps.addons.postgresql import AddonError, AddonPostgres
from services.apps.catalog import Catalog, NotInCatalog

__all__ = ["ask_if_used", "keep_hba"]

log = logging.getLogger("services.apps.addons")
RETRY_S = 30.0


async def ask_if_used(pg: AddonPostgres, pool: asyncpg.Pool, catalog: Catalog) -> None:
    """Write the addon server's flag when an app that is not uninstalled has a database."""
    if pg.is_wanted():
        return
    rows = await pool.fetch(
        "SELECT manifest_id, version FROM apps.apps WHERE state <> 'uninstalled'"
    )
    for r in rows:
        try:
            entry = catalog.entry(r["manifest_id"], r["version"], include_prereleases=True)
        except NotInCatalog:
            continue
        if "postgresql" in entry.manifest.addons:
            await pg.ask()
            log.info("an app has a database: asked for the apps' database server")
            return


async def keep_hba(pg: AddonPostgres | None) -> None:
    """Once the server answers (if it was ever asked for), its pg_hba.conf made true to the
    apps recorded; until then a warning every attempt (each waits START_DEADLINE_S)."""
    if pg is None or not pg.is_wanted():
        return
    while True:
        try:
            await pg.start()
            return
        except AddonError as e:
            log.warning("the apps' database server is not answering yet: %s", e)
        await asyncio.sleep(RETRY_S)
