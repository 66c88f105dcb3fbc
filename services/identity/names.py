"""The `names` query: what the activity log shows for the ids and browser strings of a page.

The log keeps ids, never names (names are personal data, sealed with their user's key): the
gateway asks here once per page. A deleted user's row is gone with its key, so their id answers
null ("a deleted user"), as does a deleted group's. Browser strings of sign-ins are sealed to
their week's key (addresses.py); only the short family of one leaves identity ("Firefox"), never
the string itself, and none once the week's key is destroyed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from libs.browsers import browser_family
from libs.events.handlers import query
from libs.events.periods import AddressReader, readable
from services.identity.store import IdentityStore

__all__ = ["Names"]


class Names:
    """Usernames, group names and browser families for the activity log (administrators)."""

    def __init__(self, store: IdentityStore, addresses: AddressReader | None) -> None:
        self.store = store
        self.addresses = addresses

    @query("names")
    async def names(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """{user_ids, group_ids, user_agents} -> {names: {id: username | null}, groups: {id:
        name | null}, browsers: [family | null]} (null: deleted, or the week's key is gone)."""
        await self.store.require_admin()
        user_ids = list(dict.fromkeys(payload.get("user_ids") or ()))
        group_ids = list(dict.fromkeys(payload.get("group_ids") or ()))
        names: dict[str, str | None] = dict.fromkeys(user_ids)
        groups: dict[str, str | None] = dict.fromkeys(group_ids)
        if user_ids:
            rows = await self.store.pool.fetch(
                "SELECT user_id::text AS id, username FROM identity.users"
                " WHERE user_id = ANY($1::uuid[])",
                user_ids,
            )
            for r in rows:
                names[_asked(user_ids, r["id"])] = self.store.plain(r["username"])
        if group_ids:
            rows = await self.store.pool.fetch(
                "SELECT group_id::text AS id, name FROM identity.groups"
                " WHERE group_id = ANY($1::uuid[])",
                group_ids,
            )
            for r in rows:
                groups[_asked(group_ids, r["id"])] = r["name"]
        agents = payload.get("user_agents") or ()
        browsers = [browser_family(readable(self.addresses, v)) for v in agents]
        return {"names": names, "groups": groups, "browsers": browsers}


def _asked(asked: list[str], canonical: str) -> str:
    """The id as the caller wrote it (a UUID in capitals is the same id)."""
    if canonical in asked:
        return canonical
    return next((a for a in asked if a.lower() == canonical), canonical)
