"""The people mail is for, as identity knows them: accounts and groups, read over the bus.

The mail service keeps no copy of anyone's name: each round of the sync asks identity
(`users`, `groups`) and keeps the answer in memory only, for the model and for sign-ins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from libs.events.bus import BusClient
from libs.events.context import Context

__all__ = ["SYSTEM", "People", "Person", "read_people"]

SYSTEM = Context()  # the mail service acting for itself (actor "system")


@dataclass(frozen=True, slots=True)
class Person:
    user_id: str
    username: str  # lower-cased: the local part of their address and their mail login
    is_admin: bool = False
    disabled: bool = False
    totp: bool = False


@dataclass(frozen=True, slots=True)
class People:
    persons: tuple[Person, ...] = ()
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # group id -> user ids

    def by_id(self) -> dict[str, Person]:
        return {p.user_id: p for p in self.persons}

    def by_login(self, login: str) -> Person | None:
        login = login.lower()
        for p in self.persons:
            if p.username == login:
                return p
        return None


def _person(item: Mapping[str, Any]) -> Person:
    return Person(
        user_id=str(item["user_id"]),
        username=str(item["username"]).lower(),
        is_admin=bool(item.get("is_admin")),
        disabled=bool(item.get("disabled")),
        totp=bool(item.get("totp_enabled")),
    )


async def read_people(bus: BusClient, *, wait: float) -> People:
    """Every account (with a readable name) and every group's members, from identity."""
    users = await bus.query("identity", "users", {}, ctx=SYSTEM, timeout=wait)
    groups = await bus.query("identity", "groups", {}, ctx=SYSTEM, timeout=wait)
    persons = tuple(_person(u) for u in users["items"] if u.get("username"))
    members = {str(g["group_id"]): tuple(str(m) for m in g["members"]) for g in groups["items"]}
    return People(persons=persons, groups=members)
