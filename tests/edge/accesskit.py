"""The people of the edge's access tests (no tests here): root, alice and bob made for real by
the identity service, each signed in once (a dashboard session)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from tests.identity.kit import Identity

ALICE = {"username": "alice", "email": "alice@example.test", "password": "alice's long phrase"}
BOB = {"username": "bob", "email": "bob@example.test", "password": "bob's own long phrase"}


@dataclass(frozen=True)
class People:
    identity: Identity
    root_id: str
    alice_id: str
    bob_id: str
    session_alice: str
    session_bob: str


async def make_people(ident: Identity) -> People:
    """Set up `ident` with root, create alice and bob and sign them in."""
    root_id = await ident.set_up()

    async def create(who: dict[str, str]) -> str:
        reply = await ident.cmd("create_user", dict(who), actor=root_id)
        return str(reply["user_id"])

    async def sign_in(who: dict[str, str]) -> str:
        return str((await ident.login(who["username"], who["password"]))["session"])

    alice_id, bob_id = await asyncio.gather(create(ALICE), create(BOB))
    alice, bob = await asyncio.gather(sign_in(ALICE), sign_in(BOB))
    return People(ident, root_id, alice_id, bob_id, alice, bob)
